"""One line, not a traceback, for the errors the plugin raises on purpose.

The plugin's checks raise a ValueError or an OSError (FileNotFoundError among them) whose
message names what is wrong and what to do. Uncaught, fairseq's command lines print it under a
traceback, sometimes under a second one when fairseq catches and re-raises it (loading a model's
parameters). The process's exception hook prints such an error, found anywhere in the chain of
causes, as ``<command>: error: <message>``; every other exception keeps its traceback; the exit status is 1 either way. ``FAIRSEQ_SMLP_TRACEBACK=1`` shows the traceback of the plugin's errors too.
"""

import os
import sys
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parents[1]


def raised_by_the_plugin(error: BaseException) -> bool:
    """A ValueError or OSError whose raise statement is in the plugin's own code."""
    if not isinstance(error, (ValueError, OSError)) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return PACKAGE in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def plugin_error_in(error: Optional[BaseException]) -> Optional[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        if raised_by_the_plugin(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _excepthook(kind, error, traceback, fallback=sys.excepthook):
    found = plugin_error_in(error)
    if found is None or os.environ.get("FAIRSEQ_SMLP_TRACEBACK") == "1":
        fallback(kind, error, traceback)
        return
    message = found.strerror if isinstance(found, OSError) and found.strerror else found
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr, flush=True)


def install_one_line_errors() -> None:
    if sys.excepthook is sys.__excepthook__:  # leave a debugger's or an IDE's hook alone
        sys.excepthook = _excepthook
