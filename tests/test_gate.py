"""Baselines and the regression gate (`--memline-save`, `--memline-compare`), end to end.

Every session runs in a subprocess (the tracer never competes with this pytest) and allocates
real memory: `bytearray(n)` is zero-filled, so its pages are touched and RSS grows by ~n.
Tolerances: an allocation of N MiB is asserted to within 2 MiB (allocator and page-table
overhead measured here stay under 0.5 MiB).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 1024 * 1024

TWO_TESTS = """
def test_grows():
    a = bytearray({a} * 2**20)
    b = bytearray(5 * 2**20)
    assert a and b


def test_steady():
    x = bytearray(20 * 2**20)
    assert x
"""


def write_suite(pytester: pytest.Pytester, a: int = 10, header: str = "") -> None:
    pytester.makepyfile(test_suite=header + TWO_TESTS.format(a=a))


def baseline(pytester: pytest.Pytester, path: str = ".memline/baseline.json") -> dict:
    return json.loads((pytester.path / path).read_text())


def line_of(entry: dict, contents: str) -> dict:
    return next(r for r in entry["lines"] if r["contents"].strip() == contents)


def test_save_writes_a_documented_stable_baseline(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    pytester.makepyfile(
        test_failing="""
        def test_fails():
            data = bytearray(2**20)
            assert not data
        """
    )
    result = pytester.runpytest_subprocess("--memline", "--memline-save")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["memline: saved 2 tests to .memline/baseline.json, up to 5 saved runs per test"]
    )
    doc = baseline(pytester)
    assert list(doc)[:5] == ["format", "version", "metric", "python", "platform"]
    assert doc["format"] == "pytest-memline-baseline" and doc["version"] == 2
    assert doc["metric"] == "rss"
    # only passing tests are recorded, sorted by node id
    assert list(doc["tests"]) == ["test_suite.py::test_grows", "test_suite.py::test_steady"]
    entry = doc["tests"]["test_suite.py::test_grows"]
    assert entry["filename"] == "test_suite.py"  # relative to the rootdir: portable
    assert entry["outcome"] == "passed"
    row = line_of(entry, "a = bytearray(10 * 2**20)")
    # one sample per saved run
    assert len(row["increment"]) == 1 and abs(row["increment"][0] - 10 * MIB) < 2 * MIB
    assert row["occurrences"] == 1
    assert len(entry["peak_growth"]) == 1 and abs(entry["peak_growth"][0] - 15 * MIB) < 2 * MIB
    # one line per table row: the file diffs well
    text = (pytester.path / ".memline/baseline.json").read_text()
    assert '{"line":2,"contents":"    a = bytearray(10 * 2**20)","occurrences":1,' in text
    # a second save adds a sample to each value
    pytester.runpytest_subprocess("--memline", "--memline-save")
    entry = baseline(pytester)["tests"]["test_suite.py::test_grows"]
    assert len(entry["peak_growth"]) == 2
    assert len(line_of(entry, "a = bytearray(10 * 2**20)")["peak"]) == 2


def test_compare_fails_the_grown_line_and_aligns_shifted_rows(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    # one line allocates 20 MiB more; comments on top shift every line of both tests by two
    write_suite(pytester, a=30, header="# a comment that shifts every line below\n")
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "memline: line 4 (line 2 in the baseline) `a = bytearray(30 * 2**20)`: increment "
            "10.0 MiB -> 30.0 MiB (+20.0 MiB, +200%)*against the baseline, over the 12.0 MiB "
            "allowed (1 saved run + the noise floor of 2 MiB (default))*",
        ]
    )
    out = result.stdout.str()
    diff = out.split("memline: diff against the baseline")[1].split("memline: memory table")[0]
    diff_rows = [line for line in diff.splitlines() if re.match(r"[-+][ >] *\d", line)]
    # the edited line: old row out, new row in (marked), nothing else changed
    assert len(diff_rows) == 2, diff
    assert diff_rows[0].startswith("-     2") and "bytearray(10 * 2**20)" in diff_rows[0]
    assert diff_rows[1].startswith("+>    4") and "bytearray(30 * 2**20)" in diff_rows[1]
    # the shifted but unchanged line is context, at its new line number
    assert any(line.startswith("      5") and "bytearray(5 * 2**20)" in line for line in diff.splitlines())
    result.stdout.fnmatch_lines(["1 regressed, 0 improved, 1 unchanged, 0 new, 0 gone"])
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_grows - Failed: memline: line 4*"])


def test_unchanged_suite_passes_and_subset_saves_keep_other_entries(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    before = baseline(pytester)["tests"]["test_suite.py::test_steady"]
    result = pytester.runpytest_subprocess("--memline", "--memline-save", "-k", "grows")
    result.stdout.fnmatch_lines(
        ["memline: saved 1 test to .memline/baseline.json, up to 5 saved runs per test (kept 1 other entry)"]
    )
    doc = baseline(pytester)
    assert doc["tests"]["test_suite.py::test_steady"] == before
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["0 regressed, 0 improved, 2 unchanged, 0 new, 0 gone"])


def test_new_gone_and_improved(pytester: pytest.Pytester) -> None:
    write_suite(pytester, a=40)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    pytester.makepyfile(
        test_suite="""
        def test_grows():
            a = bytearray(10 * 2**20)
            b = bytearray(5 * 2**20)
            assert a and b


        def test_brand_new():
            assert True
        """
    )
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "0 regressed, 1 improved, 0 unchanged, 1 new, 1 gone",
            "* MiB  test_suite.py::test_grows  test: peak growth * MiB -> * MiB*",
            "  new: test_suite.py::test_brand_new",
            "  gone: test_suite.py::test_steady",
        ]
    )
    # the peak growths come from the kernel's peak counter: within a page-table page or two
    m = re.search(
        r"(-[\d.]+) MiB  test_suite\.py::test_grows  test: peak growth ([\d.]+) MiB -> ([\d.]+) MiB",
        result.stdout.str(),
    )
    assert m, result.stdout.str()
    assert [float(v) for v in m.groups()] == [
        pytest.approx(-30, abs=1),
        pytest.approx(45, abs=1),
        pytest.approx(15, abs=1),
    ]


def test_missing_baseline_warns_and_reports_new(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest_subprocess("--memline", "--memline-compare=nowhere.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "memline: warning: baseline nowhere.json does not exist; every test is reported as new*",
            "0 regressed, 0 improved, 0 unchanged, 2 new, 0 gone",
        ]
    )
    # -q hides the header line; the warning stays in pytest's summary
    quiet = pytester.runpytest_subprocess("-q", "--memline", "--memline-compare=nowhere.json")
    assert quiet.ret == 0
    quiet.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "*PytestWarning: memline: baseline nowhere.json does not exist; every test is "
            "reported as new and none can regress (--memline-missing-baseline=fail makes this "
            "an error)",
            "*2 passed, 1 warning*",
        ]
    )


def test_a_required_baseline_that_is_missing_stops_the_run(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-compare=nowhere.json", "--memline-missing-baseline=fail"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ['ERROR: memline: baseline nowhere.json does not exist, and missing_baseline = "fail": '
         "nothing to compare with (save one with --memline-save first)"]
    )
    assert "passed" not in result.stdout.str()
    pytester.makepyprojecttoml('[tool.memline]\nmissing_baseline = "fail"\n')
    result = pytester.runpytest_subprocess("--memline", "--memline-compare=nowhere.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_gate_and_report_options_turn_tracing_on_and_others_warn(
    pytester: pytest.Pytester,
) -> None:
    """A CI step that forgot --memline must not pass a gate that never ran."""
    write_suite(pytester)
    result = pytester.runpytest_subprocess("--memline-save")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "memline: tracing turned on by --memline-save (as --memline)",
            "memline: saved 2 tests to .memline/baseline.json*",
        ]
    )
    grown = pytester.runpytest_subprocess("--memline-compare", "--memline-json=r.json")
    grown.stdout.fnmatch_lines(["memline: tracing turned on by --memline-compare (as --memline)"])
    assert json.loads((pytester.path / "r.json").read_text())["summary"]["traced"] == 2
    off = pytester.runpytest_subprocess("--no-memline", "--memline-compare")
    assert off.ret == pytest.ExitCode.USAGE_ERROR
    off.stderr.fnmatch_lines(
        ["ERROR: memline: --memline-compare needs tracing, and --no-memline turns it off"]
    )
    other = pytester.runpytest_subprocess("--memline-tables=all")
    other.assert_outcomes(passed=2, warnings=1)
    other.stdout.fnmatch_lines(
        ["*PytestConfigWarning: memline: --memline-tables has no effect: tracing is off (add "
         "--memline, or enabled = true in ?tool.memline?)"]
    )
    assert "memline: on" not in other.stdout.str()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "pytest-memline-baseline", "version": 1, "met', "it is truncated"),
        ("[1, 2, 3]", "it is not a JSON object"),
        ('{"format": "pytest-memline-baseline", "version": 9}', "newer pytest-memline (format version 9"),
        (
            '{"format": "pytest-memline-baseline", "version": 1, "metric": "rss", "python": "3",'
            ' "platform": "x", "tests": {"t": {"peak": 1}}}',
            "its contents do not match the format",
        ),
    ],
    ids=["truncated", "not-an-object", "newer-version", "wrong-schema"],
)
def test_corrupt_baseline_with_compare_is_a_usage_error(
    pytester: pytest.Pytester, content: str, message: str
) -> None:
    write_suite(pytester)
    (pytester.path / "base.json").write_text(content)
    result = pytester.runpytest_subprocess("--memline", "--memline-compare=base.json", "--memline-save=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: memline: baseline */base.json is unusable: *{message}*"])
    # nothing was run, nothing was overwritten
    assert (pytester.path / "base.json").read_text() == content


def test_corrupt_baseline_when_saving_is_kept_as_bak(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    (pytester.path / "base.json").write_text("{ not json")
    result = pytester.runpytest_subprocess("--memline", "--memline-save=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "memline: warning: the existing baseline base.json was unusable (it is not valid JSON*); "
            "it was moved to */base.json.bak",
            "memline: saved 2 tests to base.json, *",
        ]
    )
    assert (pytester.path / "base.json.bak").read_text() == "{ not json"
    assert len(json.loads((pytester.path / "base.json").read_text())["tests"]) == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metric", "heap", "holds the 'heap' metric and this run measures 'rss': comparing across metrics is refused"),
        ("platform", "darwin-arm64", "was recorded on darwin-arm64 and this is linux-*"),
    ],
)
def test_baseline_from_another_metric_or_platform_is_refused(
    pytester: pytest.Pytester, field: str, value: str, message: str
) -> None:
    write_suite(pytester)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    path = pytester.path / ".memline/baseline.json"
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    result = pytester.runpytest_subprocess("--memline", "--memline-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: memline: baseline .memline/baseline.json {message}*"])


@pytest.mark.parametrize(
    ("how", "passes"),
    [
        ("cli-tolerance", True),
        ("cli-noise-floor", True),
        ("config-tolerance", True),
        ("rule-tolerance", True),
        ("marker-tolerance", True),
        ("marker-beats-cli", False),
    ],
)
def test_tolerance_and_noise_floor_sources(pytester: pytest.Pytester, how: str, passes: bool) -> None:
    write_suite(pytester, a=10)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    args = ["--memline", "--memline-compare"]
    marker = ""
    if how == "cli-tolerance":
        args.append("--memline-tolerance=300%")
    elif how == "cli-noise-floor":
        args.append("--memline-noise-floor=25MiB")
    elif how == "config-tolerance":
        pytester.makepyprojecttoml('[tool.memline]\ntolerance = "300%"\n')
    elif how == "rule-tolerance":
        pytester.makepyprojecttoml(
            '[[tool.memline.limits]]\nmatch = "*::test_grows"\ntolerance = "300%"\n'
        )
    elif how == "marker-tolerance":
        marker = '@pytest.mark.mem_limit(tolerance="300%")\n'
    elif how == "marker-beats-cli":
        args.append("--memline-tolerance=300%")
        marker = '@pytest.mark.mem_limit(tolerance="50%")\n'
    # +20 MiB on a 10 MiB line (+200%), +20 MiB on a 15 MiB test (+133%)
    suite = "import pytest\n" + TWO_TESTS.format(a=30).replace("def test_grows", marker + "def test_grows")
    pytester.makepyfile(test_suite=suite)
    result = pytester.runpytest_subprocess(*args)
    if passes:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, failed=1)
        # 50% of 10 MiB is above the noise floor: the tolerance sets the margin
        result.stdout.fnmatch_lines(
            ["*over the 15.0 MiB allowed (1 saved run + the tolerance of 50% (@pytest.mark.mem_limit))*"]
        )


def test_bad_tolerance_values(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest_subprocess("--memline", "--memline-tolerance=ten")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --memline-tolerance: \"ten\": expected a percentage ending in '%'*"])
    result = pytester.runpytest_subprocess("--memline", "--memline-noise-floor=lots")
    result.stderr.fnmatch_lines(["*argument --memline-noise-floor: \"lots\": not a size; expected*MiB*"])
    pytester.makepyprojecttoml('[tool.memline]\ntolerance = "-5%"\n')
    result = pytester.runpytest_subprocess("--memline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        'ERROR: memline: pyproject.toml: [tool.memline] tolerance = "-5%": a tolerance cannot be '
        "negative; expected a percentage such as '10%' or '0%'" in result.stderr.str()
    )


def test_bad_tolerance_in_a_marker_errors_that_test_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.mem_limit(tolerance=10)
        def test_bad():
            pass

        def test_good():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--memline")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_m.py::test_bad: @pytest.mark.mem_limit(tolerance=10): 10: not a percentage; expected a percentage such as '10%'*"]
    )


def test_save_option_refuses_a_swallowed_test_path(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest_subprocess("--memline", "--memline-save", "test_suite.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'test_suite.py' looks like a test path, not a baseline file; write --memline-save=PATH*"])


def test_concurrent_saves_lose_nothing(pytester: pytest.Pytester) -> None:
    """Two sessions saving different tests to one baseline at the same time."""
    for i in range(4):
        pytester.makepyfile(**{f"test_part{i}": f"def test_{i}():\n    x = bytearray({i + 1} * 2**20)\n    assert x\n"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--memline", "--memline-save=shared.json", f"test_part{i}.py"],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    doc = json.loads((pytester.path / "shared.json").read_text())
    assert sorted(doc["tests"]) == [f"test_part{i}.py::test_{i}" for i in range(4)]


def test_xdist_save_and_compare(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    write_suite(pytester)
    result = pytester.runpytest_subprocess("--memline", "--memline-save", "-n", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["memline: saved 2 tests to .memline/baseline.json, *"])
    assert sorted(baseline(pytester)["tests"]) == ["test_suite.py::test_grows", "test_suite.py::test_steady"]
    write_suite(pytester, a=30)
    result = pytester.runpytest_subprocess("--memline", "--memline-compare", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*memline: line 2 `a = bytearray(30 * 2**20)`: increment 10.0 MiB -> 30.0 MiB*",
            "1 regressed, 0 improved, 1 unchanged, 0 new, 0 gone",
        ]
    )
    # the controller alone wrote the baseline: compare did not touch it
    assert "a = bytearray(10 * 2**20)" in (pytester.path / ".memline/baseline.json").read_text()


def test_json_markdown_and_junit_reports(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    write_suite(pytester, a=30)
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-compare", "--memline-json=out/report.json",
        "--memline-markdown=out/summary.md", "--junitxml=out/junit.xml",
    )
    result.assert_outcomes(passed=1, failed=1)
    report = json.loads((pytester.path / "out/report.json").read_text())
    assert report["format"] == "pytest-memline-report" and report["version"] == 1
    assert report["summary"]["regressed"] == 1 and report["summary"]["unchanged"] == 1
    grown = report["tests"]["test_suite.py::test_grows"]
    assert grown["outcome"] == "failed"
    assert grown["comparison"]["status"] == "regressed"
    assert abs(grown["peak_growth"] - 35 * MIB) < 2 * MIB
    change = next(c for c in grown["comparison"]["changes"] if c["what"] == "increment")
    assert change["line"] == 2 and abs(change["new"] - change["old"] - 20 * MIB) < 2 * MIB
    md = (pytester.path / "out/summary.md").read_text()
    assert md.startswith("## :x: pytest-memline")
    assert "Against `.memline/baseline.json`: 1 regressed, 0 improved, 1 unchanged, 0 new, 0 gone." in md
    assert "`test_suite.py::test_grows` | line 2 `a = bytearray(30 * 2**20)`: increment 10.0 MiB -> 30.0 MiB" in md
    junit = (pytester.path / "out/junit.xml").read_text()
    assert '<property name="memline_peak_growth" value="' in junit


def test_colour_only_on_a_terminal(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    pytester.runpytest_subprocess("--memline", "--memline-save").assert_outcomes(passed=2)
    write_suite(pytester, a=30)
    plain = pytester.runpytest_subprocess("--memline", "--memline-compare")
    assert "\x1b[" not in plain.stdout.str()
    coloured = pytester.runpytest_subprocess("--memline", "--memline-compare", "--color=yes")
    text = coloured.stdout.str()
    assert "\x1b[31m-     2" in text  # removed row in red
    assert "\x1b[32m\x1b[1m+>    2" in text  # regressed row in bold green
