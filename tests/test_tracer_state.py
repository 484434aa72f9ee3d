"""The trace and monitoring state around each traced test: whatever was installed before (a
Python-level trace function, another sys.monitoring tool) keeps working during the test and is
back afterwards, also when the test raises or is interrupted."""

import json
import sys

import pytest

CONFTEST = """
import json
import pathlib
import sys

import pytest

calls = []


def tracer(frame, event, arg):
    if event == "call":
        calls.append(frame.f_code.co_name)
    return None


def tools():
    if sys.version_info < (3, 12):
        return {}
    return {i: sys.monitoring.get_tool(i) for i in range(6) if sys.monitoring.get_tool(i)}


def left_between_tests():
    # what is set outside memline's traces, less the tool id memline keeps between the tests
    # of a run on 3.12+ (registered, with PY_UNWIND alone on)
    left = tools()
    for i, name in list(left.items()):
        if name == "pytest-memline" and sys.monitoring.get_events(i) == sys.monitoring.events.PY_UNWIND:
            del left[i]
    return left


@pytest.fixture
def own_tracer():
    # a coverage-like trace function installed before the test
    calls.clear()
    sys.settrace(tracer)
    yield
    after = sys.gettrace()
    sys.settrace(None)
    assert after is tracer, f"trace function after the test: {after!r}"
    assert "helper" in calls, f"the previous tracer missed the test's calls: {calls}"


@pytest.fixture
def no_tracer():
    assert sys.gettrace() is None and left_between_tests() == {}
    yield
    after = (sys.gettrace(), left_between_tests())
    assert after == (None, {}), f"left behind: {after!r}"


@pytest.fixture
def other_tool():
    # another tool holds sys.monitoring tool id 3 (the first one memline would take)
    if sys.version_info < (3, 12):
        pytest.skip("sys.monitoring needs Python 3.12")
    sys.monitoring.use_tool_id(3, "other-tool")
    yield
    after = left_between_tests()
    sys.monitoring.free_tool_id(3)
    assert after == {3: "other-tool"}, f"tools after the test: {after!r}"


def pytest_keyboard_interrupt(excinfo):
    state = {"gettrace": repr(sys.gettrace()), "tools": tools()}
    pathlib.Path("after_interrupt.json").write_text(json.dumps(state))
"""

TESTS = """
import sys


def helper():
    return 1


def test_keeps_tracer(own_tracer):
    assert helper() == 1


def test_keeps_tracer_when_raising(own_tracer):
    helper()
    raise ValueError("boom")


def test_leaves_nothing(no_tracer):
    data = bytearray(2**20)


def test_leaves_nothing_when_raising(no_tracer):
    raise ValueError("boom")


def test_other_tool_untouched(other_tool):
    data = bytearray(2**20)


def test_zz_interrupted():
    raise KeyboardInterrupt
"""


def test_previous_state_restored(pytester: pytest.Pytester, backend: str) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_state=TESTS)
    result = pytester.runpytest_subprocess("--memline", f"--memline-backend={backend}", "-rA")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    # the two tests that raise fail with their own error; no fixture found anything left over
    lines = out.splitlines()
    for line in (
        "PASSED test_state.py::test_keeps_tracer",
        "PASSED test_state.py::test_leaves_nothing",
        "FAILED test_state.py::test_keeps_tracer_when_raising - ValueError: boom",
        "FAILED test_state.py::test_leaves_nothing_when_raising - ValueError: boom",
    ):
        assert line in lines, line
    if sys.version_info >= (3, 12):
        assert "PASSED test_state.py::test_other_tool_untouched" in lines
    assert "ERROR" not in out, out
    # interrupted inside a traced test: the tracer is gone by the time pytest reports it
    after = json.loads((pytester.path / "after_interrupt.json").read_text())
    assert after == {"gettrace": "None", "tools": {}}


SAVE_RESTORE = """
import sys


def helper():
    return 1


def test_restore_only():
    a = bytearray(5 * 2**20)
    old = sys.gettrace()
    sys.settrace(None)
    sys.settrace(old)
    b = bytearray(20 * 2**20)
    assert a and b


def test_restore_then_call():
    a = bytearray(5 * 2**20)
    old = sys.gettrace()
    sys.settrace(None)
    sys.settrace(old)
    helper()
    b = bytearray(20 * 2**20)
    assert a and b
"""


def test_a_saved_and_restored_trace_function_is_said_and_blames_no_line(
    pytester: pytest.Pytester,
) -> None:
    """`old = sys.gettrace(); sys.settrace(None); sys.settrace(old)` puts memline's handle
    back behind a Python-level trampoline, which gets no line events of the running frame:
    tracing comes back at the next call into Python code. The table says from which line, and
    that line (which holds what the untraced lines used) is not judged by line budgets."""
    pytester.makepyfile(test_sr=SAVE_RESTORE)
    pytester.makepyprojecttoml('[tool.memline]\nline_limit = "10MiB"\n')
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--memline", "--memline-backend=settrace", "--memline-json=r.json"
    )
    # the 20 MiB line: untraced in the first test (charged to line 11, not judged); traced
    # again after the call in the second (over the 10 MiB line limit)
    result.assert_outcomes(passed=1, failed=1)
    tests = json.loads((pytester.path / "r.json").read_text())["tests"]
    only = tests["test_sr.py::test_restore_only"]["table"]
    assert any("removed during the test at line 11" in n for n in only["notes"]), only["notes"]
    rows = {r["line"]: r for r in only["lines"]}
    assert rows[11]["peak"] >= 19 * 2**20  # sys.settrace(None): holds the untraced 20 MiB
    assert rows[13]["increment"] is None  # the untraced line: blank, not a made-up number
    then = tests["test_sr.py::test_restore_then_call"]
    notes = then["table"]["notes"]
    assert any("at line 20" in n and "came back at the next call" in n for n in notes), notes
    assert then["violations"] and "line 23" in then["violations"][0]
    b = {r["line"]: r for r in then["table"]["lines"]}[23]
    assert b["increment"] == pytest.approx(20 * 2**20, abs=2 * 2**20)
