"""Fixtures measured line by line: ``--memline-fixtures`` gives each fixture's setup a memory
table, ``[[tool.memline.limits]]`` rules with ``fixture = "name"`` budget a fixture's setup,
and a fixture of a wider scope is measured once, for the test that set it up.

Real sessions with real memory: fixtures that build bytearrays of known size and lists of
small objects. Sizes are checked within 2 MiB (RSS moves by a few pages around pytest's own
work), a bytearray's own line within 1 MiB.
"""

from __future__ import annotations

import json

import pytest

from memtables import lineno, parse_tables, report_of, summary_of

MIB = 2**20

SUITE = """
import pytest


@pytest.fixture
def frame():
    rows = [bytearray(1000) for _ in range(20_000)]
    block = bytearray(50 * 2**20)
    yield rows, block
    del rows, block


@pytest.fixture(scope="module")
def shared():
    return bytearray(30 * 2**20)


@pytest.fixture
def small(tmp_path):
    return tmp_path / "x"


def test_uses_frame(frame, shared, small):
    data = bytearray(5 * 2**20)
    assert len(data) and small.name == "x"


def test_frame_again(frame, shared):
    assert len(frame[1]) == 50 * 2**20


def test_nothing(shared):
    pass
"""


def fixture_tables(output: str) -> dict[str, list[object]]:
    """The fixture tables in `output` by "test > fixture" (the title's part before the scope)."""
    found: dict[str, list[object]] = {}
    for t in parse_tables(output):
        if " > fixture " in t.nodeid:
            key = t.nodeid.split("::")[-1].split(" (")[0]
            found.setdefault(key, []).append(t)
    return found


def test_each_fixture_setup_gets_a_table_of_its_own_lines(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out_json = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-fixtures", "--memline-tables=all", "-p", "no:xdist",
        "-p", "no:randomly", f"--memline-json={out_json}",
    )
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    # the tests' tables (the summary at the end shows each fixture's largest setup again)
    tables = fixture_tables(out.split("memline: top 2 fixtures by peak growth at setup")[0])
    assert len(fixture_tables(out)["test_uses_frame > fixture frame"]) == 2

    # the function-scoped fixture: a table for each test that set it up, its own lines measured
    first = tables["test_uses_frame > fixture frame"][0]
    assert first.row("block = bytearray(50 * 2**20)").increment == pytest.approx(50, abs=1)
    # 20,000 objects of about 1 KiB: about 20 MiB on the list's line
    assert first.row("rows = [bytearray(1000) for _ in range(20_000)]").increment == pytest.approx(20, abs=3)
    assert first.peak_growth == pytest.approx(70, abs=3)
    # its teardown (after the yield) is not part of its setup
    assert first.row("del rows, block").increment is None
    assert len(tables["test_frame_again > fixture frame"]) == 1

    # the module-scoped fixture: set up once, for the first test, and said so
    (shared,) = tables["test_uses_frame > fixture shared"]
    assert shared.row("return bytearray(30 * 2**20)").increment == pytest.approx(30, abs=1)
    assert any("module-scoped fixture: set up once" in n for n in shared.notes)
    assert "test_frame_again > fixture shared" not in tables
    assert "test_nothing > fixture shared" not in tables

    # a fixture that allocates nothing has no table, and pytest's own (tmp_path) are not traced
    assert not [k for k in tables if k.endswith("fixture small") or k.endswith("fixture tmp_path")]

    # the test's own table is its body only
    (body,) = [t for t in parse_tables(out) if t.nodeid.endswith("::test_uses_frame")][:1]
    assert body.row("data = bytearray(5 * 2**20)").increment == pytest.approx(5, abs=1)
    assert body.peak_growth == pytest.approx(5, abs=1)
    assert body.fixtures == pytest.approx(100, abs=4)  # 70 + 30 MiB set up for it

    # the summary: each fixture by its largest setup
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "memline: top 2 fixtures by peak growth at setup" in line)
    assert "frame (function scope), largest of 2 setups, for test_suite.py::" in lines[start + 1]
    assert "shared (module scope), largest of 1 setup, for test_suite.py::test_uses_frame" in lines[start + 2]

    doc = json.loads(out_json.read_text())
    by_name = {f["fixture"]: f for f in doc["fixtures"]}
    assert by_name["frame"]["setups"] == 2
    assert by_name["frame"]["peak_growth"] == pytest.approx(70 * MIB, abs=3 * MIB)
    assert by_name["shared"]["scope"] == "module"
    traced = doc["tests"]["test_suite.py::test_uses_frame"]["table"]["around"]["fixtures"]
    assert [f["fixture"] for f in traced] == ["shared", "frame"]  # in setup order: wider scopes first
    assert traced[1]["table"]["role"] == "fixture"
    assert doc["tests"]["test_suite.py::test_nothing"]["table"]["around"]["fixtures"] == []


def test_without_the_option_no_fixture_is_traced(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--memline", "--memline-tables=all", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    assert fixture_tables(result.stdout.str()) == {}
    assert "fixtures by peak growth" not in result.stdout.str()


RULES = """
[tool.memline]

[[tool.memline.limits]]
fixture = "frame"
test_limit = "{frame_limit}"

[[tool.memline.limits]]
fixture = "shared"
match = "test_suite.py::test_uses_*"
line_limit = "{line_limit}"
"""


def test_a_fixture_rule_fails_the_test_that_set_it_up_and_shows_its_table(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".toml", pyproject=RULES.format(frame_limit="40MiB", line_limit="10MiB"))
    result = pytester.runpytest_subprocess("--memline", "-p", "no:xdist", "-p", "no:randomly")
    # frame (70 MiB) is over its 40 MiB in both tests that set it up; shared's 30 MiB line is
    # over 10 MiB where it was set up (test_uses_frame, which the rule's match names)
    result.assert_outcomes(failed=2, passed=1)
    assert summary_of(result.stdout.str()) == {"test_uses_frame", "test_frame_again"}
    report = report_of(result.stdout.str(), "test_uses_frame")
    text = "\n".join(report)
    assert "memline: fixture frame peaked RSS" in text
    assert "over the fixture's limit of 40 MiB (pyproject.toml [[tool.memline.limits]] #1 (fixture = 'frame'))" in text
    line = lineno(pytester.path / "test_suite.py", "return bytearray(30 * 2**20)")
    assert (
        f"memline: fixture shared line {line} `return bytearray(30 * 2**20)` grew RSS by" in text
        and "over the line limit of 10 MiB (pyproject.toml [[tool.memline.limits]] #2 (fixture = 'shared', match = 'test_suite.py::test_uses_*'))" in text
    )
    # the failure section has the fixtures' tables, the line over its limit marked
    tables = fixture_tables(text)
    (shared,) = tables["test_uses_frame > fixture shared"]
    assert shared.marked == ["return bytearray(30 * 2**20)"]
    # without --memline-fixtures only the fixtures that rules name are traced
    assert set(tables) == {"test_uses_frame > fixture frame", "test_uses_frame > fixture shared"}


def test_a_fixture_within_its_rule_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".toml", pyproject=RULES.format(frame_limit="100MiB", line_limit="40MiB"))
    result = pytester.runpytest_subprocess("--memline", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    assert "memline: 3 tests traced, 0 over budget" in result.stdout.str()


def test_a_fixture_rule_naming_no_fixture_warns_with_the_closest_name(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(
        ".toml",
        pyproject='[tool.memline]\n[[tool.memline.limits]]\nfixture = "fram"\ntest_limit = "1MiB"\n',
    )
    for args in (["-p", "no:xdist"], ["-n", "2"]):  # under xdist the workers know the fixtures
        result = pytester.runpytest_subprocess("--memline", *args)
        result.assert_outcomes(passed=3)
        assert (
            "PytestConfigWarning: memline: pyproject.toml [[tool.memline.limits]] #1 "
            "(fixture = 'fram') names fixture 'fram', which none of the collected tests uses: "
            "its limits were not checked; did you mean 'frame'?"
        ) in result.stdout.str(), args


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('fixture = "big frame"\ntest_limit = "1MiB"',
         "[[tool.memline.limits]] #1 fixture = \"big frame\": expected a fixture's name (a Python identifier)"),
        ('fixture = "frame"\ntolerance = "5%"',
         "[[tool.memline.limits]] #1: \"tolerance\" does not apply to a fixture; a rule with "
         "\"fixture\" takes fixture, match, test_limit, line_limit"),
        ('test_limit = "1MiB"', "missing key \"match\" (a glob over test node ids, e.g. "
         "\"tests/test_etl.py::*\") or \"fixture\" (a fixture's name)"),
        ('fixture = "frame"\ntest_limit = "-1MiB"', "test_limit = \"-1MiB\""),
    ],
    ids=["not-a-name", "test-only-key", "neither", "negative"],
)
def test_bad_fixture_rules_are_usage_errors(pytester: pytest.Pytester, rule: str, expected: str) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".toml", pyproject=f"[tool.memline]\n[[tool.memline.limits]]\n{rule}\n")
    result = pytester.runpytest_subprocess("--memline", "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()


def test_fixture_tables_come_from_xdist_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out_json = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-fixtures", "-n", "2", f"--memline-json={out_json}"
    )
    result.assert_outcomes(passed=3)
    doc = json.loads(out_json.read_text())
    by_name = {f["fixture"]: f for f in doc["fixtures"]}
    assert by_name["frame"]["setups"] == 2
    assert by_name["frame"]["peak_growth"] == pytest.approx(70 * MIB, abs=3 * MIB)
    # one module-scoped setup per worker that ran a test needing it
    assert 1 <= by_name["shared"]["setups"] <= 2
    assert by_name["shared"]["peak_growth"] == pytest.approx(30 * MIB, abs=2 * MIB)
    assert "frame (function scope), largest of 2 setups" in result.stdout.str()


def test_the_heap_metric_measures_fixtures_exactly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-fixtures", "--memline-metric=heap", "--memline-tables=all",
        "-p", "no:xdist", "-p", "no:randomly",
    )
    result.assert_outcomes(passed=3)
    tables = fixture_tables(result.stdout.str())
    shared = tables["test_uses_frame > fixture shared"][0]
    assert shared.row("return bytearray(30 * 2**20)").increment == pytest.approx(30, abs=0.1)
    frame = tables["test_uses_frame > fixture frame"][0]
    assert frame.row("block = bytearray(50 * 2**20)").increment == pytest.approx(50, abs=0.1)
