"""Comparing a memory table with its budgets."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_memline._metrics import metric
from pytest_memline._settings import Limit, TestLimits
from pytest_memline._units import format_size as _size
from pytest_memline._units import mib, printable
from pytest_memline.table import MemoryTable


@dataclass(frozen=True)
class Violation:
    """One value over its limit. ``lineno`` is None for the test's own peak growth."""

    lineno: int | None
    what: str  # "peak growth", "increment", "peak" or "leak" (the leak check's repetitions)
    value: int
    limit: Limit
    #: "leak": what each repetition of the body retained
    repetitions: tuple[int, ...] = ()

    @property
    def excess(self) -> int:
        return self.value - self.limit.value

    def message(self, table: MemoryTable | None = None, fixture: str | None = None) -> str:
        """The failure's text; ``fixture``: the table is that fixture's setup."""
        limit = f"{_size(self.limit.value)} ({self.limit.source})"
        desc = metric(table.metric if table is not None else "rss")
        what = desc.noun
        if self.what == "leak":
            from pytest_memline._around import leak_message

            return leak_message(self.value, self.limit, desc.name, self.repetitions)
        if self.lineno is None:
            if fixture is not None:
                return (
                    f"memline: fixture {fixture} peaked {desc.short} {mib(self.value)} above its "
                    f"start at setup, over the fixture's limit of {limit}"
                )
            return (
                f"memline: test peak {desc.short} growth of {mib(self.value)} is over the test limit "
                f"of {limit}"
            )
        where = f"line {self.lineno}" if fixture is None else f"fixture {fixture} line {self.lineno}"
        row = table.row(self.lineno) if table is not None else None
        if row is not None and row.contents.strip():
            where += f" `{printable(row.contents.strip()[:60])}`"
        if self.what == "increment":
            return f"memline: {where} grew {what} by {mib(self.value)}, over the line limit of {limit}"
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
            # The increment when it is over: it is what the line kept. A line that keeps its
            # memory peaks a few pages above its increment (malloc's and the kernel's own
            # overhead), so preferring the larger of the two made the message flip between
            # runs. The peak only when the increment is within the limit: then the line's
            # transient peak (the table's Peak column) is what broke it.
            if row.increment > limits.line.value:
                line_found.append(Violation(row.lineno, "increment", row.increment, limits.line))
            elif row.peak > limits.line.value:
                line_found.append(Violation(row.lineno, "peak", row.peak, limits.line))
        line_found.sort(key=lambda v: (-v.excess, v.lineno))
        found.extend(line_found)
    return found
