"""The pytest plugin: ``pytest --memline``.

Module-level hooks only add options and markers and decide whether the plugin is on; all the
work is done by one ``MemlinePlugin`` object registered in ``pytest_configure`` when it is. With
the plugin off, no native code is imported and no hook of the manager runs.
"""

from __future__ import annotations

import argparse
import heapq
import inspect
import types
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_memline import _settings
from pytest_memline._settings import MARKER, MARKER_DOC, TABLES_CHOICES, Settings, TestLimits

PLUGIN_NAME = "memline-manager"

#: Per-item state: the limits resolved at setup, and the measured table.
LIMITS_KEY = pytest.StashKey[TestLimits]()
OUTCOME_KEY = pytest.StashKey["TestOutcome"]()


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; expected 0 or more")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memline", "line-by-line memory tables and budgets (pytest-memline)")
    group.addoption(
        "--memline",
        action="store_true",
        dest="memline",
        default=None,
        help="trace every test function line by line and check its memory budgets "
        "(also: [tool.memline] enabled = true).",
    )
    group.addoption(
        "--no-memline",
        action="store_false",
        dest="memline",
        help="turn memline off, even when [tool.memline] enabled = true.",
    )
    group.addoption(
        "--memline-tables",
        choices=TABLES_CHOICES,
        default=None,
        help="whose memory tables to show: failed (default), all or none.",
    )
    group.addoption(
        "--memline-top",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="show the N lines with the largest increments after the run (default 10; 0: none).",
    )
    group.addoption(
        "--memline-peak",
        choices=("on", "off"),
        default=None,
        help="measure each line's exact in-line peak (on, the default where the kernel allows "
        "it) or only its increment (off: cheaper).",
    )
    group.addoption(
        "--memline-backend",
        choices=("auto", "settrace", "monitoring"),
        default=None,
        help="how lines are traced: auto (sys.monitoring on 3.12+, else settrace).",
    )
    group.addoption(
        "--memline-reader",
        choices=("auto", "procfs", "portable"),
        default=None,
        help="how RSS is read: auto (procfs on Linux), procfs, or portable (sysinfo).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    option = config.getoption("memline", None)
    if option is False:
        return
    path = _settings.find_pyproject(config.rootpath)
    table, display = _settings.read_config(path) if option or path else (None, None)
    if not _settings.enabled_from(option, table):
        return
    settings = _settings.resolve(config.option, table, display)
    config.pluginmanager.register(MemlinePlugin(config, settings), PLUGIN_NAME)


def _test_function(item: pytest.Function) -> tuple[Any, types.CodeType | None, str | None]:
    """The function whose body is the test, unwrapped from decorators, and its code."""
    obj = getattr(item, "obj", None)
    func = inspect.unwrap(getattr(obj, "__func__", obj)) if obj is not None else None
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        return func, code, None
    return func, None, f"no per-line view: the test object {obj!r} has no Python code"


@dataclass
class TestOutcome:
    """What the plugin measured for one test, and what it found."""

    table: Any  # MemoryTable
    limits: TestLimits
    violations: list[Any]
    #: The budget failed the test (the test itself had passed).
    failed_by_budget: bool = False

    __test__ = False


class MemlinePlugin:
    """The manager: traces tests, checks budgets, reports."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        from pytest_memline import _memline

        self.config = config
        self.settings = settings
        self.native = _memline
        self.is_worker = hasattr(config, "workerinput")
        # session-wide results, kept small: the top lines, and tables only when shown
        self.top: list[tuple[int, int, str, int, str]] = []
        self.tables: list[str] = []
        self.counter = 0
        self.traced = 0
        self.over_budget = 0
        self.probe = _memline.probe_reader(settings.reader, settings.peak)

    # -- header ------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        s = self.settings
        probe = self.probe
        backend = s.backend
        if backend == "auto":
            backend = "monitoring" if _python_at_least(3, 12) else "settrace"
        peak = "exact in-line peak" if probe["exact_peak"] else f"no exact peak: {probe['note']}"
        parts = [f"memline: on (backend {backend}, RSS via {probe['reader']}, {peak})"]
        limits = []
        if s.test_limit:
            limits.append(f"test {self.native.format_size(s.test_limit.value)}")
        if s.line_limit:
            limits.append(f"line {self.native.format_size(s.line_limit.value)}")
        if s.rules:
            limits.append(f"{len(s.rules)} [[tool.memline.limits]] rules")
        where = f" from {s.config_file}" if s.config_file and (limits or s.rules) else ""
        parts.append(
            f"memline: tables={s.tables}, top={s.top}; default limits: "
            f"{', '.join(limits) if limits else 'none'}{where}"
        )
        return parts

    # -- per test ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            marker = _settings.parse_marker(item.get_closest_marker(MARKER), item.nodeid)
        except _settings.MarkerError as exc:
            error = str(exc)
        else:
            item.stash[LIMITS_KEY] = self.settings.limits_for(item.nodeid, marker)
            return
        # Outside the except block: failing inside it chains the MarkerError, and pytest then
        # prints the message twice ("During handling of the above exception ...").
        pytest.fail(error, pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        from pytest_memline.table import build_table

        func, code, why = _test_function(pyfuncitem)
        s = self.settings
        self.native.start([code] if code is not None else [], peak=s.peak, reader=s.reader, backend=s.backend)
        try:
            result = yield
        finally:
            trace = self.native.stop()
            notes = [n for n in (trace.peak_note, trace.interrupted, trace.chain_note, trace.error) if n]
            lines = trace.functions[0].lines if trace.functions else []
            table = build_table(
                title=pyfuncitem.nodeid,
                code=code,
                lines=lines,
                start_rss=trace.start_rss,
                end_rss=trace.end_rss,
                peak_growth=trace.peak_growth,
                exact_peak=trace.exact_peak,
                notes=notes,
                no_code_reason=why,
            )
            limits = pyfuncitem.stash.get(LIMITS_KEY, TestLimits())
            from pytest_memline._budget import check

            outcome = TestOutcome(table, limits, check(table, limits))
            pyfuncitem.stash[OUTCOME_KEY] = outcome
        if outcome.violations:
            from pytest_memline._budget import failure_text

            outcome.failed_by_budget = True
            text = failure_text(outcome.table, outcome.violations, with_table=s.tables != "none")
            pytest.fail(text, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when != "call":
            return report
        outcome = item.stash.get(OUTCOME_KEY, None)
        if outcome is None:
            return report
        table = outcome.table
        report.user_properties.append(("memline_peak_growth", table.peak_growth))
        # The failure text already holds the table when the budget failed the test. A test
        # that failed on its own gets it as a section, with any budget it also went over.
        if report.failed and not outcome.failed_by_budget and self.settings.tables != "none":
            from pytest_memline._budget import failure_text

            text = failure_text(table, outcome.violations) if outcome.violations else table.render()
            report.sections.append(("memline", text))
        report.memline = {  # type: ignore[attr-defined]
            "table": table.to_dict(),
            "over_budget": bool(outcome.violations),
        }
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "memline", None)
        if data is None or report.when != "call" or self.is_worker:
            return
        from pytest_memline.table import MemoryTable

        self.traced += 1
        if data.get("over_budget"):
            self.over_budget += 1
        table = MemoryTable.from_dict(data["table"])
        if self.settings.top > 0:
            for row in table.lines:
                assert row.increment is not None
                if row.increment <= 0:
                    continue
                self.counter += 1
                entry = (row.increment, self.counter, report.nodeid, row.lineno, row.contents.strip())
                if len(self.top) < self.settings.top:
                    heapq.heappush(self.top, entry)
                elif entry > self.top[0]:
                    heapq.heapreplace(self.top, entry)
        if self.settings.tables == "all":
            self.tables.append(table.render())

    # -- end of run --------------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from pytest_memline.table import mib

        tr = terminalreporter
        if self.tables:
            tr.write_sep("=", "memline: memory tables")
            for text in self.tables:
                tr.write_line(text)
                tr.write_line("")
        if self.settings.top > 0 and self.top:
            tr.write_sep("=", f"memline: top {len(self.top)} lines by increment")
            for inc, _, nodeid, lineno, contents in sorted(self.top, reverse=True):
                tr.write_line(f"{mib(inc):>12}  {nodeid}:{lineno}  {contents[:80]}")
        if self.traced:
            tr.write_line(
                f"memline: {self.traced} tests traced, {self.over_budget} over budget"
            )


def _python_at_least(major: int, minor: int) -> bool:
    import sys

    return sys.version_info >= (major, minor)
