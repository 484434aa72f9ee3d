"""The manager: the plugin's hooks when tracing is on (``plugin.pytest_configure`` registers a
``MemlinePlugin``). Imported only then, so its imports are at module level: a per-test hook
pays no ``import`` statement (bench/fixedcost.py counted about 70,000 instructions a test for
them when they were local)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline import _memline, _preflight
from pytest_memline._around import AROUND_KEY, Around, AroundTracker, leak_message
from pytest_memline._gate import Comparison, Gate, render_diff
from pytest_memline._items import calls_pyfunc_call
from pytest_memline._measure import (
    LIMITS_KEY,
    MALLOC_THRESHOLD,
    OUTCOME_KEY,
    SECTION_DIFF,
    SECTION_TABLE,
    UNTRACED_KEY,
    Measurer,
)
from pytest_memline._preflight import MARKER
from pytest_memline._results import RunResults, TestResult
from pytest_memline._settings import MarkerError, parse_marker
from pytest_memline.table import MemoryTable

if TYPE_CHECKING:
    from pytest_memline._settings import Settings


class Unavailable:
    """Registered instead of the manager when RSS cannot be read: one header line, no tracing."""

    def __init__(self, why: str) -> None:
        self.why = why

    def pytest_report_header(self) -> list[str]:
        return [f"memline: off: {self.why}; tests run untraced, no budgets or baselines checked"]


class MemlinePlugin:
    """The manager: its hooks trace tests (``Measurer``), put what was found on the reports
    and gather the reports into the run's results."""

    #: the option that turned tracing on when --memline was not given (a gate or report option)
    turned_on_by: str | None = None

    def __init__(self, config: pytest.Config, settings: Settings, probe: Any = None) -> None:
        self.config = config
        self.settings = settings
        self.native = _memline
        self.is_worker = hasattr(config, "workerinput")
        self.probe = probe or _memline.probe_reader(settings.reader, settings.peak)
        self.isolate_note: str | None = None
        _register_fork_handler(_memline)
        # True where there is a glibc malloc to pin and trim (checked by doing it once)
        malloc_fixed = (
            settings.malloc == "fixed"
            and _memline.pin_malloc(MALLOC_THRESHOLD)
            and _memline.trim_malloc()
        )
        self.gate = Gate(settings, config.rootpath)
        self.gate.load()
        if self.gate.missing and not self.is_worker:
            # in pytest's warnings summary, which -q does not hide (the header line it does)
            config.issue_config_time_warning(pytest.PytestWarning(self.gate.missing), stacklevel=2)
        self.gate.select(config.args, config.invocation_params.dir)
        self.measure = Measurer(settings, _memline, self.gate, bool(malloc_fixed))
        self.measure.junit = bool(getattr(config.option, "xmlpath", None))
        self.results = RunResults(settings, self.gate)
        # tables measured in this process, waiting for their report (no xdist)
        self.local_tables: dict[str, tuple[Any, tuple[Any, ...], str]] = {}
        worker = config.workerinput.get("workerid") if self.is_worker else None  # type: ignore[attr-defined]
        self.around = AroundTracker(self.measure, settings.reader, worker, config.pluginmanager)
        self.measure.around = self.around
        if settings.fixtures or settings.fixture_rules:
            from pytest_memline._fixtures import FixtureTracer

            config.pluginmanager.register(
                FixtureTracer(settings, _memline, self.around), "memline-fixtures"
            )
        # results whose call has reported, waiting for their teardown's figures
        self.pending: dict[str, tuple[TestResult, bool, Any, pytest.TestReport, str]] = {}
        if self.isolating(config):
            from pytest_memline._isolate import Isolator

            self.measure.isolator = Isolator(self)
            config.pluginmanager.register(self.measure.isolator, "memline-isolate")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(_XdistHooks(self.results), "memline-xdist")

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
        from pytest_memline._metrics import metric
        from pytest_memline._units import format_size

        s = self.settings
        probe = self.probe
        backend = s.backend
        if backend == "auto":
            backend = "monitoring" if _python_at_least(3, 12) else "settrace"
        peak = "exact in-line peak" if probe["exact_peak"] else f"no exact peak: {probe['note']}"
        described = metric(s.metric).header.format(source=probe["reader"], peak=peak)
        lines = [f"memline: on (backend {backend}, {described})"]
        if probe["exact_peak"]:
            lines.append(
                "memline: the kernel's peak RSS counter (VmHWM, ru_maxrss) is reset before traced "
                "lines; the process's real peak is given at the end"
            )
        if self.turned_on_by:
            lines.append(f"memline: tracing turned on by {self.turned_on_by} (as --memline)")
        limits = []
        if s.test_limit:
            limits.append(f"test {format_size(s.test_limit.value)}")
        if s.line_limit:
            limits.append(f"line {format_size(s.line_limit.value)}")
        if s.rules:
            limits.append(f"{len(s.rules)} [[tool.memline.limits]] rules")
        if s.fixtures or s.fixture_rules:
            named = sorted({r.fixture for r in s.fixture_rules if r.fixture})
            which = "every fixture's setup" if s.fixtures else "the setup of " + ", ".join(named)
            lines.append(f"memline: traced line by line too: {which} (see README \"Fixtures\")")
        where = f" from {s.config_file}" if s.config_file and limits else ""
        lines.append(
            f"memline: tables={s.tables}, top={s.top}; default limits: "
            f"{', '.join(limits) if limits else 'none'}{where}"
        )
        if self.measure.malloc_fixed:
            lines.append(
                "memline: malloc's free memory is trimmed before each test, its mmap and trim "
                f"thresholds fixed at {MALLOC_THRESHOLD // 1024} KiB (--memline-malloc=native: "
                "leave malloc alone)"
            )
        if self.measure.isolator is not None:
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
                f"{format_size(s.noise_floor.value)} from {s.noise_floor.source}, "
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
        self.results.collected.update(item.nodeid for item in items)
        if self.settings.fixture_rules:
            from pytest_memline._fixtures import fixture_names

            names = fixture_names(items)
            self.results.fixture_names.update(names)
            if self.is_worker:  # for the controller, which collects nothing
                self.config.workeroutput["memline_fixture_names"] = sorted(names)  # type: ignore[attr-defined]
        if self.settings.include and not self.measure.include_paths:
            from pytest_memline._settings import include_paths

            self.measure.include_paths = include_paths(self.settings.include)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.results.collected.update(item.nodeid for item in items)

    # -- per test ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            marker = parse_marker(item.get_closest_marker(MARKER), item.nodeid)
        except MarkerError as exc:
            error = str(exc)
        else:
            limits = item.stash[LIMITS_KEY] = self.settings.limits_for(item.nodeid, marker)
            if limits.trace:
                self.around.begin(item, limits.metric)
            return
        # Outside the except block: failing inside it chains the MarkerError, and pytest then
        # prints the message twice ("During handling of the above exception ...").
        pytest.fail(error, pytrace=False)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self.around.teardown_begins(item, nextitem)

    def _ended(self, item: pytest.Item) -> str | None:
        """The test's figures after its teardown; the leak limit's message when it is over."""
        around = self.around.end(item)
        if around is None or around.left is None:
            return None
        if self.measure.junit:
            item.user_properties.append(("memline_retained", around.retained))
        limits = item.stash.get(LIMITS_KEY, None)
        if limits is None or limits.leak is None or limits.leak_runs:
            # with leak_runs the repetitions decide (see Measurer.check_leaks)
            return None
        if around.left <= limits.leak.value:
            return None
        return leak_message(around.left, limits.leak, around.metric)

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        return (yield from self.measure.traced(pyfuncitem))

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        """Items that do not go through ``pytest_pyfunc_call`` (``unittest.TestCase`` tests):
        traced around their ``runtest``, as close to the test as pytest lets a plugin get."""

        if calls_pyfunc_call(item):
            return (yield)
        return (yield from self.measure.traced(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        if call.when == "teardown":
            # the teardown is done: what the test left behind, measured before its report is
            # made (one hook instead of a wrapper of the teardown), and its leak limit
            failure = self._ended(item)
            report = yield
            around = item.stash.get(AROUND_KEY, None)
            if around is None or around.after is None:
                return report
            del item.stash[AROUND_KEY]
            if failure is not None:
                if report.passed:
                    report.outcome = "failed"  # an error at teardown; the call's outcome stands
                    report.longrepr = failure
                else:  # the teardown failed on its own: say it too
                    report.sections.append(("memline: leak limit", failure))
            # this process reports: the object itself; an xdist worker or a fork: plain data
            payload = around.to_dict() if self.is_worker else around
            report.memline = {"around": payload, "leak": failure}  # type: ignore[attr-defined]
            return report
        report = yield
        if call.when != "call":
            return report
        isolator = self.measure.isolator
        child = isolator is not None and isolator.in_child
        if isolator is not None and not child:
            # the body ran in a forked child: its report is the one that counts, and its
            # figures of the body are the ones the teardown's completes
            report = isolator.replace_report(item, report)
            body = (getattr(report, "memline", None) or {}).get("table", {}).get("around")
            if body is not None:
                b = Around.from_dict(body)
                self.around.body(
                    item, b.body_start, b.body_end, repetitions=b.repetitions, error=b.repeat_error,
                    isolated=True,
                )
            return report
        self._attach(item, report, child)
        if child:
            isolator.finish(report)  # sends the report to the parent; never returns
        return report

    def _attach(self, item: pytest.Item, report: pytest.TestReport, child: bool) -> None:
        """Puts what was measured on the call's report: the table in its sections when it
        failed, and the payload that ``pytest_runtest_logreport`` reads."""

        outcome = item.stash.get(OUTCOME_KEY, None)
        if outcome is None:
            if UNTRACED_KEY in item.stash:
                report.memline = {"untraced": item.stash[UNTRACED_KEY]}  # type: ignore[attr-defined]
            return
        if report.failed and _REFCOUNT_SENSITIVE and _looks_refcount_sensitive(report):
            report.sections.append((SECTION_TRACING, REFCOUNT_HINT))
        # items live as long as the session: keep nothing on them (what a test still costs for
        # the rest of the run, under 0.5 KiB: tests/test_compat_hostile.py)
        del item.stash[OUTCOME_KEY]
        # the fixtures' figures and the leak check's repetitions (the rest after the teardown)
        table = outcome.table.with_around(item.stash.get(AROUND_KEY, None))
        outcome = dataclasses.replace(outcome, table=table)
        if report.failed:
            comparison = outcome.comparison
            if comparison is not None and comparison.diff and outcome.failed:
                report.sections.append((SECTION_DIFF, render_diff(comparison)))
            text = outcome.render_tables() if self.settings.tables != "none" else ""
            if outcome.failed and not _failed_by_memline(report):
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
            # with the header's figures as the failure section has them now (the object goes
            # on filling in until the teardown)
            # (only a failed test has that section)
            shown = _around_text(table) if report.failed else ""
            self.local_tables[report.nodeid] = (table, outcome.included, shown)
        report.memline = payload  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "memline", None)
        if self.is_worker:
            return
        if report.when == "teardown":
            if data is not None:
                del report.memline  # type: ignore[attr-defined]
            pending = self.pending.pop(report.nodeid, None)
            if pending is not None:
                self._finish(pending, data)
            return
        if data is None or report.when != "call":
            return
        # the terminal reporter keeps every report until the end of the run: once read here,
        # the table data would only weigh on it (see test_ten_thousand_tests_keep_the_plugin_flat)
        del report.memline  # type: ignore[attr-defined]
        if "untraced" in data:
            self.results.untraced.append((report.nodeid, data["untraced"]))
            return

        local = self.local_tables.pop(report.nodeid, None)
        if local is not None:
            table, included, shown = local[0], tuple(local[1]), local[2]
        else:
            table = MemoryTable.from_dict(data["table"]).with_marks(data.get("marked", ()))
            included = tuple(MemoryTable.from_dict(t) for t in data.get("included") or ())
            shown = _around_text(table) if report.failed else ""
        if report.outcome == "rerun":
            # pytest-rerunfailures: an attempt that will be run again; its table is shown, but
            # only the last attempt counts (summary, top lines, baselines, reports)
            if self.settings.tables == "all":
                self.results.show(table)
            return
        comparison = Comparison.from_dict(data["comparison"]) if data.get("comparison") else None
        result = TestResult(
            report.nodeid, report.outcome, table, included, tuple(data["violations"]), comparison
        )
        self._colour_diff(report, comparison)
        # counted when its teardown has reported what the test left behind
        self.pending[report.nodeid] = (result, report.passed, data.get("thresholds"), report, shown)

    def _finish(
        self, pending: tuple[TestResult, bool, Any, pytest.TestReport, str], data: dict[str, Any] | None
    ) -> None:
        """A test's result, with its teardown's figures when they came (``data``), into the
        run's results; the table in its call report's failure section gets them too."""
        result, passed, thresholds, call_report, shown = pending
        if data is not None:
            around = data["around"]
            old = result.table
            if not isinstance(around, Around):
                around = Around.from_dict(around)
            # from an xdist worker, or isolated (the table came from the fork): the teardown's
            # figures, which hold the body's too
            result.table = old.with_around(around)
            if data.get("leak"):
                result.violations = (*result.violations, data["leak"])
                result.outcome = "failed"
                passed = False
            now = _around_text(result.table)
            for i, (name, text) in enumerate(call_report.sections):
                if name == SECTION_TABLE and shown and now != shown:
                    call_report.sections[i] = (name, text.replace(shown, now, 1))
        self.results.add(result, passed, thresholds)

    def _colour_diff(self, report: pytest.TestReport, comparison: Any) -> None:
        """Colours the diff section on a terminal that supports it (never in files)."""

        tw = self.config.get_terminal_writer()
        if comparison is None or not tw.hasmarkup:
            return
        for i, (name, _) in enumerate(report.sections):
            if name == SECTION_DIFF:
                report.sections[i] = (name, render_diff(comparison, tw.markup))

    # -- end of run --------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        # 3.12+: one sys.monitoring tool id for all the tests, not one per test (taking and
        # freeing it makes every code object re-instrument itself: bench/fixedcost.py)
        self.native.hold_tool_id(True)
        try:
            return (yield)
        finally:
            self.native.hold_tool_id(False)
            self._record_process_peak()

    def _record_process_peak(self) -> None:
        """After the last test (and, under xdist, after the workers reported theirs): the real
        peak RSS of the process whose counter memline reset, for the summary, JSON and JUnit."""

        peak = _memline.process_peak() if self.probe["exact_peak"] else None
        if self.is_worker:
            if peak is not None:
                self.config.workeroutput["memline_process_peak"] = peak  # type: ignore[attr-defined]
            return
        if not self.results.worker_peaks:
            self.results.process_peak = peak
        self._junit_process_peak()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.is_worker:
            for pending in list(self.pending.values()):
                self._finish(pending, None)  # a teardown that never reported (a crashed worker)
            self.pending.clear()
            self._warn_unmatched_rules(session)
            self.results.finish()
            if self.results.write_errors and session.exitstatus == pytest.ExitCode.OK:
                # a gate job must not read a lost baseline or report as a pass
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _junit_process_peak(self) -> None:
        """``--junitxml``: the run's real peak RSS as a test-suite property."""
        peak = self.results.real_peak()
        if peak is None:
            return
        try:
            from _pytest.junitxml import xml_key
        except ImportError:  # pytest moved it: the terminal and JSON still say it
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is not None:
            xml.add_global_property("memline_process_peak", peak)

    def _warn_unmatched_rules(self, session: pytest.Session) -> None:
        from pytest_memline._settings import unmatched_fixtures, unmatched_rules

        if not self.settings.rules or not self.results.collected:
            return
        whole = self.config.args_source != pytest.Config.ArgsSource.ARGS
        messages = unmatched_rules(
            self.settings.rules, self.results.collected, self.config.rootpath, whole
        )
        messages += unmatched_fixtures(self.settings.fixture_rules, self.results.fixture_names)
        for message in messages:
            self.config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.results.write_terminal(terminalreporter, isolated=self.measure.isolator is not None)


#: Python 3.11: while a trace function is set, CPython calls a C type's method through a
#: temporary bound method (for the profiler's C_CALL event), which holds one more reference to
#: ``self``; code that checks reference counts (``ndarray.resize``) then fails. 3.12+ do not.
_REFCOUNT_SENSITIVE = sys.version_info < (3, 12)
_REFCOUNT_SIGNS = ("cannot resize an array that references or is referenced", "refcount")
SECTION_TRACING = "memline: tracing"
REFCOUNT_HINT = (
    "This test may fail because it was traced: on Python 3.11, while a trace function is set, "
    "each method call of a C type (ndarray.resize, for one) holds one more reference to its "
    "object, so code that checks reference counts sees one more. Run it untraced with "
    "@pytest.mark.mem_limit(trace=False) or trace = false in its [[tool.memline.limits]] "
    "entry (README: \"Reference counts on Python 3.11\")."
)


def _around_text(table: Any) -> str:
    """The header lines a table's figures around its body make, as rendered now."""
    around = table.around
    return "\n".join(around.header_lines(table.precision)) if around is not None else ""


def _looks_refcount_sensitive(report: pytest.TestReport) -> bool:
    text = str(report.longrepr)
    return any(sign in text for sign in _REFCOUNT_SIGNS)


def _failed_by_memline(report: pytest.TestReport) -> bool:
    crash = getattr(report.longrepr, "reprcrash", None)
    return str(getattr(crash, "message", "")).startswith("Failed: memline:")


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
    from the workers (it collects nothing itself), and each worker's real peak RSS."""

    def __init__(self, results: Any) -> None:
        self.results = results

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.results.collected.update(ids)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        self.results.fixture_names.update(output.get("memline_fixture_names", ()))
        peak = output.get("memline_process_peak")
        if peak is not None:
            self.results.worker_peaks[str(node.gateway.id)] = int(peak)


def _python_at_least(major: int, minor: int) -> bool:
    return sys.version_info >= (major, minor)

