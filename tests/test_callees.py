"""Python 3.11: the functions a traced test calls run untraced (src/tracer/quiet.rs).

memline's C trace function would otherwise put every frame of the thread on CPython 3.11's slow,
traced path. While a test is traced, a frame-evaluation hook runs the test's callees with tracing
off; their memory is still charged to the line that called them. These sessions check that the
hook is on when it should be and off when it must be (another tracer, a profiler, a debugger,
coverage), that what it turns off comes back for the tools that need it, and that deep recursion
does not exhaust the C stack (with the hook, 3.11 does not inline Python calls).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from compat_util import MONITORING, assert_mib, need, row, run, traced

pytestmark = pytest.mark.skipif(
    MONITORING, reason="3.12+ traces with sys.monitoring, which never reports callees' lines"
)

HELPERS = """
import sys
import threading

import pytest
from pytest_memline import _memline


def build(n):
    return bytearray(n * 2**20)


def down(n):
    return 0 if n == 0 else 1 + down(n - 1)


@pytest.fixture
def hook_removed_after():
    yield
    # fixture teardown runs after the test's trace stopped
    assert not _memline._callees_untraced()
"""


def session(
    pytester: pytest.Pytester, name: str, tests: str, passed: int, *args: str
) -> tuple[pytest.RunResult, dict[str, Any]]:
    """An inner ``--memline`` session of module ``name`` (HELPERS + ``tests``), in which
    ``passed`` tests pass; its result and its traced tests by node id."""
    pytester.makepyfile(**{name: HELPERS + tests})
    result = run(pytester, *args)
    result.assert_outcomes(passed=passed)
    return result, traced(pytester)


def test_callees_untraced_and_charged_to_the_calling_line(pytester: pytest.Pytester) -> None:
    _, tests = session(
        pytester,
        "test_q",
        """

def test_calls(hook_removed_after):
    on = _memline._callees_untraced()
    data = build(20)
    kept = [build(1) for _ in range(3)]
    assert on


def test_next(hook_removed_after):
    more = build(7)
    assert _memline._callees_untraced()
""",
        passed=2,
    )
    calls = tests["test_q.py::test_calls"]
    assert_mib(row(calls, "data = build(20)")["increment"], 20)
    # the comprehension is a callee too: its 3 MiB are charged to its line, which ran once
    kept = row(calls, "kept = [build(1) for _ in range(3)]")
    assert_mib(kept["increment"], 3)
    assert kept["occurrences"] == 1
    assert_mib(row(tests["test_q.py::test_next"], "more = build(7)")["increment"], 7)


def test_lines_after_a_raising_callee_and_around_an_untraced_generator(pytester: pytest.Pytester) -> None:
    """The flag is put back when a callee raises, and each time an untraced generator yields."""
    _, tests = session(
        pytester,
        "test_flow",
        """

def fails(n):
    data = bytearray(n * 2**20)
    raise ValueError(len(data))


def chunks(k):
    for _ in range(k):
        yield bytearray(2**20)


def test_flow():
    try:
        fails(8)
    except ValueError:
        caught = True
    after = build(9)
    kept = []
    for chunk in chunks(5):
        kept.append(chunk)
    assert caught and len(kept) == 5
""",
        passed=1,
    )
    test = tests["test_flow.py::test_flow"]
    assert row(test, "caught = True")["occurrences"] == 1
    assert_mib(row(test, "after = build(9)")["increment"], 9)
    assert row(test, "for chunk in chunks(5):")["occurrences"] == 6
    assert row(test, "kept.append(chunk)")["occurrences"] == 5
    # the generator's 5 MiB are made while the `for` line runs, and kept
    assert_mib(row(test, "for chunk in chunks(5):")["increment"], 5)


def test_turned_off_by_the_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTEST_MEMLINE_TRACE_CALLEES=1: no hook, callees traced the ordinary way; same table."""
    monkeypatch.setenv("PYTEST_MEMLINE_TRACE_CALLEES", "1")
    _, tests = session(
        pytester,
        "test_env",
        """

def test_calls():
    data = build(12)
    assert not _memline._callees_untraced()
""",
        passed=1,
    )
    assert_mib(row(tests["test_env.py::test_calls"], "data = build(12)")["increment"], 12)


def test_tools_that_need_the_callees_still_see_them(pytester: pytest.Pytester) -> None:
    """A profiler or a tracer started inside the test sees the callees: the hook steps aside."""
    _, tests = session(
        pytester,
        "test_tools",
        """

def test_profiler():
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    data = build(3)
    prof.disable()
    assert "build" in {name for (_, _, name) in pstats.Stats(prof).stats}


def test_own_tracer():
    seen = []

    def tracer(frame, event, arg):
        if event == "line":
            seen.append(frame.f_code.co_name)
        return tracer

    sys.settrace(tracer)
    data = build(3)
    sys.settrace(None)
    assert "build" in seen


def test_traced_after_them():
    data = build(5)
""",
        passed=3,
    )
    assert_mib(row(tests["test_tools.py::test_profiler"], "data = build(3)")["increment"], 3)
    assert_mib(row(tests["test_tools.py::test_traced_after_them"], "data = build(5)")["increment"], 5)


def test_deep_recursion_with_a_raised_limit(pytester: pytest.Pytester) -> None:
    """100,000 nested calls, in the test's thread and in another: past 1,000 the hook steps aside
    so that calls are inlined again (without that, this process dies of a C stack overflow)."""
    _, tests = session(
        pytester,
        "test_deep",
        """

def test_deep():
    sys.setrecursionlimit(250_000)
    depth = down(100_000)
    out = []
    worker = threading.Thread(target=lambda: out.append(down(100_000)))
    worker.start()
    worker.join()
    data = build(4)
    assert depth == 100_000 and out == [100_000]
    assert _memline._callees_untraced()
""",
        passed=1,
    )
    assert_mib(row(tests["test_deep.py::test_deep"], "data = build(4)")["increment"], 4)


def test_debugger_in_a_callee_steps_back_into_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_pdb=HELPERS
        + """

def helper():
    x = 41
    breakpoint()
    return x + 1


def test_bp():
    a = bytearray(5 * 2**20)
    helper()
    b = bytearray(6 * 2**20)
    assert a and b
"""
    )
    # in the callee: print x, run to its return, step into the test's frame, print a test local
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "--memline", "--memline-json=memline.json"],
        input="p x\nr\nn\np len(a)\nc\n", capture_output=True, text=True, timeout=120, cwd=pytester.path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(Pdb) 41" in proc.stdout
    assert "(Pdb) 5242880" in proc.stdout, proc.stdout  # pdb stepped out of the callee into the test
    assert "1 passed" in proc.stdout
    bp = traced(pytester)["test_pdb.py::test_bp"]
    assert_mib(row(bp, "a = bytearray(5 * 2**20)")["increment"], 5)
    assert any("memline's trace function was removed during the test" in n for n in bp["table"]["notes"])


def test_off_when_coverage_traces_too(pytester: pytest.Pytester) -> None:
    """coverage's C tracer is chained and must see every line: the hook is not installed."""
    need("pytest_cov")
    result, tests = session(
        pytester,
        "test_cov",
        """

def test_with_coverage():
    data = build(6)
    assert not _memline._callees_untraced()
""",
        1,
        "--cov=test_cov",
        "--cov-report=term-missing",
    )
    # build() ran under coverage: its body is not among the missed lines (`down` is)
    source = (pytester.path / "test_cov.py").read_text().splitlines()
    build_body = source.index("    return bytearray(n * 2**20)") + 1
    down_body = source.index("    return 0 if n == 0 else 1 + down(n - 1)") + 1
    report = [line for line in result.stdout.lines if re.match(r"test_cov\.py\s+\d", line)]
    assert len(report) == 1, result.stdout.str()
    missed = missed_lines(report[0])
    assert down_body in missed and build_body not in missed, report[0]
    assert_mib(row(tests["test_cov.py::test_with_coverage"], "data = build(6)")["increment"], 6)


def build_jitlike(where: Path) -> None:
    """Compiles tests/data/jitlike.c (a stand-in for a PEP 523 JIT such as torch dynamo) into
    an extension module in `where`."""
    cc = shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if cc is None or not Path(include, "Python.h").exists():
        pytest.skip("needs a C compiler and Python's headers to build the JIT stand-in")
    out = where / f"jitlike{sysconfig.get_config_var('EXT_SUFFIX')}"
    source = Path(__file__).parent / "data" / "jitlike.c"
    subprocess.run([cc, "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(out)], check=True)


def test_another_frame_evaluation_hook_a_jit(pytester: pytest.Pytester) -> None:
    """A JIT that installs its own frame-evaluation function the way torch dynamo does (saves
    the current one, evaluates frames itself, puts the saved one back when it is turned off):
    turned on and off inside a test, memline's hook comes back and the tables are right; left on
    past the end of a test, memline does not install its hook for the next test, and when the
    JIT later puts back memline's hook, saved from a test long finished, that hook removes
    itself (else, with calls no longer inlined, a deep recursion would overflow the C stack)."""
    build_jitlike(pytester.path)
    _, tests = session(
        pytester,
        "test_jit",
        """
import jitlike


def test_on_and_off_inside():
    assert _memline._callees_untraced()
    jitlike.enable()
    a = build(8)
    kept = [build(1) for _ in range(2)]
    jitlike.disable()
    b = build(5)
    assert jitlike.frames() >= 2
    assert _memline._callees_untraced()


def test_left_on():
    jitlike.enable()
    c = build(6)


def test_with_the_jit_on():
    assert not _memline._callees_untraced() and not jitlike.hook_is_default()
    seen = jitlike.frames()
    d = build(3)
    assert jitlike.frames() > seen
    # the JIT puts back what it saved in test_left_on: memline's hook, from a finished trace
    jitlike.disable()
    sys.setrecursionlimit(250_000)
    depth = down(100_000)
    assert depth == 100_000 and jitlike.hook_is_default()


def test_after():
    assert _memline._callees_untraced()
    e = build(4)
""",
        4,
        "-p",
        "no:randomly",
    )
    inside = tests["test_jit.py::test_on_and_off_inside"]
    assert_mib(row(inside, "a = build(8)")["increment"], 8)
    assert_mib(row(inside, "kept = [build(1) for _ in range(2)]")["increment"], 2)
    assert_mib(row(inside, "b = build(5)")["increment"], 5)
    assert_mib(row(tests["test_jit.py::test_left_on"], "c = build(6)")["increment"], 6)
    assert_mib(row(tests["test_jit.py::test_with_the_jit_on"], "d = build(3)")["increment"], 3)
    assert_mib(row(tests["test_jit.py::test_after"], "e = build(4)")["increment"], 4)


def missed_lines(report_line: str) -> set[int]:
    """The line numbers in the Missing column of a `term-missing` row ("7, 12-14")."""
    missed: set[int] = set()
    for part in re.findall(r"\d+(?:-\d+)?", report_line.split("%", 1)[1]):
        first, _, last = part.partition("-")
        missed.update(range(int(first), int(last or first) + 1))
    return missed
