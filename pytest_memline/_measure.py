"""Measuring one test: tracing its body, building its table, checking its budgets and its
baseline, and measuring it again when it looks regressed. ``Measurer`` is used by the plugin's
hooks; what it finds travels on the item (``OUTCOME_KEY``) to the report."""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
import types
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline._budget import check
from pytest_memline._fixtures import FIXTURE_FAILURES_KEY
from pytest_memline._gate import change_message, group_changes
from pytest_memline._metrics import metric as _metric
from pytest_memline._settings import TestLimits
from pytest_memline.table import MemoryTable, build_table
from pytest_memline._items import (
    calls_pyfunc_call,
    doctest_of,
    doctest_prefix,
    location,
    split_examples,
    test_function,
    watch_threads,
)

if TYPE_CHECKING:
    from pytest_memline._settings import Settings

#: Per-item state: the limits resolved at setup, and what was measured and found.
LIMITS_KEY = pytest.StashKey["TestLimits"]()
OUTCOME_KEY = pytest.StashKey["TestOutcome"]()
#: set when the test ran untraced on request (trace=False): where that was set
UNTRACED_KEY = pytest.StashKey[str]()

SECTION_TABLE = "memline: memory table"
SECTION_DIFF = "memline: diff against the baseline"
#: glibc's mmap and trim thresholds with `malloc = "fixed"`: its defaults, kept from rising.
MALLOC_THRESHOLD = 128 * 1024
#: A full garbage collection before each test until the heap holds this many of Python's
#: allocated blocks (``sys.getallocatedblocks()``: pytest alone about 120,000, with pandas
#: loaded 300,000, where a full collection took 4 and 16 ms on a busy machine); from then on,
#: the young generations only. A count, not a timing: the same tests get the same collections
#: on a busy machine as on an idle one.
FULL_COLLECTION_BLOCKS = 150_000
#: Seconds a forked re-measurement may take beyond 4x the test's own time per run.
CONFIRM_TIMEOUT = 30.0


@dataclass(frozen=True)
class Run:
    """How one item is traced: its code (None for doctests and items without one), why it has
    no per-line view, its module's globals (to find its source), what else to trace, and the
    metric."""

    code: types.CodeType | None
    why: str | None
    module_globals: Any
    include: list[str]
    metric: str


@dataclass
class TestOutcome:
    """What the plugin measured for one test, and what it found."""

    table: Any  # MemoryTable
    limits: TestLimits
    violations: list[Any]  # _budget.Violation
    comparison: Any  # _gate.Comparison | None
    included: tuple[Any, ...] = ()  # MemoryTables of the `include`d functions the test called

    __test__ = False

    def render_tables(self) -> str:
        """The test's table, then the tables of the included functions it called and of the
        fixtures traced at its setup."""
        return "\n\n".join(t.render() for t in self.table.with_extras(self.included))

    @property
    def failed(self) -> bool:
        return bool(self.violations) or bool(
            self.comparison and self.comparison.status in ("regressed", "refused")
        )

    def message(self) -> str:
        lines = [v.message(self.table) for v in self.violations]
        if self.comparison is not None and self.comparison.status == "refused":
            lines.append(f"memline: {self.comparison.reason}")
        confirmation = None
        if self.comparison is not None and self.comparison.regressed:
            groups = group_changes(self.comparison.changes)
            # the lines first: they answer "which line?"; the test's own growth last
            groups.sort(key=lambda g: g["line"] is None)
            lines += [change_message(g, self.limits) for g in groups]
            confirmation = self.comparison.confirmation()
        if len(lines) > 1:
            lines[0] += f" (and {len(lines) - 1} more)"
        if confirmation:
            lines.append(f"memline: the regression was {confirmation}")
        return "\n".join(lines)


class Measurer:
    """Traces test bodies and judges what they measured (budgets, baseline)."""

    def __init__(self, settings: Settings, native: Any, gate: Any, malloc_fixed: bool) -> None:
        self.settings = settings
        self.native = native
        self.gate = gate
        self.malloc_fixed = malloc_fixed
        # resolved after collection, when the test modules (and sys.path entries) are in place
        self.include_paths: list[str] = []
        #: the Isolator when isolate = "fork"
        self.isolator: Any = None
        #: --junitxml is on: each test carries its peak growth as a property (kept on the item
        #: and its reports for the whole run, about 130 bytes a test: only when it is read)
        self.junit = False
        #: the item being traced (a nested pytest_pyfunc_call is left alone)
        self.tracing: pytest.Item | None = None
        # full garbage collections before each test, until the heap is large (see
        # FULL_COLLECTION_BLOCKS)
        self._full_collections = True
        #: in a forked child: why its file-backed pages could not be mapped like the parent's
        self.unmapped: str | None = None
        #: measures around each test's body (``_around.AroundTracker``), set by the manager
        self.around: Any = None

    def start_child(self) -> None:
        """In a forked child, before it measures: the parent's objects are frozen out of the
        cyclic collector and the file-backed pages the parent has mapped are mapped here too.

        A full collection in the child walks every object it inherited and writes to the page
        of each one: about 30 ms in a process with pandas loaded, paid by every test that
        triggers one, while the child's own objects are all a collection there can free. And
        fork does not copy file-backed pages (code, data files): without mapping them first,
        the child's RSS would grow by every page of code it runs for the first time."""
        gc.freeze()
        if self.native._prefault_like_parent() is None:
            self.unmapped = (
                "the fork could not map the parent's file-backed pages in advance (no access "
                "to /proc/PID/pagemap, or a kernel before 5.14): code run for the first time "
                "in it counts as growth"
            )

    def traced(self, item: pytest.Item) -> Generator[None, object, object]:
        if self.tracing is not None:
            # pytest_pyfunc_call inside a runtest that is already traced: an item class that
            # overrides runtest and then calls the original (pytest-asyncio's, for one)
            return (yield)
        if self.isolator is not None and not self.isolator.in_child and calls_pyfunc_call(item):
            # isolate = "fork": the body is traced in the child (see _isolate)
            return (yield)
        limits = item.stash.get(LIMITS_KEY, None)
        if limits is not None and not limits.trace:
            # mem_limit(trace=False) or a rule's trace = false: run as without memline
            item.stash[UNTRACED_KEY] = limits.trace_source
            return (yield)
        run = self.plan(item)
        threads_done = watch_threads()
        failure = self.start(run)
        if failure is not None:
            # no free sys.monitoring tool id, RSS unreadable: one line, not a traceback
            threads_done()
            pytest.fail(failure, pytrace=False)
        self.tracing = item
        began = time.perf_counter()
        try:
            result = yield
        finally:
            self.tracing = None
            trace = self.native.stop()
            outcome = self.evaluate(item, run, trace, threads_done())
            item.stash[OUTCOME_KEY] = outcome
            if self.around is not None:
                self.around.body(item, trace.start_rss, trace.end_rss)
            # on the item, so that the call and teardown reports (junitxml reads the latter) carry it
            if self.junit:
                item.user_properties.append(("memline_peak_growth", outcome.table.peak_growth))
        if outcome.limits.leak_runs and self.around is not None:
            outcome = self.check_leaks(item, run, outcome, time.perf_counter() - began)
            item.stash[OUTCOME_KEY] = outcome
        comparison = outcome.comparison
        if comparison is not None and comparison.regressed and self.can_confirm(run):
            outcome = self.confirm(item, run, outcome, time.perf_counter() - began)
            item.stash[OUTCOME_KEY] = outcome
        if outcome.failed:
            pytest.fail(outcome.message(), pytrace=False)
        return result

    def plan(self, item: pytest.Item) -> Run:
        """What tracing this item takes: its code, where its source is, what else to trace."""
        code, why, module_globals = test_function(item)
        dtest = doctest_of(item) if code is None else None
        include = self.include_paths
        if dtest is not None:
            include = [*include, doctest_prefix(dtest) + "*"]
        metric = item.stash[LIMITS_KEY].metric if LIMITS_KEY in item.stash else self.settings.metric
        return Run(code, why, module_globals, include, metric)

    def start(self, run: Run) -> str | None:
        """Collects garbage, trims malloc and starts the tracer; why it could not start, or None."""
        if self.isolator is None or not self.isolator.in_child:
            # (isolated, the parent did this just before the fork)
            self.settle(run.metric)
        s = self.settings
        try:
            self.native.start(
                [run.code] if run.code is not None else [],
                peak=s.peak,
                reader=s.reader,
                backend=s.backend,
                metric=run.metric,
                include=run.include,
            )
        except RuntimeError as exc:
            return str(exc)
        return None

    def settle(self, metric: str) -> None:
        """Before a test: collects garbage and returns malloc's free memory to the kernel."""
        deterministic = _metric(metric).deterministic
        if deterministic or self._full_collections:
            # cyclic garbage left by earlier tests is freed now, not inside one of this test's
            # lines (and with the heap metric, the same collector schedule on every run)
            gc.collect()
            if not deterministic and sys.getallocatedblocks() > FULL_COLLECTION_BLOCKS:
                self._full_collections = False
        else:
            # a large heap: the young generations only (where the garbage of the test before
            # almost always is); a full collection costs tens of milliseconds there
            gc.collect(1)
        if self.malloc_fixed:
            # every test starts from the same allocator state: memory freed by earlier tests
            # (and by the plugin between tests) goes back to the kernel instead of being reused
            # silently by this test's allocations
            self.native.trim_malloc()

    def check_leaks(self, item: pytest.Item, run: Run, outcome: TestOutcome, duration: float) -> TestOutcome:
        """The leak check: the body runs ``leak_runs`` more times, in a forked child of this
        process (what they leave stays there; caches the first run filled are warm there, so
        filling a cache once is not a leak), and each run's retained memory is measured after
        a collection and a trim. With a leak limit, the test fails when every run retained
        more than the limit."""
        from pytest_memline import _fork
        from pytest_memline._around import repeat_body
        from pytest_memline._budget import Violation

        limits = outcome.limits
        runs = int(limits.leak_runs or 0)
        reader = self.settings.reader

        def work() -> list[int]:
            self.start_child()
            return repeat_body(self, item, run.metric, reader, runs)

        error = None
        repetitions: list[int] = []
        in_child = self.isolator is not None and self.isolator.in_child
        try:
            if in_child or not _fork.available():
                # isolated, this is already a fork that ends with the test
                repetitions = repeat_body(self, item, run.metric, reader, runs)
            else:
                repetitions = _fork.run_in_child(work, CONFIRM_TIMEOUT + 4 * (runs + 1) * duration)
        except _fork.ForkError as exc:
            error = str(exc)
        except Exception as exc:  # in place: a repetition of the body failed
            error = f"repetition failed: {type(exc).__name__}: {exc}"
        self.around.body(item, repetitions=repetitions, error=error)
        leak = limits.leak
        if leak is None or error is not None or len(repetitions) < runs:
            return outcome
        least = min(repetitions)
        if least <= leak.value:
            return outcome
        found = Violation(None, "leak", least, leak, tuple(repetitions))
        return dataclasses.replace(outcome, violations=[*outcome.violations, found])

    def can_confirm(self, run: Run) -> bool:
        from pytest_memline import _fork

        # the heap metric repeats exactly: a regression there needs no second look
        return (
            self.settings.confirm > 0 and not _metric(run.metric).deterministic and _fork.available()
        )

    def call_again(self, item: pytest.Item) -> None:
        """Runs the test's body once more, as pytest ran it (this plugin stands aside)."""
        self.tracing = item
        try:
            if calls_pyfunc_call(item):
                item.ihook.pytest_pyfunc_call(pyfuncitem=item)
            else:
                item.runtest()
        finally:
            self.tracing = None

    def confirm(
        self, item: pytest.Item, run: Run, outcome: TestOutcome, duration: float
    ) -> TestOutcome:
        """Measures a test that looks regressed again (see ``reconfirm``); it stays regressed
        only when most of the re-runs show one of the grown values again."""
        assert outcome.comparison is not None
        if self.isolator is not None and self.isolator.in_child:
            # isolated: the parent measures it again in fresh forks, as it measured it first
            return outcome
        comparison = self.reconfirm(item, run, outcome.comparison, outcome.limits, duration)
        table = outcome.table
        if comparison.status == "unconfirmed":
            table = table.with_marks(v.lineno for v in outcome.violations if v.lineno is not None)
        return dataclasses.replace(outcome, table=table, comparison=comparison)

    def reconfirm(
        self,
        item: pytest.Item,
        run: Run,
        first: Any,
        limits: TestLimits,
        duration: float,
    ) -> Any:
        """The comparison ``first`` after ``confirm`` more measurements of the test, in a forked
        child (what the re-runs do stays there). In place, the child is a fork of this process
        after the test ran in it, so caches the test builds on first use are warm there;
        isolated, this process has not run the body, and the re-runs start as the first run
        did. Either way the child first maps the file-backed pages this process has mapped
        (see ``start_child``)."""
        from pytest_memline import _fork

        runs = self.settings.confirm

        def work() -> list[dict[str, Any]]:
            self.start_child()
            tables = []
            for _ in range(runs):
                failure = self.start(run)
                if failure is not None:
                    raise RuntimeError(failure)
                try:
                    self.call_again(item)
                finally:
                    trace = self.native.stop()
                tables.append(self.table(item, run, trace, threads=False).to_dict())
            return tables

        timeout = CONFIRM_TIMEOUT + 4 * (runs + 1) * duration
        try:
            tables = _fork.run_in_child(work, timeout)
        except _fork.ForkError as exc:
            return dataclasses.replace(first, rerun_error=str(exc))
        reproduced = sum(
            self.gate.reproduces(item.nodeid, MemoryTable.from_dict(t), limits, first)
            for t in tables
        )
        status = "regressed" if 2 * reproduced > runs else "unconfirmed"
        return dataclasses.replace(first, status=status, reruns=runs, reproduced=reproduced)

    def evaluate(self, item: pytest.Item, run: Run, trace: Any, threads: bool) -> TestOutcome:
        table, own, functions = self.measured(item, run, trace, threads)
        limits = item.stash.get(LIMITS_KEY, TestLimits())
        checked = table
        if not table.has_source and own is not None and limits.line is not None:
            # no source to show, but the lines were measured: the line budget still holds
            checked = dataclasses.replace(table, rows=tuple(own.lines))
        if trace.interrupted_line is not None:
            # after the tracer was removed, that line holds what the untraced lines used: it is
            # not blamed for them (the test's own growth is still measured whole)
            lost = trace.interrupted_line
            checked = dataclasses.replace(checked, rows=tuple(r for r in checked.rows if r.lineno != lost))
        # its fixtures' budgets first: they were set up first (and read once: a rerun of the
        # test sets them up again)
        fixture_failures = item.stash.get(FIXTURE_FAILURES_KEY, ())
        if fixture_failures:
            del item.stash[FIXTURE_FAILURES_KEY]
        violations = [*fixture_failures, *check(checked, limits)]
        comparison = self.gate.compare(item.nodeid, table, limits)
        marks = {v.lineno for v in violations if v.lineno is not None}
        if comparison is not None and comparison.regressed:
            marks |= {c["line"] for c in comparison.changes if c["line"] is not None}
        included = tuple(
            dataclasses.replace(
                build_table(
                    title=f"{item.nodeid} > included {f.code.co_qualname}",
                    code=f.code,
                    lines=f.lines,
                    start_rss=trace.start_rss,
                    end_rss=trace.end_rss,
                    peak_growth=max((r.peak or 0 for r in f.lines), default=0),
                    exact_peak=trace.exact_peak,
                    metric=trace.metric,
                ),
                role="included",
            )
            for f in functions
        )
        return TestOutcome(table.with_marks(marks), limits, violations, comparison, included)

    def table(self, item: pytest.Item, run: Run, trace: Any, threads: bool) -> Any:
        return self.measured(item, run, trace, threads)[0]

    def measured(
        self, item: pytest.Item, run: Run, trace: Any, threads: bool
    ) -> tuple[Any, Any, list[Any]]:
        """The test's table, its own function trace, and the traces of included functions."""
        code, why, module_globals = run.code, run.why, run.module_globals
        notes = [n for n in (trace.peak_note, trace.interrupted, trace.chain_note, trace.error) if n]
        if self.unmapped:
            notes.append(self.unmapped)
        if threads:
            notes.append(
                "the test started threads: RSS is per process, so their memory is in these "
                "numbers, but their lines are not traced"
            )
        functions = list(trace.functions)
        own = functions.pop(0) if code is not None and functions else None
        dtest = doctest_of(item) if code is None else None
        examples: dict[int, Any] = {}
        if dtest is not None:
            examples, functions = split_examples(dtest, functions)
        table = build_table(
            title=item.nodeid,
            code=code,
            lines=own.lines if own is not None else [],
            start_rss=trace.start_rss,
            end_rss=trace.end_rss,
            peak_growth=trace.peak_growth,
            exact_peak=trace.exact_peak,
            metric=trace.metric,
            notes=notes,
            no_code_reason=why,
            module_globals=module_globals,
            location=location(item) if code is None else None,
            doctest=dtest,
            examples=examples,
        )
        return table, own, functions
