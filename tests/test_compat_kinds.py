"""Issue 5, points 4 and 5: every kind of test is traced and charged right, in real sessions.

Async tests (pytest-asyncio), parametrized tests, methods, unittest.TestCase, decorated tests,
skip/xfail/raise inside, KeyboardInterrupt, fork, subprocesses, threads, generator tests,
doctests.
"""

from __future__ import annotations

import json

import pytest
from compat_util import (
    DEFAULT_BACKEND,
    MONITORING,
    assert_mib,
    need,
    pytester,  # noqa: F401  (the fixture)
    row,
    run,
    traced,
)

ASYNC_TEST = """
import asyncio


async def test_awaits():
    a = bytearray(30 * 2**20)
    await asyncio.sleep(0)
    b = bytearray(20 * 2**20)
    await asyncio.sleep(0.01)
    c = bytearray(10 * 2**20)
    assert a and b and c
"""

BACKENDS = [
    pytest.param("auto", id="auto"),
    pytest.param(
        "settrace",
        id="settrace",
        marks=pytest.mark.skipif(not MONITORING, reason="on 3.11 auto is settrace: the same run"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_lines_are_charged_across_awaits(pytester: pytest.Pytester, backend: str) -> None:
    need("pytest_asyncio")
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_mode = "auto"
        asyncio_default_fixture_loop_scope = "function"
        """
    )
    pytester.makepyfile(test_async=ASYNC_TEST)
    result = run(pytester, f"--memline-backend={backend}")
    result.assert_outcomes(passed=1)
    test = traced(pytester)["test_async.py::test_awaits"]
    assert_mib(row(test, "a = bytearray(30 * 2**20)")["increment"], 30)
    assert_mib(row(test, "b = bytearray(20 * 2**20)")["increment"], 20)
    assert_mib(row(test, "c = bytearray(10 * 2**20)")["increment"], 10)
    for line in ("await asyncio.sleep(0)", "await asyncio.sleep(0.01)"):
        assert row(test, line)["occurrences"] == 1
        assert_mib(row(test, line)["increment"], 0)
    # the coroutine's return closes its last line there and then, on every backend
    # (on settrace a coroutine's RETURN event is a suspension unless it is the final one)
    assert_mib(row(test, "assert a and b and c")["increment"], 0)
    assert_mib(test["peak_growth"], 60)
    assert test["table"]["notes"] == []


KINDS = """
import functools
import unittest

import pytest


@pytest.mark.parametrize("n", [10, 20])
def test_param(n):
    a = bytearray(n * 2**20)
    assert a


class TestMethods:
    def test_method(self):
        a = bytearray(12 * 2**20)
        assert a


class Case(unittest.TestCase):
    def test_unittest(self):
        a = bytearray(14 * 2**20)
        self.assertTrue(a)


def deco(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        outside = bytearray(5 * 2**20)
        return f(*args, **kwargs)
    return wrapper


@deco
def test_wrapped():
    a = bytearray(16 * 2**20)
    assert a


def test_skip():
    a = bytearray(3 * 2**20)
    pytest.skip("inside")


def test_xfail():
    a = bytearray(4 * 2**20)
    pytest.xfail("inside")


def test_raises():
    a = bytearray(7 * 2**20)
    raise ValueError("boom")
"""


def test_kinds_of_tests_each_get_their_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kinds=KINDS)
    result = run(pytester, "--memline-tables=all", "--memline-save")
    result.assert_outcomes(passed=5, skipped=1, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*ValueError: boom", "memline: 8 tests traced, 0 over budget"])
    tests = traced(pytester)
    expected = {
        "test_kinds.py::test_param[10]": ("a = bytearray(n * 2**20)", 10),
        "test_kinds.py::test_param[20]": ("a = bytearray(n * 2**20)", 20),
        "test_kinds.py::TestMethods::test_method": ("a = bytearray(12 * 2**20)", 12),
        "test_kinds.py::Case::test_unittest": ("a = bytearray(14 * 2**20)", 14),
        # the inner body: the wrapper's 5 MiB is not a line of the test
        "test_kinds.py::test_wrapped": ("a = bytearray(16 * 2**20)", 16),
        "test_kinds.py::test_skip": ("a = bytearray(3 * 2**20)", 3),
        "test_kinds.py::test_xfail": ("a = bytearray(4 * 2**20)", 4),
        "test_kinds.py::test_raises": ("a = bytearray(7 * 2**20)", 7),
    }
    assert sorted(tests) == sorted(expected)
    for nodeid, (contents, mib) in expected.items():
        assert_mib(row(tests[nodeid], contents)["increment"], mib)
    assert tests["test_kinds.py::test_wrapped"]["table"]["function"] == "test_wrapped"
    assert {t["outcome"] for t in tests.values()} == {"passed", "skipped", "failed"}
    # the failing test keeps its own error and gets its table as a section
    result.stdout.fnmatch_lines(["*- memline: memory table -*", "test_kinds.py::test_raises  (test_raises in test_kinds.py)"])
    # each parameter set is its own baseline entry; only passing tests are saved
    saved = json.loads((pytester.path / ".memline/baseline.json").read_text())["tests"]
    assert sorted(saved) == sorted(
        n for n in expected if n.rsplit("::", 1)[1] not in ("test_skip", "test_xfail", "test_raises")
    )
    assert saved["test_kinds.py::test_param[10]"]["peak_growth"] < saved["test_kinds.py::test_param[20]"]["peak_growth"]


def test_generator_tests_fail_as_pytest_makes_them_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_gen="""
        def test_gen():
            yield 1
        """
    )
    plain = pytester.runpytest_subprocess()
    traced = run(pytester)
    assert plain.ret == traced.ret != 0
    for result in (plain, traced):
        result.stdout.fnmatch_lines(["*'yield' keyword is allowed in fixtures, but not in tests (test_gen)*"])


STATE_CONFTEST = """
import sys


def _state():
    state = {"gettrace": repr(sys.gettrace()), "tracing": None}
    if sys.version_info >= (3, 12):
        m = sys.monitoring
        state["tools"] = [m.get_tool(i) for i in range(6)]
        state["events"] = [m.get_events(i) for i in range(6)]
    try:
        from pytest_memline import _memline
        state["tracing"] = _memline.is_tracing()
    except ImportError:
        pass
    return state


def pytest_sessionfinish(session, exitstatus):
    print("\\nINNER-STATE", _state(), "exitstatus", int(exitstatus))
"""


def test_keyboard_interrupt_mid_test_removes_the_tracer(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(STATE_CONFTEST)
    pytester.makepyfile(
        test_interrupt="""
        import os
        import signal


        def test_first():
            a = bytearray(2**20)


        def test_interrupted():
            a = bytearray(2**20)
            os.kill(os.getpid(), signal.SIGINT)
            b = bytearray(2**20)


        def test_never_runs():
            pass
        """
    )
    result = run(pytester, "-s")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    state = {"gettrace": "None", "tracing": False}
    if MONITORING:
        state |= {"tools": [None] * 6, "events": [0] * 6}
    result.stdout.fnmatch_lines([f"INNER-STATE {state!r} exitstatus 2"])
    assert "test_never_runs" not in result.stdout.str()


def test_fork_child_is_not_traced_and_parent_table_is_right(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fork="""
        import json
        import os
        import sys


        def child_state():
            from pytest_memline import _memline
            state = {"gettrace": repr(sys.gettrace()), "tracing": _memline.is_tracing()}
            if sys.version_info >= (3, 12):
                state["tools"] = [sys.monitoring.get_tool(i) for i in range(6)]
            return state


        def test_fork():
            a = bytearray(8 * 2**20)
            pid = os.fork()
            if pid == 0:
                try:
                    b = bytearray(50 * 2**20)
                    with open("child.json", "w") as f:
                        json.dump(child_state(), f)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            c = bytearray(9 * 2**20)


        def test_subprocess():
            import subprocess
            a = bytearray(6 * 2**20)
            subprocess.run([sys.executable, "-c", "x = bytearray(80 * 2**20)"], check=True)
            c = bytearray(5 * 2**20)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    child = json.loads((pytester.path / "child.json").read_text())
    assert child["gettrace"] == "None" and child["tracing"] is False
    if MONITORING:
        assert child["tools"] == [None] * 6
    tests = traced(pytester)
    fork = tests["test_fork.py::test_fork"]
    assert_mib(row(fork, "a = bytearray(8 * 2**20)")["increment"], 8)
    assert_mib(row(fork, "c = bytearray(9 * 2**20)")["increment"], 9)
    assert row(fork, "b = bytearray(50 * 2**20)")["occurrences"] == 0  # the child's line
    assert_mib(fork["peak_growth"], 17)  # the child's 50 MiB is not in the parent's RSS
    sub = tests["test_fork.py::test_subprocess"]
    assert_mib(row(sub, 'subprocess.run([sys.executable, "-c", "x = bytearray(80 * 2**20)"], check=True)')["increment"], 0)
    assert_mib(sub["peak_growth"], 11)


def test_threads_are_noted_and_their_memory_is_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_threads="""
        import threading


        def test_joined_thread():
            keep = []
            t = threading.Thread(target=lambda: keep.append(bytearray(25 * 2**20)))
            t.start()
            t.join()
            assert keep


        def test_no_thread():
            a = bytearray(2**20)


        def test_transient_in_thread():
            t = threading.Thread(target=lambda: bytearray(60 * 2**20))
            t.start(); t.join()
            b = bytearray(2**20)


        def test_profile_hook_untouched():
            import sys

            # 3.12+: threads are noticed by an audit event; 3.11 needs a threading.setprofile hook
            assert threading.getprofile() is None or sys.version_info < (3, 12)
        """
    )
    result = run(pytester, "--memline-tables=all")
    result.assert_outcomes(passed=4)
    tests = traced(pytester)
    joined = tests["test_threads.py::test_joined_thread"]
    note = "the test started threads: RSS is per process, so their memory is in these numbers, but their lines are not traced"
    assert joined["table"]["notes"] == [note]
    assert_mib(joined["peak_growth"], 25)
    assert tests["test_threads.py::test_no_thread"]["table"]["notes"] == []
    # another thread's transient peak is in the kernel's per-process peak, read from this thread
    transient = row(tests["test_threads.py::test_transient_in_thread"], "t.start(); t.join()")
    assert_mib(transient["peak"], 60)
    assert_mib(transient["increment"], 0)
    result.stdout.fnmatch_lines(["test_threads.py::test_joined_thread  *", "*", f"note: {note}"])


def test_backend_named_in_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    run(pytester).stdout.fnmatch_lines([f"memline: on (backend {DEFAULT_BACKEND}, RSS via procfs, *"])


def test_doctests_get_a_row_per_example_and_budgets(pytester: pytest.Pytester, backend: str) -> None:
    """`--doctest-modules` / `--doctest-glob` items have no test function: each example is
    compiled as a module of its own and traced as one, and its numbers go on its `>>>` line of
    the docstring or text file. A function defined in one example is charged to the example that
    calls it. `[[tool.memline.limits]]` budgets (by node id) apply to the rows."""
    pytester.makepyfile(
        mod='''
        def grow():
            """Grows.

            >>> a = bytearray(30 * 2**20)
            >>> len(a)
            31457280
            >>> def make(n):
            ...     return bytearray(n * 2**20)
            >>> b = make(10)
            >>> del a
            """
        '''
    )
    pytester.maketxtfile(guide=">>> b = bytearray(12 * 2**20)\n>>> len(b) > 0\nTrue\n")
    pytester.makepyprojecttoml(
        """
        [[tool.memline.limits]]
        match = "mod.py::*"
        line_limit = "20MiB"
        """
    )
    result = run(pytester, "--doctest-modules", "--doctest-glob=*.txt", "--memline-tables=all", f"--memline-backend={backend}")
    result.assert_outcomes(passed=1, failed=1)
    tests = traced(pytester)
    assert set(tests) == {"mod.py::mod.grow", "guide.txt::guide.txt"}
    grow = tests["mod.py::mod.grow"]
    assert grow["table"]["notes"] == []
    assert row(grow, ">>> a = bytearray(30 * 2**20)")["line"] == 4
    assert_mib(row(grow, ">>> a = bytearray(30 * 2**20)")["increment"], 30)
    assert_mib(row(grow, ">>> a = bytearray(30 * 2**20)")["peak"], 30)
    assert_mib(row(grow, ">>> b = make(10)")["increment"], 10)
    assert_mib(row(grow, ">>> del a")["increment"], -30)
    assert row(grow, "31457280")["occurrences"] == 0  # expected output: no numbers
    assert_mib(grow["peak_growth"], 40)
    guide = tests["guide.txt::guide.txt"]
    assert row(guide, ">>> b = bytearray(12 * 2**20)")["line"] == 1
    assert_mib(row(guide, ">>> b = bytearray(12 * 2**20)")["increment"], 12)
    result.stdout.fnmatch_lines(
        [
            "mod.py::mod.grow  ([[]doctest[]] mod.grow in mod.py)",
            "*",
            "Line #*",
            "*",
            # the offending row marked; its numbers are checked above within the tolerance
            ">    4 * MiB * MiB * MiB * 1 *>>> a = bytearray(30 [*] 2[*][*]20)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "memline: line 4 `>>> a = bytearray(30 [*] 2[*][*]20)` grew RSS by * MiB, over the line limit of 20 MiB*",
            "FAILED mod.py::mod.grow*",
        ]
    )
