"""Comparing a memory table with its budgets."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_memline._settings import Limit, TestLimits
from pytest_memline.table import MemoryTable, mib


def _size(n: int) -> str:
    from pytest_memline import _memline

    return _memline.format_size(n)


@dataclass(frozen=True)
class Violation:
    """One value over its limit. ``lineno`` is None for the test's own peak growth."""

    lineno: int | None
    what: str  # "peak growth", "increment" or "peak"
    value: int
    limit: Limit

    @property
    def excess(self) -> int:
        return self.value - self.limit.value

    def message(self, table: MemoryTable | None = None) -> str:
        limit = f"{_size(self.limit.value)} ({self.limit.source})"
        if self.lineno is None:
            return f"memline: test peak RSS growth of {mib(self.value)} is over the test limit of {limit}"
        where = f"line {self.lineno}"
        row = table.row(self.lineno) if table is not None else None
        if row is not None and row.contents.strip():
            where += f" `{row.contents.strip()[:60]}`"
        if self.what == "increment":
            return f"memline: {where} grew RSS by {mib(self.value)}, over the line limit of {limit}"
        return (
            f"memline: {where} peaked {mib(self.value)} above its start, over the line limit of "
            f"{limit}"
        )


def check(table: MemoryTable, limits: TestLimits) -> list[Violation]:
    """Every value over its limit, the worst first (the test's own growth before its lines)."""
    found: list[Violation] = []
    if limits.test is not None and table.peak_growth > limits.test.value:
        found.append(Violation(None, "peak growth", table.peak_growth, limits.test))
    if limits.line is not None:
        line_found = []
        for row in table.lines:
            assert row.increment is not None and row.peak is not None
            # Report the larger of the two per line: the peak includes the increment's growth.
            if row.peak > limits.line.value and row.peak > row.increment:
                line_found.append(Violation(row.lineno, "peak", row.peak, limits.line))
            elif row.increment > limits.line.value:
                line_found.append(Violation(row.lineno, "increment", row.increment, limits.line))
        line_found.sort(key=lambda v: v.excess, reverse=True)
        found.extend(line_found)
    return found


def failure_text(
    table: MemoryTable, violations: list[Violation], *, with_table: bool = True
) -> str:
    """One line (what, how much, which limit, where from), the rest, then the marked table
    (unless ``with_table`` is false: ``--memline-tables=none``)."""
    first = violations[0].message(table)
    if len(violations) > 1:
        first += f" (and {len(violations) - 1} more over budget)"
    rest = [v.message(table) for v in violations[1:]]
    if not with_table:
        return "\n".join([first, *rest])
    marked = table.with_marks(v.lineno for v in violations if v.lineno is not None)
    return "\n".join([first, *rest, "", marked.render()])
