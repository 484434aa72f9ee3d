"""What a traced run prints: failures unchanged with the table appended, budget failures,
--memline-tables=failed|all|none and --memline-top=N."""

import re

import pytest
from memtables import parse_tables, report_of, summary_of

SUITE = """
import pytest


def test_passes():
    data = bytearray(34 * 2**20)


def test_fails_on_its_own():
    data = bytearray(33 * 2**20)
    assert 1 + 1 == 3, "own failure"


@pytest.mark.mem_limit("10MiB")
def test_fails_on_its_own_and_over_budget():
    data = bytearray(40 * 2**20)
    raise ValueError("own error")


@pytest.mark.mem_limit("10MiB")
def test_over_budget():
    data = bytearray(45 * 2**20)
"""

FAILED = {"test_fails_on_its_own", "test_fails_on_its_own_and_over_budget", "test_over_budget"}
MEMLINE_SECTION = re.compile(r"^-+ memline: memory table -+$")


def run(pytester: pytest.Pytester, *args: str, failed: set[str] = FAILED) -> str:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4 - len(failed), failed=len(failed))
    out = result.stdout.str()
    assert summary_of(out) == failed
    return out


def split_section(report: list[str]) -> tuple[list[str], list[str]]:
    """A failure report split at its `--- memline: memory table ---` section: (before, section)."""
    for i, line in enumerate(report):
        if MEMLINE_SECTION.match(line):
            return report[:i], report[i + 1 :]
    return report, []


def test_own_failures_unchanged_with_the_table_appended(pytester: pytest.Pytester) -> None:
    # the plugin is installed but off: no budgets, the tests fail on their own or pass
    plain = run(pytester, failed=FAILED - {"test_over_budget"})
    traced = run(pytester, "--memline")
    for test in ("test_fails_on_its_own", "test_fails_on_its_own_and_over_budget"):
        before, section = split_section(report_of(traced, test))
        assert before == report_of(plain, test), test  # the same report, line for line
        assert split_section(report_of(plain, test))[1] == []
        (table,) = parse_tables("\n".join(section))
        assert table.nodeid == f"test_suite.py::{test}"
    traced_lines = traced.splitlines()
    # the short summary names the test's own exception (cut to the terminal's width)
    own = "FAILED test_suite.py::test_fails_on_its_own - AssertionError: own failure"
    assert own in traced_lines
    assert any(
        line.startswith("FAILED test_suite.py::test_fails_on_its_own_and_over_budget - ValueError")
        for line in traced_lines
    )

    # the own failure's table: its lines, nothing marked
    _, section = split_section(report_of(traced, "test_fails_on_its_own"))
    (table,) = parse_tables("\n".join(section))
    assert table.marked == []
    assert table.row("assert 1 + 1 == 3, \"own failure\"").occurrences == 1
    assert table.row("data = bytearray(33 * 2**20)").increment == pytest.approx(33, abs=3)

    # failing on its own does not hide the budget it also broke: the section says so first
    _, section = split_section(report_of(traced, "test_fails_on_its_own_and_over_budget"))
    m = re.fullmatch(
        r"memline: test peak RSS growth of ([\d.]+) MiB is over the test limit of 10 MiB "
        r"\(@pytest\.mark\.mem_limit\)",
        section[0],
    )
    assert m and float(m[1]) == pytest.approx(40, abs=3), section[0]
    assert "memline: 4 tests traced, 2 over budget" in traced_lines


def test_tables_failed_is_the_default(pytester: pytest.Pytester) -> None:
    out = run(pytester, "--memline")
    assert "memline: tables=failed, top=10; default limits: none" in out
    assert {t.nodeid.split("::")[1] for t in parse_tables(out)} == FAILED
    assert "memline: memory tables" not in out
    # the top lines: the largest increments of the session, largest first, at most 10
    top = top_lines(out)
    assert 4 <= len(top) <= 10
    assert top[:2] == [
        ("test_suite.py::test_over_budget", "data = bytearray(45 * 2**20)"),
        ("test_suite.py::test_fails_on_its_own_and_over_budget", "data = bytearray(40 * 2**20)"),
    ]


def test_tables_all_and_top(pytester: pytest.Pytester) -> None:
    out = run(pytester, "--memline", "--memline-tables=all", "--memline-top=2")
    assert "memline: tables=all, top=2; default limits: none" in out
    summary = out[out.index("memline: memory tables") :]
    assert [t.nodeid.split("::")[1] for t in parse_tables(summary)] == [
        "test_passes",
        "test_fails_on_its_own",
        "test_fails_on_its_own_and_over_budget",
        "test_over_budget",
    ]
    (passed,) = [t for t in parse_tables(summary) if t.nodeid.endswith("::test_passes")]
    assert passed.row("data = bytearray(34 * 2**20)").increment == pytest.approx(34, abs=3)
    assert "memline: top 2 lines by increment" in out
    assert top_lines(out) == [
        ("test_suite.py::test_over_budget", "data = bytearray(45 * 2**20)"),
        ("test_suite.py::test_fails_on_its_own_and_over_budget", "data = bytearray(40 * 2**20)"),
    ]


def test_tables_none_and_top_zero(pytester: pytest.Pytester) -> None:
    out = run(pytester, "--memline", "--memline-tables=none", "--memline-top=0")
    assert "memline: tables=none, top=0; default limits: none" in out
    assert parse_tables(out) == []
    # no table anywhere; a test that failed on its own still gets the one-line budget message
    _, section = split_section(report_of(out, "test_fails_on_its_own_and_over_budget"))
    assert section and all(line.startswith("memline: ") for line in section if line), section
    assert split_section(report_of(out, "test_fails_on_its_own"))[1] == []
    assert "memline: top" not in out
    # the budget failure still says what went over, in one line
    report = report_of(out, "test_over_budget")
    m = re.fullmatch(
        r"memline: test peak RSS growth of ([\d.]+) MiB is over the test limit of 10 MiB "
        r"\(@pytest\.mark\.mem_limit\)",
        report[0],
    )
    assert m and float(m[1]) == pytest.approx(45, abs=3), report
    assert "memline: 4 tests traced, 2 over budget" in out


TOP_LINE = re.compile(r"^\s+[\d.]+ MiB  (?P<nodeid>\S+):(?P<line>\d+)  (?P<contents>.*)$")


def top_lines(out: str) -> list[tuple[str, str]]:
    """(node id, line contents) of the top-lines summary, in order; checks it is sorted."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.search(r" memline: top \d+ lines ", ln))
    entries, sizes = [], []
    for line in lines[start + 1 :]:
        m = TOP_LINE.match(line)
        if not m:
            break
        entries.append((m["nodeid"], m["contents"]))
        sizes.append(float(line.split()[0]))
    assert sizes == sorted(sizes, reverse=True)
    heading = re.search(r"top (\d+) lines", lines[start])
    assert heading is not None and int(heading[1]) == len(entries)
    return entries
