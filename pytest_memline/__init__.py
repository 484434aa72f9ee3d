"""pytest-memline: line-by-line RSS tables for every test, memory budgets and regression gates.

The pytest plugin lives in :mod:`pytest_memline.plugin` (entry point ``memline``). The same
engine is available without pytest: :func:`profile` (a decorator, like memory_profiler's),
:func:`trace` and :func:`tracing` (return tables), ``python -m pytest_memline script.py`` and
the IPython magic ``%memline`` (``%load_ext pytest_memline``).

Importing this package is cheap (pytest imports it for the plugin's entry point even when the
plugin is off): the names below are loaded on first use, the native module only when something
needs it, and IPython only when the extension is loaded.
"""

from __future__ import annotations

from pkgutil import extend_path
from typing import TYPE_CHECKING, Any

# A source checkout that is on sys.path ahead of a regular (non-editable) install, as with
# `python -m pytest` run from the repository: the compiled `_memline` is only in the installed
# copy, so look in every `pytest_memline` folder on sys.path for the package's modules.
__path__ = extend_path(__path__, __name__)

if TYPE_CHECKING:
    from pytest_memline._api import Profiled, Trace, Traced, Writer, profile, trace, tracing
    from pytest_memline.table import LineRow, MemoryTable

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

_LAZY = {
    "LineRow": "pytest_memline.table",
    "MemoryTable": "pytest_memline.table",
    "Profiled": "pytest_memline._api",
    "Trace": "pytest_memline._api",
    "Traced": "pytest_memline._api",
    "Writer": "pytest_memline._api",
    "profile": "pytest_memline._api",
    "trace": "pytest_memline._api",
    "tracing": "pytest_memline._api",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("pytest-memline")
        except PackageNotFoundError:  # a source tree without an install
            value = "0+unknown"
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'pytest_memline' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext pytest_memline``: registers the ``%memline`` magic (see its ``%memline?``)."""
    from pytest_memline._magic import load

    load(ipython)
