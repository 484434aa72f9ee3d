"""pytest-memline: line-by-line RSS tables for every test, memory budgets and regression gates.

The pytest plugin lives in :mod:`pytest_memline.plugin` (entry point ``memline``). The same
engine is available without pytest: :func:`profile` (a decorator, like memory_profiler's),
:func:`trace` and :func:`tracing` (return tables), ``python -m pytest_memline script.py`` and
the IPython magic ``%memline`` (``%load_ext pytest_memline``).

Importing this package is cheap: the native module is loaded only when something here needs
it, and IPython only when the extension is loaded.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pytest_memline._api import Profiled, Trace, Traced, Writer, profile, trace, tracing
from pytest_memline.table import LineRow, MemoryTable

try:
    __version__ = version("pytest-memline")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "LineRow",
    "MemoryTable",
    "Profiled",
    "Trace",
    "Traced",
    "Writer",
    "__version__",
    "load_ipython_extension",
    "profile",
    "trace",
    "tracing",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext pytest_memline``: registers the ``%memline`` magic (see its ``%memline?``)."""
    from pytest_memline._magic import load

    load(ipython)
