"""Budgets: the mem_limit marker, [tool.memline] defaults, [[tool.memline.limits]] rules, their
precedence, and the failure report (one line, then the table with the offending rows marked).

Margins: a budget test allocates a known amount a few MiB under or over its limit. Measured
growth stays within a fraction of a MiB of the allocation (see test_measure.py), so 1 MiB under
a 5 MiB line limit and 4 MiB around a 60 MiB test limit cannot flip. Blocks over 32 MiB are
always fresh mmaps; smaller ones may reuse freed heap, which can only show less growth, not more.
"""

import re

import pytest
from memtables import lineno, parse_tables, report_of, summary_of

MIB = r"(?P<mib>[\d.]+) MiB"


def one_line(line: str, pattern: str) -> float:
    """Asserts `line` is exactly `pattern` (a regex with a `mib` group); returns that amount."""
    m = re.fullmatch(pattern, line)
    assert m, f"\n{line!r}\ndoes not match\n{pattern!r}"
    return float(m["mib"])


MARKED = """
import pytest


def churn(mib):
    # allocates, touches and frees `mib` MiB, then returns
    return len(bytearray(mib * 2**20))


@pytest.mark.mem_limit("60MiB")
def test_test_limit_under():
    data = bytearray(56 * 2**20)
    del data


@pytest.mark.mem_limit("60MiB")
def test_test_limit_over():
    data = bytearray(64 * 2**20)
    del data


@pytest.mark.mem_limit("60MiB", line="5MiB")
def test_both_under():
    a = bytearray(4 * 2**20)
    b = bytearray(4 * 2**20)
    c = bytearray(4 * 2**20)


@pytest.mark.mem_limit("60MiB", line="5MiB")
def test_both_line_over():
    a = bytearray(4 * 2**20)
    b = bytearray(40 * 2**20)


@pytest.mark.mem_limit("60MiB", line="5MiB")
def test_both_over():
    a = bytearray(4 * 2**20)
    b = bytearray(64 * 2**20)


@pytest.mark.mem_limit(line="5MiB")
def test_line_only_under():
    a = bytearray(4 * 2**20)
    b = bytearray(4 * 2**20)


@pytest.mark.mem_limit(line="5MiB")
def test_line_only_peak_over():
    a = bytearray(4 * 2**20)
    n = churn(40)
"""


def test_marker_budgets(pytester: pytest.Pytester) -> None:
    path = pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest_subprocess("--memline")
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=4)
    assert summary_of(out) == {
        "test_test_limit_over",
        "test_both_line_over",
        "test_both_over",
        "test_line_only_peak_over",
    }
    assert "memline: 7 tests traced, 4 over budget" in out

    # mem_limit("60MiB"): the test's peak growth, 64 MiB, is over 60 MiB
    report = report_of(out, "test_test_limit_over")
    mib = one_line(
        report[0],
        rf"memline: test peak RSS growth of {MIB} is over the test limit of 60 MiB "
        r"\(@pytest\.mark\.mem_limit\)",
    )
    assert mib == pytest.approx(64, abs=3)
    (table,) = parse_tables("\n".join(report))
    assert table.marked == []  # the test as a whole went over, no single line

    # mem_limit("60MiB", line="5MiB"): a 40 MiB line is over the line limit; the test is not
    report = report_of(out, "test_both_line_over")
    n = lineno(path, "b = bytearray(40 * 2**20)")
    mib = one_line(
        report[0],
        rf"memline: line {n} `b = bytearray\(40 \* 2\*\*20\)` grew RSS by {MIB}, over the "
        r"line limit of 5 MiB \(@pytest\.mark\.mem_limit\)",
    )
    assert mib == pytest.approx(40, abs=3)
    (table,) = parse_tables("\n".join(report))
    assert table.marked == ["b = bytearray(40 * 2**20)"]
    assert table.row("b = bytearray(40 * 2**20)").lineno == n

    # both limits broken: one line for the test's growth (first) and one for the line
    report = report_of(out, "test_both_over")
    n = lineno(path, "b = bytearray(64 * 2**20)")
    one_line(
        report[0],
        rf"memline: test peak RSS growth of {MIB} is over the test limit of 60 MiB "
        r"\(@pytest\.mark\.mem_limit\) \(and 1 more\)",
    )
    one_line(
        report[1],
        rf"memline: line {n} `b = bytearray\(64 \* 2\*\*20\)` grew RSS by {MIB}, over the "
        r"line limit of 5 MiB \(@pytest\.mark\.mem_limit\)",
    )
    (table,) = parse_tables("\n".join(report))
    assert table.marked == ["b = bytearray(64 * 2**20)"]

    # mem_limit(line="5MiB"): the line's callee peaks at 40 MiB and frees it again
    report = report_of(out, "test_line_only_peak_over")
    n = lineno(path, "n = churn(40)")
    mib = one_line(
        report[0],
        rf"memline: line {n} `n = churn\(40\)` peaked {MIB} above its start, over the line "
        r"limit of 5 MiB \(@pytest\.mark\.mem_limit\)",
    )
    assert mib == pytest.approx(40, abs=3)
    (table,) = parse_tables("\n".join(report))
    assert table.marked == ["n = churn(40)"]
    assert table.row("n = churn(40)").increment == pytest.approx(0, abs=3)


PYPROJECT = """
[tool.memline]
test_limit = "100MiB"
line_limit = "50MiB"

[[tool.memline.limits]]
match = "*::test_big_*"
line_limit = "90MiB"

[[tool.memline.limits]]
match = "*::test_tight_*"
test_limit = "20MiB"
"""

CONFIGURED = """
import pytest


def test_default_under():
    a = bytearray(40 * 2**20)
    b = bytearray(40 * 2**20)


def test_default_line_over():
    a = bytearray(60 * 2**20)


def test_default_test_over():
    a = bytearray(40 * 2**20)
    b = bytearray(40 * 2**20)
    c = bytearray(40 * 2**20)


def test_big_rule_under():
    a = bytearray(80 * 2**20)


def test_big_rule_over():
    a = bytearray(95 * 2**20)


def test_tight_rule_over():
    a = bytearray(30 * 2**20)


@pytest.mark.mem_limit(line="70MiB")
def test_big_marker_beats_rule():
    a = bytearray(85 * 2**20)


@pytest.mark.mem_limit(line="70MiB")
def test_marker_beats_default():
    a = bytearray(62 * 2**20)


@pytest.mark.mem_limit(line="200MiB")
def test_marker_line_only_keeps_default_test_limit():
    a = bytearray(40 * 2**20)
    b = bytearray(40 * 2**20)
    c = bytearray(40 * 2**20)
"""


def test_pyproject_budgets_and_precedence(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    path = pytester.makepyfile(test_cfg=CONFIGURED)
    result = pytester.runpytest_subprocess("--memline")
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "memline: tables=failed, top=10; default limits: test 100 MiB, line 50 MiB, "
            "2 [[tool.memline.limits]] rules from pyproject.toml"
        ]
    )
    assert summary_of(out) == {
        "test_default_line_over",
        "test_default_test_over",
        "test_big_rule_over",
        "test_tight_rule_over",
        "test_big_marker_beats_rule",
        "test_marker_line_only_keeps_default_test_limit",
    }
    result.assert_outcomes(passed=3, failed=6)

    def first(test: str) -> str:
        return report_of(out, test)[0]

    n = lineno(path, "a = bytearray(60 * 2**20)")
    mib = one_line(
        first("test_default_line_over"),
        rf"memline: line {n} `a = bytearray\(60 \* 2\*\*20\)` grew RSS by {MIB}, over the line "
        r"limit of 50 MiB \(pyproject\.toml \[tool\.memline\] line_limit\)",
    )
    assert mib == pytest.approx(60, abs=3)
    mib = one_line(
        first("test_default_test_over"),
        rf"memline: test peak RSS growth of {MIB} is over the test limit of 100 MiB "
        r"\(pyproject\.toml \[tool\.memline\] test_limit\)",
    )
    assert mib == pytest.approx(120, abs=3)
    # the rule's 90 MiB line limit beats the default 50 MiB: 80 MiB passed, 95 MiB did not
    n = lineno(path, "a = bytearray(95 * 2**20)")
    one_line(
        first("test_big_rule_over"),
        rf"memline: line {n} `a = bytearray\(95 \* 2\*\*20\)` grew RSS by {MIB}, over the line "
        r"limit of 90 MiB \(pyproject\.toml \[\[tool\.memline\.limits\]\] #1 "
        r"\(match = '\*::test_big_\*'\)\)",
    )
    one_line(
        first("test_tight_rule_over"),
        rf"memline: test peak RSS growth of {MIB} is over the test limit of 20 MiB "
        r"\(pyproject\.toml \[\[tool\.memline\.limits\]\] #2 \(match = '\*::test_tight_\*'\)\)",
    )
    # the marker beats the rule (70 < 90 MiB) and the default (70 > 50 MiB) ...
    report = report_of(out, "test_big_marker_beats_rule")
    n = lineno(path, "a = bytearray(85 * 2**20)")
    one_line(
        report[0],
        rf"memline: line {n} `a = bytearray\(85 \* 2\*\*20\)` grew RSS by {MIB}, over the line "
        r"limit of 70 MiB \(@pytest\.mark\.mem_limit\)",
    )
    assert parse_tables("\n".join(report))[0].marked == ["a = bytearray(85 * 2**20)"]
    # ... value by value: a marker that sets only the line limit keeps the default test limit
    one_line(
        first("test_marker_line_only_keeps_default_test_limit"),
        rf"memline: test peak RSS growth of {MIB} is over the test limit of 100 MiB "
        r"\(pyproject\.toml \[tool\.memline\] test_limit\)",
    )


def test_line_message_prefers_what_the_line_kept() -> None:
    """The rule that picks a line's message, on hand-made rows (no measurement involved): a line
    that keeps its memory is reported by its Increment even when its Peak sits a few pages above
    it (CI once saw `bytearray(4 * 2**20)` at increment 4.0 and peak 4.1 MiB, and the message
    flipped to "peaked"); the Peak only when the Increment is within the limit."""
    from pytest_memline._budget import check
    from pytest_memline._settings import Limit, TestLimits
    from pytest_memline.table import LineRow, MemoryTable

    mi = 2**20
    rows = (
        LineRow(1, "def test():"),
        LineRow(2, "a = bytearray(4 * 2**20)", 70 * mi, 4 * mi, 4 * mi + 100 * 1024, 1),
        LineRow(3, "n = churn(40)", 70 * mi, 0, 40 * mi, 1),
        LineRow(4, "b = bytearray(2 * 2**20)", 72 * mi, 2 * mi, 2 * mi + 4096, 1),
    )
    table = MemoryTable("t", "test", "t.py", rows, 66 * mi, 72 * mi, 44 * mi, True)
    found = check(table, TestLimits(line=Limit(3 * mi, "@pytest.mark.mem_limit")))
    assert [(v.lineno, v.what) for v in found] == [(3, "peak"), (2, "increment")]
    assert found[1].message(table).startswith(
        "memline: line 2 `a = bytearray(4 * 2**20)` grew RSS by 4.0 MiB, over the line limit of 3"
    )
