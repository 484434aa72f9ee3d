"""``isolate = "fork"``: every traced test body runs in a fork of a process that has run no test
body, so that its numbers do not depend on which tests ran before it.

Set-up and teardown (fixtures) run in the pytest process as usual; only the call phase is
forked. The child traces the body, builds the call's report as pytest would (captured output,
skips, xfails, the memory table), sends it to the parent as pytest's serialisable report, and
leaves with ``os._exit``. The parent reports it in place of its own. What the body changes
(module globals, a fixture's object, a cache) stays in the child.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline._fork import describe, kill, reap

if TYPE_CHECKING:
    from pytest_memline._manager import MemlinePlugin

#: The child's call report (serialised), kept on the item until the parent's report replaces it.
REPORT_KEY = pytest.StashKey[dict[str, Any]]()


class Isolator:
    """Registered beside the manager when isolating: owns the fork of each traced body."""

    def __init__(self, plugin: MemlinePlugin) -> None:
        self.plugin = plugin
        self.child_fd: int | None = None
        self.child_warnings: list[dict[str, Any]] = []

    @property
    def in_child(self) -> bool:
        return self.child_fd is not None

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if self.in_child or self.plugin.measure.tracing is not None:
            # the nested call in the child, or a re-measurement: the next implementation runs
            # the test
            return None
        return self._fork(pyfuncitem)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        if self.in_child:  # pragma: no cover - a child that did not leave after its report
            os._exit(70)

    def _fork(self, item: pytest.Function) -> bool:
        measure = self.plugin.measure
        # once here, not in every child: the child inherits a collected heap and a trimmed malloc
        measure.settle(measure.plan(item).metric)
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork()"
            pid = os.fork()
        if pid == 0:  # pragma: no cover - reports through the pipe
            os.close(read_fd)
            self.child_fd = write_fd
            return self._child(item)
        os.close(write_fd)
        try:
            data = _read(read_fd)
        except BaseException:
            # interrupted (Ctrl-C, pytest-timeout's signal): the child goes too
            kill(pid)
            raise
        finally:
            os.close(read_fd)
        status = reap(pid)
        if not data:
            pytest.fail(
                f"memline: the forked process running this test's body {describe(status)} "
                f"before it reported (isolate = \"fork\"); run it with --memline-isolate=off to "
                f"see it fail in place",
                pytrace=False,
            )
        answer = json.loads(data.decode("utf-8"))
        _emit(answer.get("warnings") or [])
        if answer.get("raise") == "KeyboardInterrupt":
            raise KeyboardInterrupt(answer.get("message") or "")
        if answer.get("raise") == "Exit":
            pytest.exit(answer.get("message") or "exit in an isolated test")
        report = answer["report"]
        if self._needs_confirming(report):
            report = self._reconfirm(item, report)
        item.stash[REPORT_KEY] = report
        return True

    def _needs_confirming(self, report: dict[str, Any]) -> bool:
        """The body regressed against the baseline, and that alone failed it."""
        payload = report.get("memline") or {}
        comparison = payload.get("comparison") or {}
        return (
            self.plugin.settings.confirm > 0
            and comparison.get("status") == "regressed"
            and not payload.get("violations")
            and report.get("outcome") == "failed"
            and isinstance(report.get("longrepr"), str)
            and str(report["longrepr"]).startswith("memline:")
        )

    def _reconfirm(self, item: pytest.Function, report: dict[str, Any]) -> dict[str, Any]:
        """Measures the body ``confirm`` more times, each in a fresh fork of this process as
        the first time, and rewrites the child's report with what they showed."""
        from pytest_memline._gate import Comparison
        from pytest_memline._measure import LIMITS_KEY, SECTION_DIFF, SECTION_TABLE

        measure = self.plugin.measure
        payload = dict(report["memline"])
        first = Comparison.from_dict(payload["comparison"])
        again = measure.reconfirm(
            item,
            measure.plan(item),
            first,
            item.stash[LIMITS_KEY],
            float(report.get("duration") or 0.0),
        )
        payload["comparison"] = again.to_dict()
        report = dict(report, memline=payload)
        if again.status == "unconfirmed":
            payload["marked"] = []
            ours = (SECTION_DIFF, SECTION_TABLE)
            report["outcome"] = "passed"
            report["longrepr"] = None
            report["sections"] = [s for s in report.get("sections") or () if s[0] not in ours]
        elif again.confirmation():
            report["longrepr"] = f"{report['longrepr']}\nmemline: the regression was {again.confirmation()}"
        return report

    def _child(self, item: pytest.Function) -> bool:  # pragma: no cover - runs in the child
        self.plugin.measure.start_child()
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as log:
                caught = log
                item.ihook.pytest_pyfunc_call(pyfuncitem=item)
        except (KeyboardInterrupt, pytest.exit.Exception) as exc:
            kind = "KeyboardInterrupt" if isinstance(exc, KeyboardInterrupt) else "Exit"
            self.send({"raise": kind, "message": str(exc)})
        finally:
            self.child_warnings = [_warning(w) for w in caught]
        return True

    def finish(self, report: pytest.TestReport) -> None:  # pragma: no cover - in the child
        """In the child: sends the call's report to the parent and leaves."""
        config = self.plugin.config
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        self.send({"report": data, "warnings": self.child_warnings})

    def send(self, answer: dict[str, Any]) -> None:  # pragma: no cover - in the child
        code = 0
        try:
            assert self.child_fd is not None
            view = memoryview(json.dumps(answer, default=str).encode("utf-8"))
            while view:
                view = view[os.write(self.child_fd, view) :]
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    def replace_report(
        self, item: pytest.Item, report: pytest.TestReport
    ) -> pytest.TestReport:
        """In the parent: the child's call report instead of the parent's empty one."""
        data = item.stash.get(REPORT_KEY, None)
        if data is None:
            return report
        del item.stash[REPORT_KEY]
        if isinstance(data.get("longrepr"), list):
            # a skip's (path, line, reason): a tuple before it went through JSON
            data = dict(data, longrepr=tuple(data["longrepr"]))
        config = self.plugin.config
        child = config.hook.pytest_report_from_serializable(config=config, data=data)
        if child is None:
            return report
        # junitxml reads the teardown report, which takes the item's properties
        for prop in child.user_properties:
            if prop not in item.user_properties:
                item.user_properties.append(prop)
        return child


def _warning(w: warnings.WarningMessage) -> dict[str, Any]:
    category = w.category
    return {
        "message": str(w.message),
        "module": category.__module__,
        "category": category.__qualname__,
        "filename": w.filename,
        "lineno": w.lineno,
    }


def _emit(found: list[dict[str, Any]]) -> None:
    """Warns again, in the parent, what the child's body warned (pytest records it there)."""
    import importlib

    for w in found:
        category: Any = UserWarning
        try:
            obj: Any = importlib.import_module(str(w["module"]))
            for part in str(w["category"]).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type) and issubclass(obj, Warning):
                category = obj
        except (ImportError, AttributeError):
            pass
        warnings.warn_explicit(str(w["message"]), category, str(w["filename"]), int(w["lineno"]))


def _read(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
