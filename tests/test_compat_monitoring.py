"""Issue 5, point 2: sys.monitoring (3.12+). memline takes a free tool id (3, else 4, else 2),
never one in use, leaves nothing behind after each test, and says who holds the ids when none
is free.
"""

from __future__ import annotations

import sys

import pytest
from compat_util import assert_mib, pytester, row, run, traced  # noqa: F401

pytestmark = pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is new in 3.12")

TEST_FILE = """
def test_alloc():
    a = bytearray(10 * 2**20)
    assert a


def test_other():
    pass
"""


def test_all_ids_taken_is_one_clear_error_per_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        for tool_id, name in [(2, "scalene"), (3, "line_profiler"), (4, "someone else")]:
            sys.monitoring.use_tool_id(tool_id, name)
        """
    )
    pytester.makepyfile(test_taken=TEST_FILE)
    result = run(pytester)
    result.assert_outcomes(failed=2)
    message = (
        "memline: no free sys.monitoring tool id: memline takes 3, 4 or 2 and never one in use, and "
        "they are held (3 by 'line_profiler', 4 by 'someone else', 2 by 'scalene'); free one, or trace "
        "with --memline-backend=settrace"
    )
    result.stdout.fnmatch_lines(["FAILED test_taken.py::test_alloc - Failed: memline: no free sys.monitoring*"])
    out = result.stdout.str()
    # one line per test in its failure report (the short summary repeats it, untruncated when
    # pytest sees a CI environment, so count only the FAILURES section)
    failures = out.split("= FAILURES =", 1)[1].split("short test summary info", 1)[0]
    assert failures.count(message) == 2, failures
    assert "Traceback" not in out and "RuntimeError" not in out
    # the way out that the message names works
    result = run(pytester, "--memline-backend=settrace")
    result.assert_outcomes(passed=2)
    assert_mib(row(traced(pytester)["test_taken.py::test_alloc"], "a = bytearray(10 * 2**20)")["increment"], 10)


def test_takes_the_next_free_id_and_leaves_the_other_tool_alone(pytester: pytest.Pytester) -> None:
    """Another tool holds id 3 with its own callback and events: memline uses 4; the other
    tool keeps its callback, its events and its event stream; between tests memline keeps id 4
    with PY_UNWIND alone and no events on the test's code."""
    pytester.makeconftest(
        """
        import sys

        import pytest

        m = sys.monitoring
        SEEN = []


        def other_line(code, line):
            SEEN.append(line)


        def watched():
            x = 1
            return x


        m.use_tool_id(3, "other-tool")
        m.register_callback(3, m.events.LINE, other_line)
        m.register_callback(3, m.events.PY_START, other_line)
        m.set_events(3, m.events.PY_START)
        m.set_local_events(3, watched.__code__, m.events.LINE)


        @pytest.fixture(autouse=True)
        def check_monitoring(request):
            code = request.function.__code__
            yield
            # teardown: memline stopped tracing this test before this runs
            assert m.get_tool(3) == "other-tool"
            assert m.get_events(3) == m.events.PY_START
            assert m.get_local_events(3, watched.__code__) == m.events.LINE
            # register_callback returns the callback it replaces: put each back at once
            for event in (m.events.LINE, m.events.PY_START):
                previous = m.register_callback(3, event, other_line)
                assert previous is other_line
            # memline keeps id 4 between tests: PY_UNWIND alone globally, and the last traced
            # code object armed for the next test of the same function
            assert m.get_tool(4) == "pytest-memline"
            assert m.get_events(4) == m.events.PY_UNWIND
            local = (m.events.LINE | m.events.PY_START | m.events.PY_RESUME
                     | m.events.PY_RETURN | m.events.PY_YIELD)
            assert m.get_local_events(4, code) == local
            assert m.get_tool(2) is None
            assert m.get_events(2) == 0
            assert m.get_local_events(2, code) == 0
            for event in (m.events.LINE, m.events.PY_START, m.events.PY_RESUME,
                          m.events.PY_RETURN, m.events.PY_YIELD, m.events.PY_UNWIND):
                assert m.register_callback(2, event, None) is None
            before = len(SEEN)
            watched()
            assert len(SEEN) > before  # the other tool still gets its events
        """
    )
    pytester.makepyfile(
        test_shared="""
        import sys

        from conftest import watched


        def test_alloc():
            a = bytearray(10 * 2**20)
            # while the test runs, memline holds id 4 and the other tool keeps id 3
            assert sys.monitoring.get_tool(4) == "pytest-memline"
            assert sys.monitoring.get_tool(3) == "other-tool"
            assert watched() == 1


        def test_raises():
            b = bytearray(5 * 2**20)
            raise ValueError("boom")


        def test_last():
            c = bytearray(3 * 2**20)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_shared.py::test_raises - ValueError: boom"])
    tests = traced(pytester)
    assert_mib(row(tests["test_shared.py::test_alloc"], "a = bytearray(10 * 2**20)")["increment"], 10)
    assert_mib(row(tests["test_shared.py::test_raises"], "b = bytearray(5 * 2**20)")["increment"], 5)
    assert_mib(row(tests["test_shared.py::test_last"], "c = bytearray(3 * 2**20)")["increment"], 3)


def test_profilers_that_claim_the_profiler_id_work_inside_a_traced_test(pytester: pytest.Pytester) -> None:
    """cProfile (and anything that claims sys.monitoring.PROFILER_ID, as pytest-profiling
    does) fails with "Another profiling tool is already active" when that id is held: memline
    leaves it free while 3 or 4 is, and the lines after the profiler still have their rows."""
    pytester.makepyfile(
        test_prof="""
        import cProfile
        import profile
        import sys


        def work():
            return sum(range(1000))


        def test_cprofile():
            p = cProfile.Profile()
            p.enable()
            work()
            p.disable()
            a = bytearray(6 * 2**20)
            assert p.getstats()


        def test_runctx():
            cProfile.runctx("work()", globals(), {})
            b = bytearray(4 * 2**20)


        def test_pure_python_profile():
            profile.Profile().runcall(work)
            c = bytearray(3 * 2**20)


        def test_claims_the_profiler_id():
            m = sys.monitoring
            m.use_tool_id(m.PROFILER_ID, "my-profiler")
            try:
                d = bytearray(5 * 2**20)
            finally:
                m.free_tool_id(m.PROFILER_ID)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=4)
    tests = traced(pytester)
    assert_mib(row(tests["test_prof.py::test_cprofile"], "a = bytearray(6 * 2**20)")["increment"], 6)
    assert_mib(row(tests["test_prof.py::test_runctx"], "b = bytearray(4 * 2**20)")["increment"], 4)
    assert_mib(row(tests["test_prof.py::test_pure_python_profile"], "c = bytearray(3 * 2**20)")["increment"], 3)
    assert_mib(row(tests["test_prof.py::test_claims_the_profiler_id"], "d = bytearray(5 * 2**20)")["increment"], 5)


HOLD_3_AND_4 = """
import sys

for tool_id, name in [(3, "line_profiler"), (4, "someone else")]:
    sys.monitoring.use_tool_id(tool_id, name)
"""


def test_gives_the_profiler_id_up_when_it_holds_it_and_a_profiler_claims_it(pytester: pytest.Pytester) -> None:
    """Ids 3 and 4 are held, so memline runs on 2; cProfile (which claims 2 when enabled) and a
    direct use_tool_id(2) still succeed: memline gives the id up, stops tracing at that line,
    and the table says so; the untraced allocation after it is not blamed on a line budget."""
    pytester.makeconftest(HOLD_3_AND_4)
    pytester.makepyfile(
        test_prof="""
        import cProfile
        import sys

        import pytest


        def work():
            return sum(range(1000))


        def test_cprofile():
            before = bytearray(3 * 2**20)
            p = cProfile.Profile()
            p.enable()
            work()
            p.disable()
            after = bytearray(20 * 2**20)
            assert p.getstats()


        @pytest.mark.mem_limit(line="10MiB")
        def test_claims_the_profiler_id():
            m = sys.monitoring
            before = bytearray(2 * 2**20)
            m.use_tool_id(m.PROFILER_ID, "my-profiler")
            try:
                assert m.get_tool(m.PROFILER_ID) == "my-profiler"
                after = bytearray(20 * 2**20)
            finally:
                m.free_tool_id(m.PROFILER_ID)


        def test_next_test_is_traced_again():
            # 3 and 4 are still held: memline runs on the profiler id again
            assert sys.monitoring.get_tool(sys.monitoring.PROFILER_ID) == "pytest-memline"
            c = bytearray(5 * 2**20)
        """
    )
    result = run(pytester, "--memline-tables=all")
    result.assert_outcomes(passed=3)
    tests = traced(pytester)
    cprof = tests["test_prof.py::test_cprofile"]
    assert_mib(row(cprof, "before = bytearray(3 * 2**20)")["increment"], 3)
    # not traced after the claim: the 20 MiB line has no row of its own
    assert row(cprof, "after = bytearray(20 * 2**20)")["increment"] is None
    claim = tests["test_prof.py::test_claims_the_profiler_id"]
    assert_mib(row(claim, "before = bytearray(2 * 2**20)")["increment"], 2)
    assert row(claim, "after = bytearray(20 * 2**20)")["increment"] is None
    out = result.stdout.str()
    assert "'cProfile' claimed sys.monitoring tool id 2, which memline held, during the test at line 14" in out
    assert "'my-profiler' claimed sys.monitoring tool id 2" in out
    # the next test gets id 2 again and is traced in full
    assert_mib(row(tests["test_prof.py::test_next_test_is_traced_again"], "c = bytearray(5 * 2**20)")["increment"], 5)
    assert "Another profiling tool is already active" not in out


def test_moves_to_another_free_id_when_a_tool_claims_its_own(pytester: pytest.Pytester) -> None:
    """memline holds 3; a test claims 3 for itself: the claim succeeds, memline moves to 4 and
    the rest of the test is traced exactly, with no note."""
    pytester.makepyfile(
        test_move="""
        import sys

        import pytest


        def callee():
            return bytearray(4 * 2**20)


        def test_claims_id_3():
            m = sys.monitoring
            a = bytearray(3 * 2**20)
            m.use_tool_id(3, "mine")
            try:
                assert m.get_tool(3) == "mine"
                assert m.get_tool(4) == "pytest-memline"
                b = bytearray(7 * 2**20)
                c = callee()
            finally:
                m.free_tool_id(3)


        def test_after():
            # memline keeps the id it moved to for the rest of the run; the test freed 3
            assert sys.monitoring.get_tool(4) == "pytest-memline"
            assert sys.monitoring.get_tool(3) is None
            d = bytearray(2 * 2**20)


        @pytest.mark.mem_limit(trace=False)
        def test_untraced_can_claim_memlines_id():
            m = sys.monitoring
            # between traces memline holds its id with PY_UNWIND alone, no events on this code
            assert m.get_tool(4) == "pytest-memline"
            assert m.get_events(4) == m.events.PY_UNWIND
            assert m.get_local_events(4, test_untraced_can_claim_memlines_id.__code__) == 0
            assert m.get_local_events(4, test_after.__code__) != 0  # left armed
            m.use_tool_id(4, "between")  # memline lets it go
            assert m.get_tool(4) == "between"
            assert m.get_events(4) == 0
            # and leaves no local events on the code objects it traced (test_after's was armed)
            assert m.get_local_events(4, test_after.__code__) == 0
            m.free_tool_id(4)


        def test_traced_again():
            assert sys.monitoring.get_tool(3) == "pytest-memline"
            e = bytearray(6 * 2**20)
        """
    )
    pytester.makeconftest(
        """
        import sys


        def pytest_sessionfinish(session):
            # after the tests memline holds nothing and use_tool_id is the builtin again
            m = sys.monitoring
            print("AFTER", [m.get_tool(i) for i in range(6)], m.use_tool_id.__module__)
        """
    )
    result = run(pytester, "--memline-tables=all", "-s")
    result.assert_outcomes(passed=4)
    test = traced(pytester)["test_move.py::test_claims_id_3"]
    assert_mib(row(test, "a = bytearray(3 * 2**20)")["increment"], 3)
    assert_mib(row(test, "b = bytearray(7 * 2**20)")["increment"], 7)
    assert_mib(row(test, "c = callee()")["increment"], 4)
    assert_mib(row(traced(pytester)["test_move.py::test_traced_again"], "e = bytearray(6 * 2**20)")["increment"], 6)
    result.stdout.fnmatch_lines(["*AFTER [[]None, None, None, None, None, None[]] sys.monitoring"])
    assert "claimed sys.monitoring tool id" not in result.stdout.str()
    assert_mib(row(traced(pytester)["test_move.py::test_after"], "d = bytearray(2 * 2**20)")["increment"], 2)
