"""Issue 5, points 1, 3, 6 and 7: memline in the same run as other tools, in real sessions.

coverage.py through pytest-cov (every core), pytest-xdist, pdb, pytest-randomly, pytest-timeout,
pytest-rerunfailures, pytest-benchmark and pytest-memray.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from compat_util import (
    MONITORING,
    assert_mib,
    need,
    pytester,  # noqa: F401  (the fixture)
    row,
    run,
    traced,
)

PKG = """
def used(n):
    if n > 0:
        return bytearray(n)
    return None


def unused():
    x = 1
    return x
"""

COVERED_TESTS = """
import pkg


def helper(flag):
    if flag:
        return 1
    return 2


def test_alloc():
    a = pkg.used(10 * 2**20)
    assert a


def test_branches():
    assert helper(0) == 2
    assert pkg.used(0) is None


class TestInClass:
    def test_loop(self):
        for i in range(3):
            if i == 5:
                raise AssertionError
"""

CORES = [
    pytest.param(None, ["--cov-branch"], id="default-core-branch"),
    pytest.param("ctrace", [], id="ctrace"),
    pytest.param(
        "sysmon",
        [],
        id="sysmon",
        marks=pytest.mark.skipif(not MONITORING, reason="coverage's sysmon core needs sys.monitoring (3.12+)"),
    ),
]


def coverage_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if re.match(r"^(pkg/__init__\.py|test_cov\.py|TOTAL)\s+\d", line)]


@pytest.mark.parametrize(("core", "extra"), CORES)
def test_coverage_reports_the_same_with_memline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, core: str | None, extra: list[str]
) -> None:
    need("pytest_cov")
    if core is None:
        monkeypatch.delenv("COVERAGE_CORE", raising=False)
    else:
        monkeypatch.setenv("COVERAGE_CORE", core)
    pytester.mkpydir("pkg").joinpath("__init__.py").write_text(PKG)
    pytester.makepyfile(test_cov=COVERED_TESTS)
    cov = ("--cov=pkg", "--cov=test_cov", "--cov-report=term-missing", *extra)
    plain = pytester.runpytest_subprocess(*cov)
    plain.assert_outcomes(passed=3)
    both = run(pytester, *cov)
    both.assert_outcomes(passed=3)
    expected = coverage_lines(plain)
    assert len(expected) == 3, plain.stdout.str()
    assert coverage_lines(both) == expected
    assert re.match(r"pkg/__init__\.py .* 9-10$", expected[0])  # coverage measured something real
    if core == "sysmon":  # coverage used sys.monitoring, not a fallback
        assert "CoverageWarning" not in both.stdout.str() + both.stderr.str()
    tests = traced(pytester)
    assert sorted(tests) == [
        "test_cov.py::TestInClass::test_loop",
        "test_cov.py::test_alloc",
        "test_cov.py::test_branches",
    ]
    assert_mib(row(tests["test_cov.py::test_alloc"], "a = pkg.used(10 * 2**20)")["increment"], 10)
    assert row(tests["test_cov.py::TestInClass::test_loop"], "for i in range(3):")["occurrences"] == 4
    for test in tests.values():
        assert test["table"]["notes"] == []  # no "could not be chained", no interruption


XDIST_SUITE = """
import os

import pytest


def own_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("n", [5, 10, 15, 20])
def test_alloc(n):
    a = bytearray(n * 2**20)
    with open(f"rss-{{n}}.txt", "w") as f:
        f.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{own_rss()}}")
    assert a


@pytest.mark.mem_limit("{limit}")
def test_over_budget():
    big = bytearray(30 * 2**20)
    assert big
"""


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_xdist_tables_budgets_summary_and_baselines(pytester: pytest.Pytester, workers: str) -> None:
    need("xdist")
    pytester.makepyfile(test_x=XDIST_SUITE.format(limit="1GiB"))
    result = run(pytester, "-n", workers, "--memline-save", "--memline-tables=all")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["memline: saved 5 tests to .memline/baseline.json, *", "memline: 5 tests traced, 0 over budget"])
    tests = traced(pytester)
    workers_seen = set()
    for n in (5, 10, 15, 20):
        test = tests[f"test_x.py::test_alloc[{n}]"]
        line = row(test, "a = bytearray(n * 2**20)")
        assert_mib(line["increment"], n)
        # the table is of the worker that ran the test: its own RSS, read there, matches
        worker, rss = (pytester.path / f"rss-{n}.txt").read_text().split()
        workers_seen.add(worker)
        assert abs(line["mem_usage"] - int(rss)) < 2 * 2**20
    assert len(workers_seen) == 2  # both workers ran tests (5 tests, load balanced)
    saved = json.loads((pytester.path / ".memline/baseline.json").read_text())["tests"]
    assert len(saved) == 5
    # the budget fails on the worker, the summary on the controller counts it
    pytester.makepyfile(test_x=XDIST_SUITE.format(limit="10MiB").replace("test_alloc(n):\n    a = bytearray(n", "test_alloc(n):\n    a = bytearray(2 * n"))
    result = run(pytester, "-n", workers, "--memline-compare")
    result.assert_outcomes(passed=0, failed=5)
    result.stdout.fnmatch_lines(
        [
            "*memline: test peak RSS growth of * MiB is over the test limit of 10 MiB (@pytest.mark.mem_limit)",
            "4 regressed, 0 improved, 1 unchanged, 0 new, 0 gone",
            "memline: 5 tests traced, 1 over budget",
        ]
    )


def test_pdb_breakpoint_in_a_traced_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_pdb="""
        def test_bp():
            a = bytearray(5 * 2**20)
            breakpoint()
            b = bytearray(6 * 2**20)
            assert a and b


        def test_after():
            c = bytearray(7 * 2**20)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "--memline", "--memline-json=memline.json"],
        input="p len(a)\nc\n", capture_output=True, text=True, timeout=120, cwd=pytester.path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(Pdb) 5242880" in proc.stdout  # the debugger ran, and saw the test's locals
    assert "2 passed" in proc.stdout
    tests = traced(pytester)
    bp = tests["test_pdb.py::test_bp"]
    assert_mib(row(bp, "a = bytearray(5 * 2**20)")["increment"], 5)
    if MONITORING:
        # pdb uses sys.settrace; memline's sys.monitoring tool keeps tracing beside it
        assert_mib(row(bp, "b = bytearray(6 * 2**20)")["increment"], 6)
        assert bp["table"]["notes"] == []
    else:
        # pdb replaced memline's trace function: the table says so
        assert row(bp, "b = bytearray(6 * 2**20)")["occurrences"] == 0
        assert any("memline's trace function was removed during the test" in n for n in bp["table"]["notes"])
    # the next test is traced as usual
    assert_mib(row(tests["test_pdb.py::test_after"], "c = bytearray(7 * 2**20)")["increment"], 7)


def test_pdb_post_mortem_on_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_pm="""
        def test_fails():
            a = bytearray(4 * 2**20)
            assert not a
        """
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "--memline", "--pdb", "--memline-json=memline.json"],
        input="p len(a)\nc\n", capture_output=True, text=True, timeout=120, cwd=pytester.path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "(Pdb) 4194304" in proc.stdout
    assert "1 failed" in proc.stdout
    assert_mib(row(traced(pytester)["test_pm.py::test_fails"], "a = bytearray(4 * 2**20)")["increment"], 4)


@pytest.mark.shuffled
def test_pytest_randomly(pytester: pytest.Pytester) -> None:
    need("pytest_randomly")
    pytester.makepyfile(
        test_r="\n".join(f"def test_{i}():\n    a = bytearray({i + 1} * 2**20)\n" for i in range(6))
    )
    result = pytester.runpytest_subprocess("-p", "randomly", "--randomly-seed=4", "--memline", "--memline-json=memline.json", "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["Using --randomly-seed=4"])
    order = [line.split("::")[1].split()[0] for line in result.stdout.lines if line.startswith("test_r.py::")]
    assert order != sorted(order, key=lambda t: int(t.split("_")[1]))  # shuffled
    tests = traced(pytester)
    for i in range(6):
        assert_mib(row(tests[f"test_r.py::test_{i}"], f"a = bytearray({i + 1} * 2**20)")["increment"], i + 1)


def test_pytest_timeout(pytester: pytest.Pytester) -> None:
    need("pytest_timeout")
    pytester.makeconftest(
        """
        import sys


        def pytest_sessionfinish(session):
            print("\\nINNER gettrace", sys.gettrace())
        """
    )
    pytester.makepyfile(
        test_t="""
        import time

        import pytest


        @pytest.mark.timeout(1, method="signal")
        def test_slow():
            a = bytearray(3 * 2**20)
            time.sleep(30)


        def test_next():
            b = bytearray(4 * 2**20)
        """
    )
    result = run(pytester, "-s")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>1.0s) from pytest-timeout*", "*- memline: memory table -*", "test_t.py::test_slow  *"])
    result.stdout.fnmatch_lines(["INNER gettrace None"])
    tests = traced(pytester)
    assert_mib(row(tests["test_t.py::test_slow"], "a = bytearray(3 * 2**20)")["increment"], 3)
    assert row(tests["test_t.py::test_slow"], "time.sleep(30)")["occurrences"] == 1
    assert_mib(row(tests["test_t.py::test_next"], "b = bytearray(4 * 2**20)")["increment"], 4)


def test_pytest_rerunfailures(pytester: pytest.Pytester) -> None:
    need("pytest_rerunfailures")
    pytester.makepyfile(
        test_f="""
        import pytest

        RUNS = []


        @pytest.mark.flaky(reruns=2)
        def test_flaky():
            a = bytearray(4 * 2**20)
            RUNS.append(1)
            assert len(RUNS) >= 2


        def test_steady():
            b = bytearray(2 * 2**20)
        """
    )
    result = run(pytester, "--memline-tables=all", "--memline-save")
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["rerun"]) == (2, 1), outcomes
    # both attempts show a table; only the last one counts
    assert result.stdout.str().count("test_f.py::test_flaky  (test_flaky in test_f.py)") == 2
    result.stdout.fnmatch_lines(["memline: saved 2 tests to .memline/baseline.json, *", "memline: 2 tests traced, 0 over budget"])
    # the allocation of the attempt that counted, not also the rerun one's
    tops = [
        line
        for line in result.stdout.lines
        if "test_f.py::test_flaky:" in line and "a = bytearray(4 * 2**20)" in line
    ]
    assert len(tops) == 1, tops
    tests = traced(pytester)
    assert tests["test_f.py::test_flaky"]["outcome"] == "passed"
    assert_mib(row(tests["test_f.py::test_flaky"], "a = bytearray(4 * 2**20)")["increment"], 4)


def test_pytest_benchmark(pytester: pytest.Pytester) -> None:
    need("pytest_benchmark")
    pytester.makepyfile(
        test_b="""
        def test_bench(benchmark):
            a = bytearray(6 * 2**20)
            result = benchmark(lambda: bytes(1000))
            assert a and result
        """
    )
    result = run(pytester, "--benchmark-disable-gc", "--benchmark-max-time=0.05")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*benchmark: 1 tests*", "*test_bench *"])
    test = traced(pytester)["test_b.py::test_bench"]
    assert_mib(row(test, "a = bytearray(6 * 2**20)")["increment"], 6)
    assert row(test, "result = benchmark(lambda: bytes(1000))")["occurrences"] == 1


def test_pytest_memray(pytester: pytest.Pytester) -> None:
    need("pytest_memray")
    pytester.makepyfile(
        test_m="""
        import pytest


        def test_alloc():
            a = bytearray(10 * 2**20)
            assert a


        @pytest.mark.limit_memory("1 MB")
        def test_limited():
            a = bytearray(5 * 2**20)
            assert a
        """
    )
    result = run(pytester, "--memray")
    result.assert_outcomes(passed=1, failed=1)
    # memray: its own report and its limit
    result.stdout.fnmatch_lines(["*Test was limited to 1.0MiB but allocated 5.0MiB*"])
    result.stdout.fnmatch_lines(["Allocation results for test_m.py::test_alloc at the high watermark"])
    # memline: its tables, and they are right (memray's own tracking costs a little RSS)
    tests = traced(pytester)
    assert_mib(row(tests["test_m.py::test_alloc"], "a = bytearray(10 * 2**20)")["increment"], 10)
    assert_mib(row(tests["test_m.py::test_limited"], "a = bytearray(5 * 2**20)")["increment"], 5)
    result.stdout.fnmatch_lines(["memline: 2 tests traced, 0 over budget"])


def test_pdb_on_a_real_terminal_with_pexpect(tmp_path: os.PathLike[str]) -> None:
    """pexpect drives pdb on a pseudo-terminal: the prompt, a command, then `continue`."""
    pexpect = need("pexpect")
    import io

    (tmp_path / "test_tty.py").write_text("def test_bp():\n    a = bytearray(2**20)\n    breakpoint()\n    b = 1\n")  # type: ignore[operator]
    log = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "--memline", "--memline-tables=all"],
        cwd=str(tmp_path), encoding="utf-8", timeout=60,
    )
    child.logfile_read = log
    child.expect(r"\(Pdb\) ")
    child.sendline("p len(a)")
    child.expect("1048576")
    child.sendline("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, log.getvalue()
    out = log.getvalue()
    assert "1 passed" in out
    assert "test_tty.py::test_bp  (test_bp in test_tty.py)" in out
