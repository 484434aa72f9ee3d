"""What a pytest item is, for tracing: its test function's code, its doctest, whether pytest
runs it through ``pytest_pyfunc_call``, the threads it starts."""

from __future__ import annotations

import inspect
import sys
import threading
import types
from typing import Any

import pytest

from pytest_memline._memline import thread_starts

#: 3.12+: thread starts are audited (``_thread.start_new_thread``, 3.13's
#: ``_thread.start_joinable_thread``)
_THREAD_AUDIT = sys.version_info >= (3, 12)


def calls_pyfunc_call(item: pytest.Item) -> bool:
    """Whether pytest runs this item through ``pytest_pyfunc_call`` (plain test functions and
    methods do; ``unittest.TestCase`` items override ``runtest``)."""
    return isinstance(item, pytest.Function) and type(item).runtest is pytest.Function.runtest


def _thread_idents() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def watch_threads() -> Any:
    """Starts watching for threads the test starts; the returned function stops watching and
    says whether any did. On 3.12+ every thread started through ``threading`` or ``_thread``
    passes the interpreter's audit event for a thread start, which a C audit hook added once
    counts (nothing the test can see changes, and the process's other audited events cost no
    Python call); a thread that C code started and that registered with ``threading`` while
    the test ran raises ``threading.active_count()``. On 3.11, which has no such event, a
    one-shot ``threading.setprofile`` hook is chained to the hook that was set before (the new
    thread gets that one back at once; ``threading.getprofile()`` inside the test returns
    memline's hook there), and threads still alive at the end are found by their idents."""
    if _THREAD_AUDIT:
        starts, alive = thread_starts(), threading.active_count()
        return lambda: thread_starts() != starts or threading.active_count() > alive
    before = _thread_idents()
    started: list[bool] = []
    previous = threading.getprofile()

    def hook(frame: Any, event: Any, arg: Any) -> Any:
        started.append(True)
        sys.setprofile(previous)
        return previous(frame, event, arg) if previous is not None else None

    threading.setprofile(hook)

    def done() -> bool:
        if threading.getprofile() is hook:
            threading.setprofile(previous)
        return bool(started) or bool(_thread_idents() - before)

    return done


def test_function(item: pytest.Item) -> tuple[types.CodeType | None, str | None, Any]:
    """The code of the function whose body is the test, unwrapped from decorators; why there
    is none; the function's globals (to find the source of a module imported from a zip)."""
    obj = getattr(item, "obj", None)
    func = inspect.unwrap(getattr(obj, "__func__", obj)) if obj is not None else None
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        return code, None, getattr(func, "__globals__", None)
    if type(item).__name__ == "DoctestItem":
        # with examples, the table has a row per example (see _doctest)
        why = "no per-line view: the doctest has no examples"
    elif obj is None:
        why = f"no per-line view: {type(item).__name__} items have no Python test function"
    else:
        why = f"no per-line view: the test object {obj!r} has no Python code"
    return None, why, None


def doctest_of(item: pytest.Item) -> Any:
    """The ``doctest.DocTest`` of a doctest item with examples, else ``None``."""
    if type(item).__name__ != "DoctestItem":
        return None
    dtest = getattr(item, "dtest", None)
    return dtest if getattr(dtest, "examples", None) else None


def doctest_prefix(dtest: Any) -> str:
    """What the ``co_filename`` of every example of ``dtest`` starts with: doctest compiles
    example ``i`` as a module named ``<doctest NAME[i]>``."""
    return f"<doctest {dtest.name}["


def split_examples(dtest: Any, functions: list[Any]) -> tuple[dict[int, Any], list[Any]]:
    """The measured lines of each example of ``dtest`` (its module-level code; functions that
    an example defines are charged to the lines that call them), and the other functions."""
    prefix = doctest_prefix(dtest)
    examples: dict[int, Any] = {}
    others = []
    for f in functions:
        name = f.code.co_filename
        if not name.startswith(prefix):
            others.append(f)
        elif f.code.co_name == "<module>" and name.endswith("]>"):
            index = name[len(prefix) : -2]
            if index.isdigit():
                examples[int(index)] = f.lines
    return examples, others


def location(item: pytest.Item) -> tuple[str, str]:
    """What the test is and where, for the header of a table without source."""
    path, _, domain = item.location
    return domain, path
