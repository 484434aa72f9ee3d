"""The run's results: one object that collects what every traced test reported (its outcome,
table, budget failures, comparison) and the session's figures, and that every report reads:
the terminal summary, the JSON and Markdown files, the baseline that is saved.

It lives on the process that reports (the xdist controller, or the only process); workers
send their tables on the reports (``report.memline``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_memline._gate import Comparison, Gate
    from pytest_memline._settings import Settings
    from pytest_memline.table import MemoryTable

#: The smallest increment the top lines list: 0.05 MiB, the first one shown as 0.1 MiB.
SHOWN_AS_NONZERO = 2**20 // 20 + 1
#: why the summary gives the real peak: memline resets the kernel's peak counter
REAL_PEAK_WHY = (
    "(memline resets the kernel's peak counter, VmHWM, before traced lines: ru_maxrss, "
    "/usr/bin/time and job monitors read less)"
)
#: lists of test ids in the terminal summary and the Markdown report stop here ("and N more")
LIST_LIMIT = 20


@dataclass
class TestResult:
    """What one traced test reported."""

    nodeid: str
    outcome: str
    table: MemoryTable
    included: tuple[MemoryTable, ...]
    violations: tuple[str, ...]
    comparison: Comparison | None

    __test__ = False

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "peak_growth": self.table.peak_growth,
            # what the test left after its teardown (see "around" in the table)
            "retained": self.table.around.retained if self.table.around is not None else None,
            "violations": list(self.violations),
            "table": self.table.to_dict(),
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "included": [t.to_dict() for t in self.included],
        }


@dataclass
class RunResults:
    """Everything the reports need, gathered as the tests report. Kept small: the top lines,
    the tables only when they are shown, the tests' data only when a JSON report is written."""

    settings: Settings
    gate: Gate
    #: node ids collected (also by the xdist workers), for "gone" baseline entries
    collected: set[str] = field(default_factory=set)
    traced: int = 0
    over_budget: list[tuple[str, str]] = field(default_factory=list)
    top: list[tuple[int, str, int, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    tests: dict[str, TestResult] = field(default_factory=dict)
    #: set at the end of the run
    summary: dict[str, Any] | None = None
    saved_lines: list[str] = field(default_factory=list)
    #: the real peak RSS of the process that ran the tests (memline resets the kernel's counter
    #: before traced lines: this is what it would read without memline), or of each xdist worker
    process_peak: int | None = None
    #: tests run untraced on request (trace=False), with where that was set
    untraced: list[tuple[str, str]] = field(default_factory=list)
    worker_peaks: dict[str, int] = field(default_factory=dict)
    #: the report files written, and one line per file that could not be (the run then fails)
    written: list[str] = field(default_factory=list)
    write_errors: list[str] = field(default_factory=list)
    #: candidates for the top retainers: (memory left behind, node id)
    retainers: list[tuple[int, str]] = field(default_factory=list)
    #: the process's memory at each test's boundaries, in the order the tests reported (kept
    #: only for the JSON report)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    #: per fixture traced at setup: how often it allocated, and its largest setup
    #: ``[setups, peak growth, node id, FixtureTable]``
    fixtures: dict[str, list[Any]] = field(default_factory=dict)
    #: the fixtures the collected tests use (also the xdist workers'), for fixture rules that
    #: name none of them
    fixture_names: set[str] = field(default_factory=set)

    def add(self, result: TestResult, passed: bool, thresholds: Mapping[str, Any] | None) -> None:
        self.traced += 1
        if result.violations:
            self.over_budget.append((result.nodeid, result.violations[0]))
        self.gate.record(result.nodeid, result.table, passed, result.comparison, thresholds)
        self._remember_top(result.nodeid, result.table)
        around = result.table.around
        if around is not None:
            self._remember_around(result.nodeid, around)
        if self.settings.tables == "all":
            self.show(*result.table.with_extras(result.included))
        if self.settings.json_report is not None:
            self.tests[result.nodeid] = result

    def show(self, *tables: MemoryTable) -> None:
        """Tables for the end of the run (``tables = "all"``)."""
        self.tables.append("\n\n".join(t.render() for t in tables))

    def _remember_top(self, nodeid: str, table: MemoryTable) -> None:
        """Keeps the candidates for the top lines: rows whose increment shows as at least
        0.1 MiB (a row of "0.0 MiB" says nothing), at most a few times `top` of them."""
        n = self.settings.top
        if n <= 0:
            return
        for row in table.lines:
            if row.increment is not None and row.increment >= SHOWN_AS_NONZERO:
                self.top.append((row.increment, nodeid, row.lineno, row.contents.strip()))
        if len(self.top) > 4 * n:
            self.top = self.top_lines()

    def _remember_around(self, nodeid: str, around: Any) -> None:
        for f in around.fixtures:
            seen = self.fixtures.get(f.name)
            if seen is None:
                self.fixtures[f.name] = [1, f.table.peak_growth, nodeid, f]
                continue
            seen[0] += 1
            # the largest; equal ones by node id (the same whatever order xdist reported in)
            if (-f.table.peak_growth, nodeid) < (-seen[1], seen[2]):
                seen[1:] = [f.table.peak_growth, nodeid, f]
        left = around.left
        n = self.settings.top
        if n > 0 and left is not None and left >= SHOWN_AS_NONZERO:
            self.retainers.append((left, nodeid))
            if len(self.retainers) > 4 * n:
                self.retainers = self.top_retainers()
        if self.settings.json_report is not None:
            self.timeline.append(
                {
                    "test": nodeid,
                    "worker": around.worker,
                    "before_setup": around.before,
                    "after_call": around.body_end,
                    # the process's, with what wider-scoped fixtures torn down then released
                    "after_teardown": None if around.after is None else around.after + around.released,
                }
            )

    def top_fixtures(self) -> list[tuple[int, int, str, Any]]:
        """The fixtures whose largest setup grew the most: (setups, peak growth, node id,
        FixtureTable), largest first, at most `top` of them."""
        found = sorted(self.fixtures.values(), key=lambda e: (-e[1], e[3].name))
        return [tuple(e) for e in found[: max(self.settings.top, 0)]]  # type: ignore[misc]

    def top_retainers(self) -> list[tuple[int, str]]:
        """The `top` tests that left the most behind, largest first."""
        return sorted(self.retainers, key=lambda e: (-e[0], e[1]))[: self.settings.top]

    def top_lines(self) -> list[tuple[int, str, int, str]]:
        """The `top` largest increments, largest first; equal ones by node id and line, so the
        list is the same whatever order the tests (or xdist workers) reported in."""
        return sorted(self.top, key=lambda e: (-e[0], e[1], e[2]))[: self.settings.top]

    def real_peak(self) -> int | None:
        """The highest real peak RSS of the processes that ran tests."""
        return max(self.worker_peaks.values()) if self.worker_peaks else self.process_peak

    def figures(self) -> dict[str, Any]:
        """The session's figures: tests traced and over budget, the baseline's counts."""
        if self.summary is not None:
            return self.summary
        return {
            "traced": self.traced,
            "over_budget": len(self.over_budget),
            **self.gate.counts,
            "gone": self.gate.gone(self.collected),
            "process_peak": self.real_peak(),
            "worker_peaks": dict(sorted(self.worker_peaks.items())),
        }

    def finish(self) -> None:
        """The end of the run: the figures are fixed, the baseline saved, the files written."""
        from pytest_memline import _report

        self.summary = self.figures()
        try:
            self.saved_lines = self.gate.save(self.summary["gone"])
        except OSError as exc:
            # one failed write does not stop the others; the run fails (plugin.py)
            self.write_errors.append(f"memline: error: the baseline was not saved: {exc}")
        s = self.settings
        reports = (
            ("JSON report", s.json_report, _report.json_report),
            ("Markdown report", s.markdown_report, _report.markdown_report),
        )
        for kind, path, build in reports:
            if path is None:
                continue
            try:
                _report.write_atomic(path, build(self))
                self.written.append(path)
            except OSError as exc:
                self.write_errors.append(f"memline: error: the {kind} was not written: {exc}")

    def write_terminal(self, tr: Any, isolated: bool) -> None:
        """The terminal summary."""
        from pytest_memline._gate import describe_group
        from pytest_memline._metrics import metric
        from pytest_memline._preflight import count, display
        from pytest_memline._units import mib, printable, signed_mib

        s = self.settings
        if self.tables:
            tr.write_sep("=", "memline: memory tables")
            for text in self.tables:
                tr.write_line(text)
                tr.write_line("")
        if s.top > 0 and self.top:
            top = self.top_lines()
            tr.write_sep("=", f"memline: top {count(len(top), 'line')} by increment")
            for inc, nodeid, lineno, contents in top:
                tr.write_line(f"{mib(inc):>12}  {nodeid}:{lineno}  {printable(contents[:80])}")
        if s.top > 0 and self.retainers:
            retainers = self.top_retainers()
            tr.write_sep(
                "=", f"memline: top {count(len(retainers), 'test')} by memory left after teardown"
            )
            for left, nodeid in retainers:
                tr.write_line(f"{mib(left):>12}  {printable(nodeid)}")
        if s.top > 0 and self.fixtures:
            fixtures = self.top_fixtures()
            tr.write_sep(
                "=", f"memline: top {count(len(fixtures), 'fixture')} by peak growth at setup"
            )
            for setups, growth, nodeid, f in fixtures:
                tr.write_line(
                    f"{mib(growth):>12}  {f.name} ({f.scope} scope), largest of "
                    f"{count(setups, 'setup')}, for {printable(nodeid)}"
                )
            if s.fixtures:
                for *_, f in fixtures:
                    tr.write_line("")
                    tr.write_line(f.table.render())
        summary = self.figures()
        if s.compare is not None:
            tr.write_sep("=", f"memline: against {display(s.compare)}")
            tr.write_line(counts_line(summary))
            for delta, nodeid, group in self.gate.biggest():
                tr.write_line(f"  {signed_mib(delta):>12}  {printable(nodeid)}  {describe_group(group)}")
            for nodeid in self.gate.new_tests[:10]:
                tr.write_line(f"  new: {nodeid}")
            if len(self.gate.new_tests) > 10:
                tr.write_line(f"  ... and {len(self.gate.new_tests) - 10} more new")
            gone = summary["gone"]
            for nodeid in gone[:LIST_LIMIT]:
                tr.write_line(f"  gone: {printable(nodeid)}")
            if len(gone) > LIST_LIMIT:
                more = "every one in the JSON report" if s.json_report else "--memline-json lists them all"
                tr.write_line(f"  ... and {len(gone) - LIST_LIMIT} more gone ({more})")
            for nodeid, group, comparison in self.gate.doubtful:
                why = comparison.confirmation()
                tr.write_line(
                    f"  {comparison.status}: {nodeid}  {describe_group(group)}"
                    + (f" ({why})" if why else "")
                )
            if (summary["regressed"] or summary["unconfirmed"]) and not isolated and metric(s.metric).order_dependent:
                tr.write_line(
                    "memline: note: measured in place, a test's RSS depends on the tests that ran "
                    "before it; --memline-isolate=fork measures every body from the same state "
                    '(README: "Test order")'
                )
        for line in self.saved_lines:
            tr.write_line(line)
        if self.traced:
            tr.write_line(
                f"memline: {count(self.traced, 'test')} traced, {len(self.over_budget)} over budget"
            )
        if self.untraced:
            where = sorted({source for _, source in self.untraced})
            tr.write_line(
                f"memline: {count(len(self.untraced), 'test')} run untraced (trace=False, from "
                f"{'; '.join(where)})"
            )
        if self.worker_peaks:
            each = ", ".join(f"{w} {mib(p)}" for w, p in sorted(self.worker_peaks.items()))
            tr.write_line(f"memline: real peak RSS of the workers: {each} {REAL_PEAK_WHY}")
        elif self.process_peak is not None:
            tr.write_line(
                f"memline: real peak RSS of this process: {mib(self.process_peak)} {REAL_PEAK_WHY}"
            )
        for path in self.written:
            tr.write_line(f"memline: wrote {display(path)}")
        for line in self.write_errors:
            tr.write_line(line, red=True, bold=True)


def counts_line(summary: Mapping[str, Any]) -> str:
    """``1 regressed, 0 improved, 38 unchanged, 0 new, 1 gone[, 2 unconfirmed ...]``."""
    counts = ", ".join(f"{summary[k]} {k}" for k in ("regressed", "improved", "unchanged", "new"))
    counts += f", {len(summary['gone'])} gone"
    if summary["accepted"]:
        counts += f", {summary['accepted']} accepted"
    if summary["unconfirmed"]:
        counts += f", {summary['unconfirmed']} unconfirmed (did not reproduce)"
    if summary["refused"]:
        counts += f", {summary['refused']} refused (another metric)"
    return counts
