"""Regression gating: comparing tests with a baseline, and saving baselines.

The comparison itself (row alignment by contents, thresholds, the diff) is done by the native
module; this module turns its answers into messages and keeps the run's summary.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_memline._preflight import count
from pytest_memline._settings import Settings, TestLimits, display
from pytest_memline.table import MemoryTable, mib, signed_mib

#: Statuses a traced test can have against a baseline.
STATUSES = ("regressed", "improved", "unchanged", "new", "refused")


def platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


def python_version() -> str:
    return platform.python_version()


def entry_of(
    table: MemoryTable, rootpath: Path, file_metric: str = "rss", outcome: str = "passed"
) -> dict[str, Any]:
    """A table as a baseline entry (the schema is checked by the native module). The entry
    names its metric only when it differs from the file's (a test with a ``metric=`` marker)."""
    filename = table.filename
    if os.path.isabs(filename):
        try:
            filename = Path(filename).relative_to(rootpath).as_posix()
        except ValueError:
            pass
    entry: dict[str, Any] = {} if table.metric == file_metric else {"metric": table.metric}
    return entry | {
        "outcome": outcome,
        "function": table.function,
        "filename": filename,
        "peak_growth": table.peak_growth,
        "lines": [r.to_dict() for r in table.rows],
    }


@dataclass(frozen=True)
class Comparison:
    """A test against its baseline entry."""

    status: str
    old_peak_growth: int | None = None
    changes: tuple[Mapping[str, Any], ...] = ()
    diff: tuple[tuple[str, str, bool], ...] = ()
    reason: str | None = None  # why the comparison was refused

    @property
    def regressed(self) -> bool:
        return self.status == "regressed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "old_peak_growth": self.old_peak_growth,
            "changes": [dict(c) for c in self.changes],
            "diff": [list(d) for d in self.diff],
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        return cls(
            status=str(d["status"]),
            old_peak_growth=d.get("old_peak_growth"),
            changes=tuple(d.get("changes") or ()),
            diff=tuple((str(t), str(x), bool(r)) for t, x, r in d.get("diff") or ()),
            reason=d.get("reason"),
        )


def group_changes(changes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Changes grouped by line (the test's peak growth is line None), largest growth first.

    Each group: ``line``, ``old_line``, ``contents``, ``parts`` [(what, old, new)], ``delta``
    (the largest growth among its parts)."""
    groups: dict[Any, dict[str, Any]] = {}
    for c in changes:
        g = groups.setdefault(
            c["line"],
            {"line": c["line"], "old_line": c.get("old_line"), "contents": c.get("contents") or "",
             "parts": [], "delta": None},
        )
        old, new = int(c["old"]), int(c["new"])
        g["parts"].append((str(c["what"]), old, new))
        if g["delta"] is None or new - old > g["delta"]:
            g["delta"] = new - old
    return sorted(groups.values(), key=lambda g: g["delta"], reverse=True)


def describe_group(group: Mapping[str, Any]) -> str:
    """``line 3 (line 2 in the baseline) `a = f()`: increment 10.0 MiB -> 30.0 MiB (+20.0 MiB,
    +200%), peak ...``"""
    if group["line"] is None:
        where = "test"
    else:
        where = f"line {group['line']}"
        if group.get("old_line") not in (None, group["line"]):
            where += f" (line {group['old_line']} in the baseline)"
        if group.get("contents"):
            where += f" `{str(group['contents'])[:60]}`"
    parts = []
    for what, old, new in group["parts"]:
        rel = f", {(new - old) / abs(old) * 100:+.0f}%" if old else ""
        parts.append(f"{what} {mib(old)} -> {mib(new)} ({signed_mib(new - old)}{rel})")
    return f"{where}: {', '.join(parts)}"


def change_message(group: Mapping[str, Any], limits: TestLimits) -> str:
    """One line: which line, old, new, the tolerance and where it came from."""
    from pytest_memline import _memline

    return (
        f"memline: {describe_group(group)} against the baseline, over the tolerance of "
        f"{limits.tolerance} ({limits.tolerance.source}) and the noise floor of "
        f"{_memline.format_size(limits.noise_floor.value)} ({limits.noise_floor.source})"
    )


def render_diff(comparison: Comparison, markup: Any = None) -> str:
    """The diff as text; ``markup(text, **style)`` (a TerminalWriter's) colours it."""
    lines = []
    for tag, text, regressed in comparison.diff:
        line = f"{tag}{text}" if tag != "@" else text
        if markup is not None:
            if tag == "@":
                line = markup(line, cyan=True)
            elif tag == "-":
                line = markup(line, red=True)
            elif tag == "+":
                line = markup(line, green=True, bold=regressed)
        lines.append(line)
    return "\n".join(lines)


class BaselineError(Exception):
    pass


@dataclass
class Gate:
    """The baseline of a run (when comparing) and the run's summary (on the controller)."""

    settings: Settings
    rootpath: Path
    baseline: Any = None  # _memline.Baseline
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    changes: list[tuple[int, str, Mapping[str, Any]]] = field(default_factory=list)  # groups
    new_tests: list[str] = field(default_factory=list)
    to_save: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    saved: str | None = None

    def load(self) -> None:
        """Loads the baseline to compare with; a usage error when it cannot be used."""
        from pytest_memline import _memline

        if self.settings.compare is None:
            return
        path = display(self.settings.compare)
        try:
            baseline = _memline.Baseline.load(self.settings.compare)
        except FileNotFoundError:
            self.notes.append(
                f"memline: warning: baseline {path} does not exist; every test is reported as new"
            )
            return
        except ValueError as exc:
            raise pytest.UsageError(f"memline: {exc}") from None
        if baseline.metric != self.settings.metric:
            raise pytest.UsageError(
                f"memline: baseline {path} holds the {baseline.metric!r} metric and this run "
                f"measures {self.settings.metric!r}: comparing across metrics is refused"
            )
        if baseline.platform != platform_tag():
            raise pytest.UsageError(
                f"memline: baseline {path} was recorded on {baseline.platform} and this is "
                f"{platform_tag()}: RSS is not comparable across platforms; save a baseline here"
            )
        if baseline.python != python_version():
            self.notes.append(
                f"memline: note: baseline {path} was recorded with Python {baseline.python}, "
                f"this is {python_version()}"
            )
        self.baseline = baseline

    def compare(self, nodeid: str, table: MemoryTable, limits: TestLimits) -> Comparison | None:
        if self.settings.compare is None:
            return None
        if self.baseline is None or nodeid not in self.baseline:
            return Comparison("new")
        try:
            answer = self.baseline.compare(
                nodeid,
                json.dumps(entry_of(table, self.rootpath, self.settings.metric)),
                tolerance=limits.tolerance.value,
                noise_floor=limits.noise_floor.value,
                metric=table.metric,
            )
        except ValueError as exc:
            return Comparison("refused", reason=str(exc))
        assert answer is not None
        return Comparison(
            status=answer["status"],
            old_peak_growth=answer["old_peak_growth"],
            changes=tuple(answer["changes"]),
            diff=tuple(answer["diff"]),
        )

    # -- the controller's side ---------------------------------------------------------------

    def record(self, nodeid: str, table: MemoryTable, passed: bool, comparison: Comparison | None) -> None:
        self.seen.add(nodeid)
        if comparison is not None:
            self.counts[comparison.status] += 1
            if comparison.status == "new":
                self.new_tests.append(nodeid)
            for group in group_changes(comparison.changes):
                self.changes.append((group["delta"], nodeid, group))
            if comparison.status == "improved" and comparison.old_peak_growth is not None:
                old, new = comparison.old_peak_growth, table.peak_growth
                group = {"line": None, "parts": [("peak growth", old, new)], "delta": new - old}
                self.changes.append((new - old, nodeid, group))
        if self.settings.save is not None and passed:
            self.to_save[nodeid] = entry_of(table, self.rootpath, self.settings.metric)

    def gone(self, collected: Iterable[str]) -> list[str]:
        """Baseline entries whose test is gone: its file was collected but it was not, or its
        file no longer exists."""
        if self.baseline is None:
            return []
        ids = set(collected) | self.seen
        files = {i.split("::", 1)[0] for i in ids}
        out = []
        for bid in self.baseline.test_ids():
            if bid in ids:
                continue
            file = bid.split("::", 1)[0]
            if file in files or not (self.rootpath / file).exists():
                out.append(bid)
        return out

    def biggest(self, n: int = 5) -> list[tuple[int, str, Mapping[str, Any]]]:
        # equal changes by test id and line: the same list whatever order the reports came in
        return sorted(
            self.changes, key=lambda c: (-abs(c[0]), c[1], c[2]["line"] or 0)
        )[:n]

    def save(self) -> list[str]:
        """Writes the baseline; returns lines for the summary."""
        from pytest_memline import _memline

        if self.settings.save is None:
            return []
        path = display(self.settings.save)
        if not self.to_save:
            return [f"memline: nothing to save to {path} (no traced test passed)"]
        report = _memline.save_baseline(
            self.settings.save,
            self.settings.metric,
            python_version(),
            platform_tag(),
            json.dumps(self.to_save),
        )
        lines = []
        if report["backup"]:
            lines.append(
                f"memline: warning: the existing baseline {path} was unusable "
                f"({report['backup_reason']}); it was moved to {report['backup']}"
            )
        kept = f" (kept {count(report['kept'], 'other entry')})" if report["kept"] else ""
        lines.append(f"memline: saved {count(report['written'], 'test')} to {path}{kept}")
        self.saved = path
        return lines
