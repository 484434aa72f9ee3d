"""The resolver and the marker, without a pytest session: one table of settings
(pytest_memline/_keys.py) drives the options, the config parser and the resolver."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pytest_memline import _keys, _memline
from pytest_memline._settings import MarkerError, parse_marker, resolve

MIB = 1024 * 1024


def options(**given: object) -> argparse.Namespace:
    """pytest's option namespace: every option of the table unset, but those given."""
    ns = argparse.Namespace(**{k.dest: None for k in _keys.KEYS if k.option})
    for name, value in given.items():
        setattr(ns, _keys.BY_NAME[name].dest, value)
    return ns


def config(text: str) -> dict:
    parsed = _memline.parse_pyproject(text, "pyproject.toml", *_keys.schema())
    assert parsed is not None
    return parsed


def test_defaults_come_from_the_table(tmp_path: Path) -> None:
    s = resolve(options(), None, None, tmp_path, tmp_path)
    for key in _keys.KEYS:
        if key.name in ("test_limit", "line_limit", "save", "compare", "json_report", "markdown_report", "enabled", "baseline", "trace"):
            continue
        got = getattr(s, key.name)
        got = getattr(got, "value", got)  # a Limit or Tolerance
        want = tuple(key.default) if isinstance(key.default, tuple) else key.default
        assert got == want, key.name
    assert s.noise_floor.source == "default" and s.tolerance.source == "default"


def test_command_line_beats_config_beats_default_and_says_where(tmp_path: Path) -> None:
    cfg = config('[tool.memline]\ntolerance = "20%"\nnoise_floor = "2MiB"\nsamples = 7\ntest_limit = "1GiB"\n')
    s = resolve(options(tolerance=0.5, top=3), cfg, "pyproject.toml", tmp_path, tmp_path)
    assert (s.tolerance.value, s.tolerance.source) == (0.5, "--memline-tolerance")
    assert (s.noise_floor.value, s.noise_floor.source) == (2 * MIB, "pyproject.toml [tool.memline] noise_floor")
    assert s.test_limit is not None and s.test_limit.source == "pyproject.toml [tool.memline] test_limit"
    assert (s.samples, s.top) == (7, 3)


def test_paths_rules_accept_and_peak(tmp_path: Path) -> None:
    here = tmp_path / "sub"
    cfg = config(
        '[tool.memline]\nbaseline = "b/base.json"\naccept = ["a::*"]\npeak = false\n'
        '[[tool.memline.limits]]\nmatch = "t::*"\nline_limit = "3MiB"\ntolerance = "5%"\n'
    )
    s = resolve(options(save="", compare="x.json", accept=["b::*"]), cfg, "pyproject.toml", tmp_path, here)
    assert s.save == str(tmp_path / "b/base.json") and s.compare == str(here / "x.json")
    assert s.accept == ("a::*", "b::*") and s.peak is False
    rule = s.rules[0]
    assert rule.line_limit is not None and rule.line_limit.value == 3 * MIB
    assert rule.tolerance is not None and rule.tolerance.source.endswith("#1 (match = 't::*')")
    assert resolve(options(peak="on"), cfg, "pyproject.toml", tmp_path, tmp_path).peak is True
    limits = s.limits_for("t::x", None)
    assert limits.line is not None and limits.line.value == 3 * MIB and limits.tolerance.value == 0.05
    with pytest.raises(pytest.UsageError, match="use it with --memline-save"):
        resolve(options(prune=True), None, None, tmp_path, tmp_path)


def test_leak_settings_marker_beats_rule_beats_config(tmp_path: Path) -> None:
    cfg = config(
        '[tool.memline]\nleak_limit = "50MiB"\nleak_runs = 2\n'
        '[[tool.memline.limits]]\nmatch = "t::ruled*"\nleak_limit = "4MiB"\nleak_runs = 5\n'
    )
    s = resolve(options(), cfg, "pyproject.toml", tmp_path, tmp_path)
    plain = s.limits_for("t::plain", None)
    assert plain.leak is not None and (plain.leak.value, plain.leak_runs) == (50 * MIB, 2)
    assert plain.leak.source == "pyproject.toml [tool.memline] leak_limit"
    ruled = s.limits_for("t::ruled", None)
    assert ruled.leak is not None and (ruled.leak.value, ruled.leak_runs) == (4 * MIB, 5)
    assert ruled.leak.source.endswith("[[tool.memline.limits]] #1 (match = 't::ruled*')")
    marked = s.limits_for("t::ruled", parse_marker(mark(leak="1MiB"), "t::ruled"))
    assert marked.leak is not None and (marked.leak.value, marked.leak_runs) == (MIB, 5)
    # the command line sets how many runs confirm a leak for every test
    cli = resolve(options(leak_runs=3), cfg, "pyproject.toml", tmp_path, tmp_path)
    assert cli.limits_for("t::plain", None).leak_runs == 3
    # nothing set: no limit, no repetitions
    none = resolve(options(), None, None, tmp_path, tmp_path).limits_for("t::x", None)
    assert none.leak is None and none.leak_runs is None


def mark(*args: object, **kwargs: object) -> pytest.Mark:
    return pytest.mark.mem_limit(*args, **kwargs).mark


@pytest.mark.parametrize(
    ("m", "message"),
    [
        (mark("1MiB", "2MiB"), "takes at most one positional argument (the test limit), got 2"),
        (mark(lines="1MiB"), "got unknown keyword lines='1MiB'; accepted: mem_limit(test, *, line,"),
        (mark("1MiB", test="2MiB"), "got the test limit twice"),
        (mark(), "sets no limit"),
        (mark(line="lots"), "(line='lots'): \"lots\": not a size; expected"),
        (mark(line=True), "(line=True): True: not a size"),
        (mark(tolerance=10), "(tolerance=10): 10: not a percentage; expected a percentage such as '10%'"),
        (mark(metric="gpu"), "(metric='gpu'): expected 'rss' or 'heap'"),
    ],
)
def test_marker_errors(m: pytest.Mark, message: str) -> None:
    with pytest.raises(MarkerError) as info:
        parse_marker(m, "t.py::t")
    assert str(info.value).startswith("t.py::t: @pytest.mark.mem_limit")
    assert message in str(info.value), str(info.value)


def test_marker_values() -> None:
    got = parse_marker(mark("60MiB", line="5MiB", tolerance="20%", metric="heap"), "t")
    assert got is not None and got.test is not None and got.line is not None and got.tolerance is not None
    assert (got.test.value, got.line.value, got.tolerance.value, got.metric) == (60 * MIB, 5 * MIB, 0.2, "heap")
    assert got.test.source == "@pytest.mark.mem_limit"
    assert parse_marker(None, "t") is None
    # every marker keyword is a setting of the table
    assert set(_keys.MARKER_KEYS) == {
        "test", "line", "tolerance", "noise_floor", "metric", "trace", "leak", "leak_runs"
    }
    got = parse_marker(mark(trace=False), "t")
    assert got is not None and got.trace is False
    got = parse_marker(mark(leak="1MiB", leak_runs=3), "t")
    assert got is not None and (got.leak.value, got.leak.source, got.leak_runs) == (
        MIB, "@pytest.mark.mem_limit", 3
    )


def test_a_rule_that_matches_no_test_is_named_with_the_closest_id(tmp_path: Path) -> None:
    from pytest_memline._settings import Rule, unmatched_rules

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_numeric.py").write_text("")
    ids = {"tests/test_numeric.py::test_add", "tests/test_numeric.py::test_sub"}
    wrong_folder = Rule("test_numeric.py::test_add*", source="pyproject.toml [[tool.memline.limits]] #1")
    not_collected = Rule("tests/test_numeric.py::test_mul", source="#2")
    glob_nothing = Rule("*::test_nothing", source="#3")
    matching = Rule("tests/*::test_add", source="#4")
    rules = (wrong_folder, not_collected, glob_nothing, matching)
    assert unmatched_rules(rules, ids, tmp_path, whole_suite=True) == [
        "memline: pyproject.toml [[tool.memline.limits]] #1 matches none of the 2 collected "
        "tests; node ids are relative to the rootdir, the closest is "
        "'tests/test_numeric.py::test_add'",
        "memline: #3 matches none of the 2 collected tests; node ids are relative to the "
        "rootdir, the closest is 'tests/test_numeric.py::test_sub'",
    ]
    # a narrowed run (paths on the command line) cannot judge a pattern with wildcards
    assert [m.split(" matches")[0] for m in unmatched_rules(rules, ids, tmp_path, False)] == [
        "memline: pyproject.toml [[tool.memline.limits]] #1"
    ]


def test_an_unmatched_rule_is_a_warning_in_a_real_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_numeric="def test_add():\n    assert True\n")
    pytester.makepyprojecttoml(
        '[[tool.memline.limits]]\nmatch = "tests/test_numeric.py::*"\nline_limit = "1MiB"\n'
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--memline")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestConfigWarning: memline: pyproject.toml ??tool.memline.limits?? #1 (match = "
            "'tests/test_numeric.py::?') matches none of the 1 collected tests; node ids are "
            "relative to the rootdir, the closest is 'test_numeric.py::test_add'"
        ]
    )


def test_fixture_rules_budget_fixtures_not_tests(tmp_path: Path) -> None:
    from pytest_memline._settings import unmatched_fixtures

    cfg = config(
        '[tool.memline]\ntest_limit = "1GiB"\n'
        '[[tool.memline.limits]]\nfixture = "frame"\nmatch = "tests/test_etl.py::*"\ntest_limit = "5MiB"\n'
        '[[tool.memline.limits]]\nfixture = "frame"\ntest_limit = "50MiB"\nline_limit = "8MiB"\n'
        '[[tool.memline.limits]]\nmatch = "*"\ntest_limit = "70MiB"\n'
    )
    s = resolve(options(), cfg, "pyproject.toml", tmp_path, tmp_path)
    # a test's own limits never come from a fixture's rule
    assert s.limits_for("tests/test_etl.py::test_load", None).test.value == 70 * MIB
    # the first rule naming the fixture whose match (if any) matches the test
    etl = s.fixture_limits("frame", "tests/test_etl.py::test_load")
    assert etl is not None and etl.test.value == 5 * MIB and etl.line is None
    assert etl.test.source == (
        "pyproject.toml [[tool.memline.limits]] #1 (fixture = 'frame', match = 'tests/test_etl.py::*')"
    )
    other = s.fixture_limits("frame", "tests/test_io.py::test_read")
    assert other is not None and (other.test.value, other.line.value) == (50 * MIB, 8 * MIB)
    assert s.fixture_limits("other", "tests/test_io.py::test_read") is None
    # the config's defaults are for tests: a fixture without a rule has no budget
    assert s.fixture_limits("frame", "x.py::t").test.source.endswith("#2 (fixture = 'frame')")
    assert unmatched_fixtures(s.fixture_rules, {"frames", "tmp_path"}) == [
        "memline: pyproject.toml [[tool.memline.limits]] #1 (fixture = 'frame', match = "
        "'tests/test_etl.py::*') names fixture 'frame', which none of the collected tests uses: "
        "its limits were not checked; did you mean 'frames'?"
    ]
    assert unmatched_fixtures(s.fixture_rules, {"frame"}) == []
