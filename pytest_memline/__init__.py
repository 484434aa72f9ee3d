"""pytest-memline: line-by-line RSS tables for every test, memory budgets and regression gates.

The pytest plugin lives in :mod:`pytest_memline.plugin` (entry point ``memline``). Importing
this package is cheap: the native module is loaded only when something here needs it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pytest_memline.table import LineRow, MemoryTable

try:
    __version__ = version("pytest-memline")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["LineRow", "MemoryTable", "__version__"]
