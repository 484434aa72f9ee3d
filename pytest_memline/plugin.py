"""The pytest plugin: ``pytest --memline``.

Module-level hooks only add options and markers and decide whether the plugin is on; all the
work is done by one ``MemlinePlugin`` object registered in ``pytest_configure`` when it is. With
the plugin off, no native code is imported and no hook of the manager runs.

Under pytest-xdist every worker traces its own tests and checks their budgets and baselines;
the measured tables travel to the controller on the test reports (``report.memline``), and the
controller alone prints the summary and writes baselines and reports.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import types
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline import _preflight
from pytest_memline._preflight import MARKER, MARKER_DOC

if TYPE_CHECKING:
    from pytest_memline._settings import Settings, TestLimits

PLUGIN_NAME = "memline-manager"

#: Per-item state: the limits resolved at setup, and what was measured and found.
LIMITS_KEY = pytest.StashKey["TestLimits"]()
OUTCOME_KEY = pytest.StashKey["TestOutcome"]()

SECTION_TABLE = "memline: memory table"
SECTION_DIFF = "memline: diff against the baseline"
#: glibc's mmap and trim thresholds with `malloc = "fixed"`: its defaults, kept from rising.
MALLOC_THRESHOLD = 128 * 1024
#: The smallest increment the top lines list: 0.05 MiB, the first one shown as 0.1 MiB.
_SHOWN_AS_NONZERO = 2**20 // 20 + 1
#: A full garbage collection before each test while one takes less than this (seconds); on a
#: larger heap, the young generations only.
FULL_COLLECTION_BUDGET = 0.002
#: Seconds a forked re-measurement may take beyond 4x the test's own time per run.
CONFIRM_TIMEOUT = 30.0


def pytest_addoption(parser: pytest.Parser) -> None:
    from pytest_memline import _keys

    _keys.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    option = config.getoption("memline", None)
    if option is False:
        return
    path = _preflight.find_pyproject(config.rootpath)
    table, display = _preflight.read_config(path) if option or path else (None, None)
    if not _preflight.enabled_from(option, table):
        return
    from pytest_memline import _settings

    settings = _settings.resolve(
        config.option, table, display, config.rootpath, config.invocation_params.dir
    )
    from pytest_memline import _memline

    try:
        probe = _memline.probe_reader(settings.reader, settings.peak)
    except RuntimeError as exc:
        # no RSS to read here (no /proc, say): run the tests untraced and say so once
        config.pluginmanager.register(_Unavailable(str(exc)), PLUGIN_NAME)
        return
    config.pluginmanager.register(MemlinePlugin(config, settings, probe), PLUGIN_NAME)


class _Unavailable:
    """Registered instead of the manager when RSS cannot be read: one header line, no tracing."""

    def __init__(self, why: str) -> None:
        self.why = why

    def pytest_report_header(self) -> list[str]:
        return [f"memline: off: {self.why}; tests run untraced, no budgets or baselines checked"]


def _calls_pyfunc_call(item: pytest.Item) -> bool:
    """Whether pytest runs this item through ``pytest_pyfunc_call`` (plain test functions and
    methods do; ``unittest.TestCase`` items override ``runtest``)."""
    return isinstance(item, pytest.Function) and type(item).runtest is pytest.Function.runtest


def _thread_idents() -> set[int]:
    import threading

    return {t.ident for t in threading.enumerate() if t.ident is not None}


def _watch_threads() -> Any:
    """Starts watching for threads the test starts; the returned function stops watching and
    says whether any did. Threads still alive at the end are found by their idents; threads
    that started and finished within the test by a one-shot ``threading.setprofile`` hook,
    chained to the hook that was set before (the new thread gets that one back at once)."""
    import sys
    import threading

    before = _thread_idents()
    started: list[bool] = []
    previous = threading.getprofile()

    def hook(frame: Any, event: Any, arg: Any) -> Any:
        started.append(True)
        sys.setprofile(previous)
        return previous(frame, event, arg) if previous is not None else None

    threading.setprofile(hook)

    def done() -> bool:
        if threading.getprofile() is hook:
            threading.setprofile(previous)
        return bool(started) or bool(_thread_idents() - before)

    return done


def _test_function(item: pytest.Item) -> tuple[types.CodeType | None, str | None, Any]:
    """The code of the function whose body is the test, unwrapped from decorators; why there
    is none; the function's globals (to find the source of a module imported from a zip)."""
    obj = getattr(item, "obj", None)
    func = inspect.unwrap(getattr(obj, "__func__", obj)) if obj is not None else None
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        return code, None, getattr(func, "__globals__", None)
    if type(item).__name__ == "DoctestItem":
        # with examples, the table has a row per example (see _doctest)
        why = "no per-line view: the doctest has no examples"
    elif obj is None:
        why = f"no per-line view: {type(item).__name__} items have no Python test function"
    else:
        why = f"no per-line view: the test object {obj!r} has no Python code"
    return None, why, None


def _doctest(item: pytest.Item) -> Any:
    """The ``doctest.DocTest`` of a doctest item with examples, else ``None``."""
    if type(item).__name__ != "DoctestItem":
        return None
    dtest = getattr(item, "dtest", None)
    return dtest if getattr(dtest, "examples", None) else None


def _doctest_prefix(dtest: Any) -> str:
    """What the ``co_filename`` of every example of ``dtest`` starts with: doctest compiles
    example ``i`` as a module named ``<doctest NAME[i]>``."""
    return f"<doctest {dtest.name}["


def _split_examples(dtest: Any, functions: list[Any]) -> tuple[dict[int, Any], list[Any]]:
    """The measured lines of each example of ``dtest`` (its module-level code; functions that
    an example defines are charged to the lines that call them), and the other functions."""
    prefix = _doctest_prefix(dtest)
    examples: dict[int, Any] = {}
    others = []
    for f in functions:
        name = f.code.co_filename
        if not name.startswith(prefix):
            others.append(f)
        elif f.code.co_name == "<module>" and name.endswith("]>"):
            index = name[len(prefix) : -2]
            if index.isdigit():
                examples[int(index)] = f.lines
    return examples, others


def _location(item: pytest.Item) -> tuple[str, str]:
    """What the test is and where, for the header of a table without source."""
    path, _, domain = item.location
    return domain, path


@dataclass(frozen=True)
class _Run:
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
        """The test's table, then the tables of the included functions it called."""
        parts = [self.table.render()]
        parts += [t.render() for t in self.included]
        return "\n\n".join(parts)

    @property
    def failed(self) -> bool:
        return bool(self.violations) or bool(
            self.comparison and self.comparison.status in ("regressed", "refused")
        )

    def message(self) -> str:
        from pytest_memline._gate import change_message, group_changes

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


class MemlinePlugin:
    """The manager: traces tests, checks budgets and baselines, reports."""

    def __init__(self, config: pytest.Config, settings: Settings, probe: Any = None) -> None:
        from pytest_memline import _memline
        from pytest_memline._gate import Gate

        self.config = config
        self.settings = settings
        self.native = _memline
        self.is_worker = hasattr(config, "workerinput")
        self.probe = probe or _memline.probe_reader(settings.reader, settings.peak)
        self.isolate_note: str | None = None
        _register_fork_handler(_memline)
        # True where there is a glibc malloc to pin and trim (checked by doing it once)
        self.malloc_fixed = (
            settings.malloc == "fixed"
            and _memline.pin_malloc(MALLOC_THRESHOLD)
            and _memline.trim_malloc()
        )
        # resolved after collection, when the test modules (and sys.path entries) are in place
        self.include_paths: list[str] = []
        self.gate = Gate(settings, config.rootpath)
        self.gate.load()
        # session-wide results, kept small: the top lines, tables only when shown
        self.top: list[tuple[int, str, int, str]] = []
        self.tables: list[str] = []
        self.traced = 0
        self.over_budget: list[tuple[str, str]] = []
        self.collected: set[str] = set()
        self.json_tests: dict[str, Any] = {}
        # tables measured in this process, waiting for their report (no xdist)
        self.local_tables: dict[str, tuple[Any, tuple[Any, ...]]] = {}
        self.tracing: pytest.Item | None = None
        # full garbage collections before each test, until one costs too much (a large heap)
        self._full_collections = True
        self.gate.select(config.args, config.invocation_params.dir)
        self.isolator: Any = None
        if self.isolating(config):
            from pytest_memline._isolate import Isolator

            self.isolator = Isolator(self)
            config.pluginmanager.register(self.isolator, "memline-isolate")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(_XdistHooks(self.collected), "memline-xdist")

    def isolating(self, config: pytest.Config) -> bool:
        """``isolate = "fork"``, where there is fork and no debugger to step into the body."""
        from pytest_memline import _fork

        if self.settings.isolate != "fork":
            return False
        if not _fork.available():
            self.isolate_note = "isolate = \"fork\" is not available here (no fork): tests run in place"
            return False
        if config.getoption("usepdb", False):
            self.isolate_note = "isolate = \"fork\" is off under --pdb: tests run in place"
            return False
        return True

    # -- header ------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        s = self.settings
        probe = self.probe
        backend = s.backend
        if backend == "auto":
            backend = "monitoring" if _python_at_least(3, 12) else "settrace"
        peak = "exact in-line peak" if probe["exact_peak"] else f"no exact peak: {probe['note']}"
        if s.metric == "heap":
            lines = [f"memline: on (backend {backend}, metric heap: Python allocations via tracemalloc)"]
        else:
            lines = [f"memline: on (backend {backend}, RSS via {probe['reader']}, {peak})"]
        limits = []
        if s.test_limit:
            limits.append(f"test {self.native.format_size(s.test_limit.value)}")
        if s.line_limit:
            limits.append(f"line {self.native.format_size(s.line_limit.value)}")
        if s.rules:
            limits.append(f"{len(s.rules)} [[tool.memline.limits]] rules")
        where = f" from {s.config_file}" if s.config_file and limits else ""
        lines.append(
            f"memline: tables={s.tables}, top={s.top}; default limits: "
            f"{', '.join(limits) if limits else 'none'}{where}"
        )
        if self.malloc_fixed:
            lines.append(
                "memline: malloc's free memory is trimmed before each test, its mmap and trim "
                f"thresholds fixed at {MALLOC_THRESHOLD // 1024} KiB (--memline-malloc=native: "
                "leave malloc alone)"
            )
        if self.isolator is not None:
            lines.append(
                "memline: each traced test body runs in a forked process that has run no other "
                "test body (isolate = \"fork\"); fixtures run here as usual"
            )
        elif self.isolate_note:
            lines.append(f"memline: {self.isolate_note}")
        if s.compare is not None:
            confirm = (
                f"a test that looks regressed is measured {s.confirm} more times"
                if s.confirm
                else "no re-runs"
            )
            lines.append(
                f"memline: comparing with {_preflight.display(s.compare)} "
                f"({self.gate.describe()}; noise floor "
                f"{self.native.format_size(s.noise_floor.value)} from {s.noise_floor.source}, "
                f"tolerance {s.tolerance} from {s.tolerance.source}; {confirm})"
            )
        if s.save is not None:
            lines.append(
                f"memline: saving passing tests to {_preflight.display(s.save)} (keeping the "
                f"last {_preflight.count(s.samples, 'run')} of each)"
            )
        lines.extend(self.gate.notes)
        return lines

    # -- collection (for "gone" baseline entries) --------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.collected.update(item.nodeid for item in items)
        if self.settings.include and not self.include_paths:
            from pytest_memline._settings import include_paths

            self.include_paths = include_paths(self.settings.include)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.collected.update(item.nodeid for item in items)

    # -- per test ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        from pytest_memline._settings import MarkerError, parse_marker

        try:
            marker = parse_marker(item.get_closest_marker(MARKER), item.nodeid)
        except MarkerError as exc:
            error = str(exc)
        else:
            item.stash[LIMITS_KEY] = self.settings.limits_for(item.nodeid, marker)
            return
        # Outside the except block: failing inside it chains the MarkerError, and pytest then
        # prints the message twice ("During handling of the above exception ...").
        pytest.fail(error, pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        return (yield from self._traced(pyfuncitem))

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        """Items that do not go through ``pytest_pyfunc_call`` (``unittest.TestCase`` tests):
        traced around their ``runtest``, as close to the test as pytest lets a plugin get."""
        if _calls_pyfunc_call(item):
            return (yield)
        return (yield from self._traced(item))

    def _traced(self, item: pytest.Item) -> Generator[None, object, object]:
        if self.tracing is not None:
            # pytest_pyfunc_call inside a runtest that is already traced: an item class that
            # overrides runtest and then calls the original (pytest-asyncio's, for one)
            return (yield)
        if self.isolator is not None and not self.isolator.in_child and _calls_pyfunc_call(item):
            # isolate = "fork": the body is traced in the child (see _isolate)
            return (yield)
        run = self._plan(item)
        threads_done = _watch_threads()
        failure = self._start(run)
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
            outcome = self._evaluate(item, run, trace, threads_done())
            item.stash[OUTCOME_KEY] = outcome
            # on the item, so that the call and teardown reports (junitxml reads the latter) carry it
            item.user_properties.append(("memline_peak_growth", outcome.table.peak_growth))
        comparison = outcome.comparison
        if comparison is not None and comparison.regressed and self._can_confirm(run):
            outcome = self._confirm(item, run, outcome, time.perf_counter() - began)
            item.stash[OUTCOME_KEY] = outcome
        if outcome.failed:
            pytest.fail(outcome.message(), pytrace=False)
        return result

    def _plan(self, item: pytest.Item) -> _Run:
        """What tracing this item takes: its code, where its source is, what else to trace."""
        code, why, module_globals = _test_function(item)
        dtest = _doctest(item) if code is None else None
        include = self.include_paths
        if dtest is not None:
            include = [*include, _doctest_prefix(dtest) + "*"]
        metric = item.stash[LIMITS_KEY].metric if LIMITS_KEY in item.stash else self.settings.metric
        return _Run(code, why, module_globals, include, metric)

    def _start(self, run: _Run) -> str | None:
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
        import gc

        if metric == "heap" or self._full_collections:
            # cyclic garbage left by earlier tests is freed now, not inside one of this test's
            # lines (and with the heap metric, the same collector schedule on every run)
            began = time.perf_counter()
            gc.collect()
            if metric != "heap" and time.perf_counter() - began > FULL_COLLECTION_BUDGET:
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

    def _can_confirm(self, run: _Run) -> bool:
        from pytest_memline import _fork

        # the heap metric repeats exactly: a regression there needs no second look
        return self.settings.confirm > 0 and run.metric != "heap" and _fork.available()

    def _call_again(self, item: pytest.Item) -> None:
        """Runs the test's body once more, as pytest ran it (this plugin stands aside)."""
        self.tracing = item
        try:
            if _calls_pyfunc_call(item):
                item.ihook.pytest_pyfunc_call(pyfuncitem=item)
            else:
                item.runtest()
        finally:
            self.tracing = None

    def _confirm(
        self, item: pytest.Item, run: _Run, outcome: TestOutcome, duration: float
    ) -> TestOutcome:
        """Measures a test that looks regressed again (see ``reconfirm``); it stays regressed
        only when most of the re-runs show one of the grown values again."""
        assert outcome.comparison is not None
        if self.isolator is not None and self.isolator.in_child:
            # isolated: the parent measures it again in fresh forks, as it measured it first
            return outcome
        comparison = self.reconfirm(item, run, outcome.comparison, outcome.limits, duration, warm=True)
        table = outcome.table
        if comparison.status == "unconfirmed":
            table = table.with_marks(v.lineno for v in outcome.violations if v.lineno is not None)
        return dataclasses.replace(outcome, table=table, comparison=comparison)

    def reconfirm(
        self,
        item: pytest.Item,
        run: _Run,
        first: Any,
        limits: TestLimits,
        duration: float,
        *,
        warm: bool,
    ) -> Any:
        """The comparison ``first`` after ``confirm`` more measurements of the test, in a forked
        child (what the re-runs do stays there). ``warm``: the child is a fork of this process
        after the test ran in it, so caches built on first use are warm; it runs the test once
        unmeasured first, because a fork does not share the parent's page-table entries of code
        and data files, and faulting them in again would count as growth. Not ``warm``: this
        process has not run the body (isolate = "fork"), and the re-runs start as the first run
        did."""
        from pytest_memline import _fork
        from pytest_memline.table import MemoryTable

        runs = self.settings.confirm

        def work() -> list[dict[str, Any]]:
            if warm:
                self._call_again(item)
            tables = []
            for _ in range(runs):
                failure = self._start(run)
                if failure is not None:
                    raise RuntimeError(failure)
                try:
                    self._call_again(item)
                finally:
                    trace = self.native.stop()
                tables.append(self._table(item, run, trace, threads=False).to_dict())
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

    def _evaluate(self, item: pytest.Item, run: _Run, trace: Any, threads: bool) -> TestOutcome:
        from pytest_memline._budget import check
        from pytest_memline.table import build_table

        table, own, functions = self._measured(item, run, trace, threads)
        from pytest_memline._settings import TestLimits

        limits = item.stash.get(LIMITS_KEY, TestLimits())
        checked = table
        if not table.has_source and own is not None and limits.line is not None:
            # no source to show, but the lines were measured: the line budget still holds
            from pytest_memline.table import LineRow

            rows = (LineRow(ln, "", mem, inc, pk, occ) for ln, inc, pk, mem, occ in own.lines)
            checked = dataclasses.replace(table, rows=tuple(rows))
        violations = check(checked, limits)
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
                    peak_growth=max((pk for _, _, pk, _, _ in f.lines), default=0),
                    exact_peak=trace.exact_peak,
                    metric=trace.metric,
                ),
                role="included",
            )
            for f in functions
        )
        return TestOutcome(table.with_marks(marks), limits, violations, comparison, included)

    def _table(self, item: pytest.Item, run: _Run, trace: Any, threads: bool) -> Any:
        return self._measured(item, run, trace, threads)[0]

    def _measured(
        self, item: pytest.Item, run: _Run, trace: Any, threads: bool
    ) -> tuple[Any, Any, list[Any]]:
        """The test's table, its own function trace, and the traces of included functions."""
        from pytest_memline.table import build_table

        code, why, module_globals = run.code, run.why, run.module_globals
        notes = [n for n in (trace.peak_note, trace.interrupted, trace.chain_note, trace.error) if n]
        if threads:
            notes.append(
                "the test started threads: RSS is per process, so their memory is in these "
                "numbers, but their lines are not traced"
            )
        functions = list(trace.functions)
        own = functions.pop(0) if code is not None and functions else None
        dtest = _doctest(item) if code is None else None
        examples: dict[int, Any] = {}
        if dtest is not None:
            examples, functions = _split_examples(dtest, functions)
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
            location=_location(item) if code is None else None,
            doctest=dtest,
            examples=examples,
        )
        return table, own, functions

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when != "call":
            return report
        child = self.isolator is not None and self.isolator.in_child
        if self.isolator is not None and not child:
            # the body ran in a forked child: its report is the one that counts
            return self.isolator.replace_report(item, report)
        self._attach(item, report, child)
        if child:
            self.isolator.finish(report)  # sends the report to the parent; never returns
        return report

    def _attach(self, item: pytest.Item, report: pytest.TestReport, child: bool) -> None:
        """Puts what was measured on the call's report: the table in its sections when it
        failed, and the payload that ``pytest_runtest_logreport`` reads."""
        from pytest_memline._gate import render_diff

        outcome = item.stash.get(OUTCOME_KEY, None)
        if outcome is None:
            return
        # items live as long as the session: keep nothing on them (10,000 tests stay flat)
        del item.stash[OUTCOME_KEY]
        table = outcome.table
        if report.failed:
            comparison = outcome.comparison
            if comparison is not None and comparison.diff and outcome.failed:
                report.sections.append((SECTION_DIFF, render_diff(comparison)))
            text = outcome.render_tables() if self.settings.tables != "none" else ""
            if outcome.failed and not self._failed_by_memline(report):
                # the test failed on its own: say what memline found too
                text = outcome.message() + ("\n\n" + text if text else "")
            if text:
                report.sections.append((SECTION_TABLE, text))
        payload = {
            "marked": sorted(table.marked),
            "violations": [v.message(table) for v in outcome.violations],
            "comparison": outcome.comparison.to_dict() if outcome.comparison else None,
            # what the baseline, when saved, finds steps with
            "thresholds": {
                "tolerance": outcome.limits.tolerance.value,
                "noise_floor": outcome.limits.noise_floor.value,
            },
        }
        if self.is_worker or child:
            # the tables travel to the xdist controller (or from the forked child) on the
            # report, as plain data
            payload["table"] = table.to_dict()
            payload["included"] = [t.to_dict() for t in outcome.included]
        else:
            # this process reports too: hand the objects over as they are
            self.local_tables[report.nodeid] = (table, outcome.included)
        report.memline = payload  # type: ignore[attr-defined]


    @staticmethod
    def _failed_by_memline(report: pytest.TestReport) -> bool:
        crash = getattr(report.longrepr, "reprcrash", None)
        return str(getattr(crash, "message", "")).startswith("Failed: memline:")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "memline", None)
        if data is None or report.when != "call" or self.is_worker:
            return
        # the terminal reporter keeps every report until the end of the run: once read here,
        # the table data would only weigh on it (10,000 tests stay flat)
        del report.memline  # type: ignore[attr-defined]
        from pytest_memline._gate import Comparison, render_diff
        from pytest_memline.table import MemoryTable

        local = self.local_tables.pop(report.nodeid, None)
        if local is not None:
            table, included = local[0], list(local[1])
        else:
            table = MemoryTable.from_dict(data["table"]).with_marks(data.get("marked", ()))
            included = [MemoryTable.from_dict(t) for t in data.get("included") or ()]
        if report.outcome == "rerun":
            # pytest-rerunfailures: an attempt that will be run again; its table is shown, but
            # only the last attempt counts (summary, top lines, baselines, reports)
            if self.settings.tables == "all":
                self.tables.append(table.render())
            return
        self.traced += 1
        comparison = Comparison.from_dict(data["comparison"]) if data.get("comparison") else None
        if data["violations"]:
            self.over_budget.append((report.nodeid, data["violations"][0]))
        self.gate.record(report.nodeid, table, report.passed, comparison, data.get("thresholds"))
        self._colour_diff(report, comparison, render_diff)
        self._remember_top(report.nodeid, table)
        if self.settings.tables == "all":
            self.tables.append("\n\n".join(t.render() for t in [table, *included]))
        if self.settings.json_report is not None:
            self.json_tests[report.nodeid] = {
                "outcome": report.outcome,
                "peak_growth": table.peak_growth,
                "violations": data["violations"],
                "table": data.get("table") or table.to_dict(),
                "comparison": data.get("comparison"),
                "included": data.get("included") or [t.to_dict() for t in included],
            }

    def _colour_diff(self, report: pytest.TestReport, comparison: Any, render_diff: Any) -> None:
        """Colours the diff section on a terminal that supports it (never in files)."""
        tw = self.config.get_terminal_writer()
        if comparison is None or not tw.hasmarkup:
            return
        for i, (name, _) in enumerate(report.sections):
            if name == SECTION_DIFF:
                report.sections[i] = (name, render_diff(comparison, tw.markup))

    def _remember_top(self, nodeid: str, table: Any) -> None:
        """Keeps the candidates for the top lines: rows whose increment shows as at least
        0.1 MiB (a row of "0.0 MiB" says nothing), at most a few times `top` of them."""
        n = self.settings.top
        if n <= 0:
            return
        for row in table.lines:
            if row.increment is not None and row.increment >= _SHOWN_AS_NONZERO:
                self.top.append((row.increment, nodeid, row.lineno, row.contents.strip()))
        if len(self.top) > 4 * n:
            self.top = self._top_lines()

    def _top_lines(self) -> list[tuple[int, str, int, str]]:
        """The `top` largest increments, largest first; equal ones by node id and line, so the
        list is the same whatever order the tests (or xdist workers) reported in."""
        return sorted(self.top, key=lambda e: (-e[0], e[1], e[2]))[: self.settings.top]

    # -- end of run --------------------------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        gone = self.gate.gone(self.collected)
        return {
            "traced": self.traced,
            "over_budget": len(self.over_budget),
            **self.gate.counts,
            "gone": gone,
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        from pytest_memline import _report
        from pytest_memline._gate import platform_tag, python_version

        summary = self._summary()
        self.saved_lines = self.gate.save(summary["gone"])
        self.final_summary = summary
        s = self.settings
        if s.json_report is not None:
            _report.write_atomic(
                s.json_report,
                _report.json_report(
                    metric=s.metric,
                    python=python_version(),
                    platform=platform_tag(),
                    baseline=s.compare,
                    summary=summary,
                    tests=self.json_tests,
                ),
            )
        if s.markdown_report is not None:
            top = self._top_lines()
            _report.write_atomic(
                s.markdown_report,
                _report.markdown_report(
                    summary=summary,
                    changes=self.gate.biggest(10),
                    top_lines=top,
                    over_budget=self.over_budget,
                    baseline=_preflight.display(s.compare) if s.compare else None,
                ),
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from pytest_memline._gate import describe_group
        from pytest_memline.table import mib, signed_mib

        tr = terminalreporter
        s = self.settings
        if self.tables:
            tr.write_sep("=", "memline: memory tables")
            for text in self.tables:
                tr.write_line(text)
                tr.write_line("")
        if s.top > 0 and self.top:
            top = self._top_lines()
            tr.write_sep("=", f"memline: top {_preflight.count(len(top), 'line')} by increment")
            for inc, nodeid, lineno, contents in top:
                tr.write_line(f"{mib(inc):>12}  {nodeid}:{lineno}  {contents[:80]}")
        summary = getattr(self, "final_summary", None) or self._summary()
        if s.compare is not None:
            tr.write_sep("=", f"memline: against {_preflight.display(s.compare)}")
            counts = ", ".join(f"{summary[k]} {k}" for k in ("regressed", "improved", "unchanged", "new"))
            counts += f", {len(summary['gone'])} gone"
            if summary["accepted"]:
                counts += f", {summary['accepted']} accepted"
            if summary["unconfirmed"]:
                counts += f", {summary['unconfirmed']} unconfirmed (did not reproduce)"
            if summary["refused"]:
                counts += f", {summary['refused']} refused (another metric)"
            tr.write_line(counts)
            for delta, nodeid, group in self.gate.biggest():
                tr.write_line(f"  {signed_mib(delta):>12}  {nodeid}  {describe_group(group)}")
            for nodeid in self.gate.new_tests[:10]:
                tr.write_line(f"  new: {nodeid}")
            if len(self.gate.new_tests) > 10:
                tr.write_line(f"  ... and {len(self.gate.new_tests) - 10} more new")
            for nodeid in summary["gone"]:
                tr.write_line(f"  gone: {nodeid}")
            for nodeid, group, comparison in self.gate.doubtful:
                tr.write_line(
                    f"  {comparison.status}: {nodeid}  {describe_group(group)}"
                    + (f" ({comparison.confirmation()})" if comparison.confirmation() else "")
                )
            if (summary["regressed"] or summary["unconfirmed"]) and self.isolator is None and s.metric == "rss":
                tr.write_line(
                    "memline: note: measured in place, a test's RSS depends on the tests that ran "
                    "before it; --memline-isolate=fork measures every body from the same state "
                    "(README: \"Test order\")"
                )
        for line in getattr(self, "saved_lines", []):
            tr.write_line(line)
        if self.traced:
            tr.write_line(
                f"memline: {_preflight.count(self.traced, 'test')} traced, "
                f"{len(self.over_budget)} over budget"
            )
        for path in (s.json_report, s.markdown_report):
            if path is not None:
                tr.write_line(f"memline: wrote {_preflight.display(path)}")


_FORK_HANDLER_REGISTERED = False


def _register_fork_handler(native: Any) -> None:
    """A test that forks: the child drops the parent's trace (it is not traced) at once."""
    global _FORK_HANDLER_REGISTERED
    import os

    if not _FORK_HANDLER_REGISTERED and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=native.abandon)
        _FORK_HANDLER_REGISTERED = True


class _XdistHooks:
    """Registered only when pytest-xdist is present: the controller learns the collected ids
    from the workers (it collects nothing itself)."""

    def __init__(self, collected: set[str]) -> None:
        self.collected = collected

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected.update(ids)


def _python_at_least(major: int, minor: int) -> bool:
    import sys

    return sys.version_info >= (major, minor)

