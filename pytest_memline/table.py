"""The memory table: per source line of a function, how resident memory moved while it ran.

Built from a native trace result and the function's source; rendered in memory_profiler's
layout with one more column (Peak). Sizes are stored in bytes and shown in MiB.
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LineRow", "MemoryTable", "source_of"]

from pytest_memline._memline import LineRow, table_rows
from pytest_memline._metrics import metric as _metric
from pytest_memline._units import MIB, mib, printable, signed_mib  # noqa: F401  (re-exported)

_TEMPLATE = "{0:>6} {1:>12} {2:>12} {3:>12}  {4:>11}   {5}"
HEADER = _TEMPLATE.format("Line #", "Mem usage", "Increment", "Peak", "Occurrences", "Line Contents")
#: Said under the header of a table with a line that ran more than once (a loop's body), where
#: a large Increment beside a small Peak would otherwise look wrong.
PER_RUN_NOTE = (
    "a line that ran more than once (Occurrences > 1): Increment is the sum over its runs, "
    "Peak the highest rise within one run"
)

#: Contents longer than this are cut when rendered (the data keeps them whole).
MAX_CONTENTS = 200


def render_row(row: LineRow, marked: bool = False, precision: int = 1) -> str:
    """One row as tables and diffs show it (memory_profiler's layout plus Peak). Tabs become
    four spaces and control characters escapes (a source line cannot drive the terminal);
    contents longer than ``MAX_CONTENTS`` characters are cut with an ellipsis; ``marked`` (over
    a budget, regressed): the row starts with ``>``; ``precision``: decimals of the sizes."""
    contents = printable(row.contents)
    if len(contents) > MAX_CONTENTS:
        contents = contents[: MAX_CONTENTS - 1] + "\u2026"
    if row.ran:
        p = precision
        numbers = (mib(row.mem_usage or 0, p), mib(row.increment or 0, p), mib(row.peak or 0, p), str(row.occurrences))
    else:
        numbers = ("", "", "", "")
    text = _TEMPLATE.format(row.lineno, *numbers, contents).rstrip()
    return ">" + text[1:] if marked else text


@dataclass(frozen=True)
class MemoryTable:
    """The memory table of one traced function.

    ``peak_growth``: highest RSS during the trace minus RSS at its start (bytes).
    ``notes``: what the reader should know (peak not exact, source missing, ...).
    """

    title: str
    function: str
    filename: str
    rows: tuple[LineRow, ...]
    start_rss: int
    end_rss: int
    peak_growth: int
    exact_peak: bool
    metric: str = "rss"
    notes: tuple[str, ...] = ()
    marked: frozenset[int] = field(default_factory=frozenset)
    #: "test" (or a profiled function), "included": a function of an ``include``d module that
    #: the test called (its lines are also charged to the test's calling line), or "fixture":
    #: a fixture's setup (``--memline-fixtures``).
    role: str = "test"
    #: decimals of the sizes when rendered (memory_profiler's ``precision``; not in to_dict)
    precision: int = 1
    #: a test's memory around its body (``_around.Around``): fixtures, teardown, retained
    around: Any = None

    @property
    def lines(self) -> tuple[LineRow, ...]:
        """Rows of the lines that ran."""
        return tuple(r for r in self.rows if r.ran)

    @property
    def has_source(self) -> bool:
        return bool(self.rows)

    def row(self, lineno: int) -> LineRow | None:
        for r in self.rows:
            if r.lineno == lineno:
                return r
        return None

    def with_around(self, around: Any) -> MemoryTable:
        return self if around is None or around is self.around else dataclasses.replace(self, around=around)

    def with_extras(self, included: Iterable[MemoryTable] = ()) -> list[MemoryTable]:
        """This table, the ``included`` functions' tables, then the tables of the fixtures
        traced at the test's setup: what a test's section shows."""
        fixtures = [f.table for f in self.around.fixtures] if self.around is not None else []
        return [self, *included, *fixtures]

    def with_marks(self, marked: Iterable[int]) -> MemoryTable:
        marks = frozenset(marked)
        return self if marks == self.marked else dataclasses.replace(self, marked=marks)

    def render(self, *, header: bool = True, precision: int | None = None) -> str:
        """The table as text, memory_profiler's layout plus a Peak column.

        Rows of lines over a budget or regressed (``marked``) start with ``>``. ``precision``:
        decimals of the sizes (default: the table's own, 1 unless ``profile(precision=...)``).
        """
        p = self.precision if precision is None else precision
        out: list[str] = []
        if header:
            out.append(f"{self.title}  ({self.function} in {_display_path(self.filename)})")
            if self.role == "included":
                summary = (
                    f"{self.metric_label()}: included function called by the test; its lines "
                    f"are also charged to the test's calling line; highest in-line peak "
                    f"{signed_mib(self.peak_growth, p)}"
                )
            else:
                summary = (
                    f"{self.metric_label()}: start {mib(self.start_rss, p)}, "
                    f"peak growth {signed_mib(self.peak_growth, p)}, "
                    f"end {signed_mib(self.end_rss - self.start_rss, p)}"
                )
            out.append(summary)
            if self.around is not None:
                out.extend(self.around.header_lines(p))
            out.extend(f"note: {n}" for n in self.notes)
            if any(r.occurrences > 1 for r in self.rows):
                out.append(f"note: {PER_RUN_NOTE}")
            out.append("")
        if not self.rows:
            return "\n".join(out).rstrip("\n")
        out.append(HEADER)
        out.append("=" * len(HEADER))
        out.extend(render_row(r, r.lineno in self.marked, p) for r in self.rows)
        return "\n".join(out)

    def metric_label(self) -> str:
        m = _metric(self.metric)
        return m.exact_label if self.exact_peak else m.sampled_label

    def to_dict(self) -> dict[str, Any]:
        d = {
            "title": self.title,
            "function": self.function,
            "filename": self.filename,
            "metric": self.metric,
            "start_rss": self.start_rss,
            "end_rss": self.end_rss,
            "peak_growth": self.peak_growth,
            "exact_peak": self.exact_peak,
            "notes": list(self.notes),
            "role": self.role,
            "lines": [r.to_dict() for r in self.rows],
        }
        if self.around is not None:
            d["around"] = self.around.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemoryTable:
        return cls(
            title=str(d["title"]),
            function=str(d["function"]),
            filename=str(d["filename"]),
            rows=tuple(LineRow.from_dict(r) for r in d["lines"]),
            start_rss=int(d["start_rss"]),
            end_rss=int(d["end_rss"]),
            peak_growth=int(d["peak_growth"]),
            exact_peak=bool(d["exact_peak"]),
            metric=str(d.get("metric", "rss")),
            notes=tuple(str(n) for n in d.get("notes", ())),
            role=str(d.get("role", "test")),
            around=_around_of(d.get("around")),
        )


def _around_of(d: Mapping[str, Any] | None) -> Any:
    if d is None:
        return None
    from pytest_memline._around import Around

    return Around.from_dict(d)


def _display_path(filename: str) -> str:
    """A path relative to the working directory when it is below it."""
    if not os.path.isabs(filename):
        return filename
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def _last_line(code: types.CodeType) -> int:
    last = code.co_firstlineno
    for _, _, line in code.co_lines():
        if line is not None and line > last:
            last = line
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def source_of(
    code: types.CodeType, module_globals: dict[str, Any] | None = None
) -> tuple[list[str], str | None]:
    """The source lines of ``code`` (first line to last), or ``([], why not)``.

    ``module_globals``: the function's globals, so that a module imported from a zip file (or
    by any loader with ``get_source``) has its source found through its loader."""
    filename = code.co_filename
    try:
        lines = linecache.getlines(filename, module_globals)
    except Exception as exc:  # a broken loader: say so, never fail the test for it
        return [], f"no per-line view: reading {filename} failed ({exc})"
    if not lines:
        return [], f"no per-line view: the source of {filename} is not available"
    global _last_source
    cached = _last_source
    if cached is not None and cached[0] is code and cached[1] is lines:
        # the tests of one parametrized function run one after the other: same code, same
        # cached file (linecache hands out a new list when the file is read again)
        return cached[2], None
    first = code.co_firstlineno
    last = _last_line(code)
    if first < 1 or last > len(lines):
        return [], f"no per-line view: {filename} does not match the running code"
    found = [line.rstrip("\r\n") for line in lines[first - 1 : last]]
    _last_source = (code, lines, found)
    return found, None


#: the last ``source_of`` answer: (code, linecache's list of the file's lines, the source)
_last_source: tuple[types.CodeType, list[str], list[str]] | None = None


def build_table(
    *,
    title: str,
    code: types.CodeType | None,
    lines: Sequence[LineRow],
    start_rss: int,
    end_rss: int,
    peak_growth: int,
    exact_peak: bool,
    metric: str = "rss",
    notes: Sequence[str] = (),
    no_code_reason: str | None = None,
    module_globals: dict[str, Any] | None = None,
    location: tuple[str, str] | None = None,
    doctest: Any = None,
    examples: Mapping[int, Sequence[LineRow]] | None = None,
) -> MemoryTable:
    """A table from a native trace: ``lines`` are the rows the tracer measured (the lines that
    ran, without their contents, which come from the source). ``location``: ``(what, filename)`` to name in the
    header when there is no code object; ``doctest`` (a ``doctest.DocTest``) and ``examples``
    (see ``doctest_rows``): the rows of a doctest, which has none."""
    all_notes = list(notes)
    rows: list[LineRow] = []
    if _metric(metric).relative:
        # tracemalloc counts from when the trace started: show the heap relative to the start
        # of the test's body, which is the same on every run (the set-up before it is not)
        def relative(measured: Sequence[LineRow]) -> list[LineRow]:
            return [
                LineRow(r.lineno, r.contents, (r.mem_usage or 0) - start_rss, r.increment, r.peak, r.occurrences)
                for r in measured
            ]

        lines = relative(lines)
        examples = {i: relative(m) for i, m in (examples or {}).items()}
        start_rss, end_rss = 0, end_rss - start_rss
    if code is None:
        function, filename = location or ("?", "?")
        why: str | None = no_code_reason or "no per-line view: the test has no Python code object"
        if doctest is not None:
            found, why = doctest_rows(doctest, examples or {})
            rows.extend(found)
        if why is not None:
            all_notes.append(why)
    else:
        function, filename = code.co_qualname, code.co_filename
        source, why = source_of(code, module_globals)
        if why is not None:
            all_notes.append(why)
        else:
            rows.extend(table_rows(code.co_firstlineno, source, list(lines)))
    return MemoryTable(
        title=title,
        function=function,
        filename=filename,
        rows=tuple(rows),
        start_rss=start_rss,
        end_rss=end_rss,
        peak_growth=peak_growth,
        exact_peak=exact_peak,
        metric=metric,
        notes=tuple(all_notes),
    )


def doctest_rows(
    dtest: Any, examples: Mapping[int, Sequence[LineRow]]
) -> tuple[list[LineRow], str | None]:
    """The rows of a doctest (a ``doctest.DocTest``): its source from the first example to the
    end of the last one's expected output, each example's numbers on its ``>>>`` line, or
    ``([], why not)``. ``examples``: the measured lines of each example that ran, by its index.

    An example is compiled and run as a module of its own: its Increment is the sum of its
    lines' (usually one), its Peak the highest of theirs, its Mem usage that of its last line."""
    lines = linecache.getlines(dtest.filename) if dtest.filename else []
    if dtest.lineno is None or not lines or not dtest.examples:
        return [], "no per-line view: the doctest's source lines are not available"
    starts = []
    for example in dtest.examples:
        at = dtest.lineno + example.lineno  # both 0-based
        first = example.source.splitlines()[0].strip() if example.source.strip() else ""
        if at >= len(lines) or not lines[at].strip().startswith(">>>") or first not in lines[at]:
            return [], f"no per-line view: {dtest.filename} does not match the doctest"
        starts.append(at)
    last = dtest.examples[-1]
    end = min(len(lines), starts[-1] + last.source.count("\n") + last.want.count("\n"))
    by_line = dict(zip(starts, range(len(starts))))
    rows = []
    for at in range(starts[0], end):
        text = lines[at].rstrip("\r\n")
        measured = examples.get(by_line[at], ()) if at in by_line else ()
        if not measured:
            rows.append(LineRow(at + 1, text))
            continue
        increment = sum(m.increment or 0 for m in measured)
        peak = max(m.peak or 0 for m in measured)
        mem_usage = max(measured, key=lambda m: m.lineno).mem_usage  # the example's last line
        rows.append(LineRow(at + 1, text, mem_usage, increment, peak, 1))
    return rows, None
