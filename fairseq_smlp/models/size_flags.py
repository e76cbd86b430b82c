"""Checks of the flags that size a model, shared by the models and the FLOPs count."""

import contextlib
import re
from typing import Dict, Iterator


def check_at_least(flag: str, value: int, least: int = 1) -> None:
    if value < least:
        raise ValueError(f"{flag} must be at least {least}; got {value}")


def check_dropout(value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"--dropout must be at least 0 and below 1 (the probability that an "
                         f"activation is zeroed in training); got {value}")


@contextlib.contextmanager
def sized_by(flags: Dict[str, object]) -> Iterator[None]:
    """Building parameters whose sizes follow from ``flags`` (flag: value): torch's failure to
    allocate them becomes an error that names those flags."""
    try:
        yield
    except (RuntimeError, TypeError, MemoryError) as error:
        text = str(error)
        if not isinstance(error, MemoryError) and "allocate" not in text \
                and "Overflow" not in text:
            raise
        size = re.search(r"allocate (\d+) bytes", text)
        what = f"{int(size.group(1)):,} bytes for one of them" if size else "their sizes"
        given = ", ".join(f"{flag} {value}" for flag, value in flags.items())
        raise ValueError(f"the model's parameters do not fit in memory (torch could not "
                         f"allocate {what}); their sizes follow from {given}: give smaller "
                         f"values") from None
