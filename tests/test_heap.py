"""The `heap` metric (tracemalloc): deterministic numbers, its own labels, and no comparison
across metrics. Inner sessions run in subprocesses."""

from __future__ import annotations

import json

import pytest

MIB = 1024 * 1024

HEAVY = """
import pytest


def build(n):
    return [str(i) * 3 for i in range(n)]


def test_heavy():
    a = build(100_000)
    b = {i: str(i) for i in range(50_000)}
    c = bytearray(10 * 2**20)
    del b
    assert a and c
"""


def numbers(pytester: pytest.Pytester, path: str) -> tuple[object, ...]:
    report = json.loads((pytester.path / path).read_text())
    test = report["tests"]["test_heavy.py::test_heavy"]
    rows = tuple(
        (r["line"], r["increment"], r["peak"], r["occurrences"], r["mem_usage"])
        for r in test["table"]["lines"]
        if r["occurrences"]
    )
    return rows, test["peak_growth"], test["table"]["end_rss"] - test["table"]["start_rss"]


def test_heap_numbers_are_identical_on_every_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_heavy=HEAVY)
    runs = []
    for i in range(10):
        result = pytester.runpytest_subprocess(
            "--memline", "--memline-metric=heap", f"--memline-json=run{i}.json"
        )
        result.assert_outcomes(passed=1)
        runs.append(numbers(pytester, f"run{i}.json"))
    assert all(run == runs[0] for run in runs), runs
    rows, peak_growth, _ = runs[0]
    by_line = {r[0]: r for r in rows}
    # the bytearray: exactly its size plus the object header
    assert 10 * MIB <= by_line[11][1] <= 10 * MIB + 256
    # `del b` gives back what the dict comprehension kept
    assert by_line[12][1] == -by_line[10][1] or abs(by_line[12][1] + by_line[10][1]) < 4096
    assert peak_growth >= by_line[9][1] + by_line[10][1] + by_line[11][1]


def test_heap_table_header_and_baseline_metric(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_heavy=HEAVY)
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-metric=heap", "--memline-tables=all", "--memline-save"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "memline: on (backend *, metric heap: Python allocations via tracemalloc)",
            "Python heap (tracemalloc: allocated bytes, the same on every run): start *",
        ]
    )
    doc = json.loads((pytester.path / ".memline/baseline.json").read_text())
    assert doc["metric"] == "heap"
    # the same metric compares, with a tolerance of zero
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-metric=heap", "--memline-compare",
        "--memline-tolerance=0%", "--memline-noise-floor=0",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["0 regressed, 0 improved, 1 unchanged, 0 new, 0 gone"])
    # another metric is refused, naming both
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: memline: baseline .memline/baseline.json holds the 'heap' metric and this run "
         "measures 'rss': comparing across metrics is refused"]
    )


def test_marker_metric_and_refused_entry(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_m="""
        def test_a():
            data = bytearray(8 * 2**20)
            assert data
        """
    )
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=1)
    pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.mem_limit(metric="heap", test="4MiB")
        def test_a():
            data = bytearray(8 * 2**20)
            assert data
        """
    )
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # the budget speaks of the heap, and the comparison is refused, not made
    assert "memline: test peak heap growth of 8.0 MiB is over the test limit of 4 MiB (@pytest.mark.mem_limit)" in out
    assert "holds the \"rss\" metric and this test measures \"heap\": comparing across metrics is refused" in out
    assert "1 refused (another metric)" in out


def test_bad_metric_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.mem_limit(metric="vms")
        def test_a():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--memline")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_m.py::test_a: @pytest.mark.mem_limit(metric='vms'): expected 'rss' or 'heap'*"])
    result = pytester.runpytest_subprocess("--memline", "--memline-metric=vms")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    pytester.makepyprojecttoml('[tool.memline]\nmetric = "vms"\n')
    result = pytester.runpytest_subprocess("--memline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert 'metric = "vms": expected one of "rss", "heap"' in result.stderr.str()
