"""Regression gating: comparing tests with a baseline, and saving baselines.

A baseline keeps the samples of the last few saved runs of every test (``samples``, 5 by
default). The comparison itself (row alignment by contents, the bands of the samples, the
thresholds, the diff) is done by the native module; this module turns its answers into
messages and keeps the run's summary.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_memline._preflight import count
from pytest_memline._settings import Settings, TestLimits, display
from pytest_memline._units import format_size, mib, printable, signed_mib
from pytest_memline.table import MemoryTable, render_row

#: Statuses a traced test can have against a baseline. "unconfirmed": it looked regressed, but
#: the regression did not reproduce when the test was measured again; "accepted": it regressed
#: and ``accept`` names it.
STATUSES = ("regressed", "improved", "unchanged", "new", "accepted", "unconfirmed", "refused")


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
        **({"retained": table.around.retained} if table.around is not None and table.around.retained is not None else {}),
        "lines": [r.to_dict() for r in table.rows],
    }


@dataclass(frozen=True)
class Comparison:
    """A test against its baseline entry."""

    status: str
    old_peak_growth: int | None = None  # the highest sample
    changes: tuple[Mapping[str, Any], ...] = ()
    diff: tuple[tuple[str, str, bool], ...] = ()
    reason: str | None = None  # why the comparison was refused
    samples: int = 0  # how many saved runs the baseline entry holds
    #: the re-runs of a test that looked regressed: how many, and how many reproduced it
    reruns: int = 0
    reproduced: int = 0
    rerun_error: str | None = None  # why the re-runs could not measure

    @property
    def regressed(self) -> bool:
        return self.status == "regressed"

    @property
    def suspected(self) -> bool:
        """It grew past the thresholds (whether or not that was confirmed or accepted)."""
        return self.status in ("regressed", "accepted", "unconfirmed")

    def confirmation(self) -> str | None:
        """``confirmed in 3 of 3 re-runs``, or why the re-runs could not tell; None without."""
        if self.rerun_error is not None:
            return f"not measured again: {self.rerun_error}"
        if not self.reruns:
            return None
        verdict = "confirmed" if self.status != "unconfirmed" else "not confirmed: seen again"
        return f"{verdict} in {self.reproduced} of {self.reruns} re-runs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "old_peak_growth": self.old_peak_growth,
            "samples": self.samples,
            "changes": [dict(c) for c in self.changes],
            "diff": [list(d) for d in self.diff],
            "reason": self.reason,
            "reruns": self.reruns,
            "reproduced": self.reproduced,
            "rerun_error": self.rerun_error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        return cls(
            status=str(d["status"]),
            old_peak_growth=d.get("old_peak_growth"),
            changes=tuple(d.get("changes") or ()),
            diff=tuple((str(t), str(x), bool(r)) for t, x, r in d.get("diff") or ()),
            reason=d.get("reason"),
            samples=int(d.get("samples") or 0),
            reruns=int(d.get("reruns") or 0),
            reproduced=int(d.get("reproduced") or 0),
            rerun_error=d.get("rerun_error"),
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
        g.setdefault("bands", []).append(
            (int(c.get("lo", old)), old, int(c.get("samples") or 1), int(c.get("allowed", old)))
        )
        if g["delta"] is None or new - old > g["delta"]:
            g["delta"] = new - old
    return sorted(groups.values(), key=lambda g: g["delta"], reverse=True)


def describe_group(group: Mapping[str, Any], code: Callable[[str], str] | None = None) -> str:
    """``line 3 (line 2 in the baseline) `a = f()`: increment 10.0 MiB -> 30.0 MiB (+20.0 MiB,
    +200%), peak ...``; ``code`` quotes the line's contents (Markdown passes its own)."""
    quote = code or (lambda text: f"`{printable(text)}`")
    if group["line"] is None:
        where = "test"
    else:
        where = f"line {group['line']}"
        if group.get("old_line") not in (None, group["line"]):
            where += f" (line {group['old_line']} in the baseline)"
        if group.get("contents"):
            where += f" {quote(str(group['contents'])[:60])}"
    parts = []
    for what, old, new in group["parts"]:
        rel = f", {(new - old) / abs(old) * 100:+.0f}%" if old else ""
        parts.append(f"{what} {mib(old)} -> {mib(new)} ({signed_mib(new - old)}{rel})")
    return f"{where}: {', '.join(parts)}"


def change_message(group: Mapping[str, Any], limits: TestLimits) -> str:
    """One line: which line, old, new, what the baseline's samples allowed and why."""
    return f"memline: {describe_group(group)} against the baseline, {allowance(group, limits)}"


def allowance(group: Mapping[str, Any], limits: TestLimits) -> str:
    """What the baseline allowed the (first) grown value to reach, and what set the margin:
    the noise floor, the spread of the saved runs, or the relative tolerance."""
    bands = group.get("bands") or []
    if not bands:  # a change recorded before bands existed (an old JSON report)
        return (
            f"over the tolerance of {limits.tolerance} ({limits.tolerance.source}) and the "
            f"noise floor of {format_size(limits.noise_floor.value)} "
            f"({limits.noise_floor.source})"
        )
    lo, hi, n, allowed = bands[0]
    runs = "1 saved run" if n == 1 else f"highest of {n} saved runs"
    margin = allowed - hi
    floor = limits.noise_floor.value
    relative = limits.tolerance.value * abs(hi)
    if margin == hi - lo and margin > floor and margin >= relative:
        why = f"the {mib(margin)} those runs spread over"
    elif relative > floor and margin <= relative + 1:
        why = f"the tolerance of {limits.tolerance} ({limits.tolerance.source})"
    else:
        why = f"the noise floor of {format_size(floor)} ({limits.noise_floor.source})"
    return f"over the {mib(allowed)} allowed ({runs} + {why})"


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


@dataclass
class Gate:
    """The baseline of a run (when comparing) and the run's summary (on the controller)."""

    settings: Settings
    rootpath: Path
    baseline: Any = None  # _memline.Baseline
    notes: list[str] = field(default_factory=list)
    #: set when the baseline to compare with does not exist (a warning in pytest's summary)
    missing: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    changes: list[tuple[int, str, Mapping[str, Any]]] = field(default_factory=list)  # groups
    new_tests: list[str] = field(default_factory=list)
    to_save: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    #: files the command line selected part of (``file.py::test_x``): their other tests are
    #: not gone, only unselected
    partial_files: set[str] = field(default_factory=set)
    #: tests that grew but pass: accepted, or not reproduced by the re-runs (first group each)
    doubtful: list[tuple[str, Mapping[str, Any], Comparison]] = field(default_factory=list)

    def load(self) -> None:
        """Loads the baseline to compare with; a usage error when it cannot be used."""
        from pytest_memline import _memline

        if self.settings.compare is None:
            return
        path = display(self.settings.compare)
        try:
            baseline = _memline.Baseline.load(self.settings.compare)
        except FileNotFoundError:
            if self.settings.missing_baseline == "fail":
                raise pytest.UsageError(
                    f"memline: baseline {path} does not exist, and missing_baseline = \"fail\": "
                    "nothing to compare with (save one with --memline-save first)"
                ) from None
            self.missing = (
                f"memline: baseline {path} does not exist; every test is reported as new and none "
                "can regress (--memline-missing-baseline=fail makes this an error)"
            )
            self.notes.append(f"memline: warning: {self.missing.removeprefix('memline: ')}")
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
        if baseline.version < _memline.BASELINE_VERSION:
            self.notes.append(
                f"memline: note: baseline {path} is in format version {baseline.version}: read "
                f"as one saved run per test; the next --memline-save rewrites it in version "
                f"{_memline.BASELINE_VERSION}, keeping its entries"
            )
        self.baseline = baseline

    def describe(self) -> str:
        """``12 tests, 5 saved runs each`` / ``12 tests, 1 to 5 saved runs each``."""
        if self.baseline is None:
            return "no baseline"
        ids = self.baseline.test_ids()
        counts = sorted({self.baseline.samples(i) for i in ids})
        if not counts:
            return "no tests"
        runs = (
            count(counts[0], "saved run")
            if len(counts) == 1
            else f"{counts[0]} to {counts[-1]} saved runs"
        )
        return f"{count(len(ids), 'test')}, {runs} each"

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
        status = answer["status"]
        if status == "regressed" and self.settings.accepts(nodeid):
            status = "accepted"
        return Comparison(
            status=status,
            old_peak_growth=answer["old_peak_growth"],
            changes=tuple(answer["changes"]),
            diff=tuple(
                (tag, "@@ ... @@" if row is None else render_row(row, regressed), regressed)
                for tag, row, regressed in answer["diff"]
            ),
            samples=int(answer["samples"]),
        )

    def reproduces(self, nodeid: str, table: MemoryTable, limits: TestLimits, first: Comparison) -> bool:
        """Whether a re-run's table shows the regression again: one of the values that grew in
        the first run (the same line and what) grew past the thresholds again."""
        again = self.compare(nodeid, table, limits)
        if again is None or not again.suspected:
            return False
        key = lambda c: (c.get("contents") or "", c["what"], c["line"] is None)  # noqa: E731
        return bool({key(c) for c in first.changes} & {key(c) for c in again.changes})

    # -- the controller's side ---------------------------------------------------------------

    def record(
        self,
        nodeid: str,
        table: MemoryTable,
        passed: bool,
        comparison: Comparison | None,
        thresholds: Mapping[str, Any] | None = None,
    ) -> None:
        self.seen.add(nodeid)
        if comparison is not None:
            self.counts[comparison.status] += 1
            if comparison.status == "new":
                self.new_tests.append(nodeid)
            groups = group_changes(comparison.changes)
            if comparison.status in ("accepted", "unconfirmed") and groups:
                self.doubtful.append((nodeid, groups[0], comparison))
            if comparison.status != "unconfirmed":
                for group in groups:
                    self.changes.append((group["delta"], nodeid, group))
            if comparison.status == "improved" and comparison.old_peak_growth is not None:
                old, new = comparison.old_peak_growth, table.peak_growth
                group = {"line": None, "parts": [("peak growth", old, new)], "delta": new - old}
                self.changes.append((new - old, nodeid, group))
        if self.settings.save is not None and passed:
            t = thresholds or {}
            self.to_save[nodeid] = {
                "table": entry_of(table, self.rootpath, self.settings.metric),
                "tolerance": float(t.get("tolerance", self.settings.tolerance.value)),
                "noise_floor": int(t.get("noise_floor", self.settings.noise_floor.value)),
                # an accepted change: this run's numbers replace the saved runs'
                "reset": comparison is not None and comparison.status == "accepted",
            }

    def select(self, args: Sequence[str], invocation_dir: Path) -> None:
        """Notes the files of which the command line selected only some tests."""
        for arg in args:
            path, sep, _ = str(arg).partition("::")
            if not sep:
                continue
            full = (invocation_dir / path).resolve()
            try:
                self.partial_files.add(full.relative_to(self.rootpath.resolve()).as_posix())
            except ValueError:
                self.partial_files.add(path)

    def gone(self, collected: Iterable[str]) -> list[str]:
        """Baseline entries whose test is gone: its file no longer exists, or the file was
        collected as a whole (not only some of its tests, by node id) and the test was not."""
        baseline = self.baseline
        if baseline is None and self.settings.save is not None:
            baseline = self._saved_baseline()
        if baseline is None:
            return []
        ids = set(collected) | self.seen
        files = {i.split("::", 1)[0] for i in ids}
        out = []
        for bid in baseline.test_ids():
            if bid in ids:
                continue
            file = bid.split("::", 1)[0]
            if not (self.rootpath / file).exists():
                out.append(bid)
            elif file in files and file not in self.partial_files:
                out.append(bid)
        return out

    def _saved_baseline(self) -> Any:
        """The baseline being saved to, read to find its gone entries (None if unusable)."""
        from pytest_memline import _memline

        assert self.settings.save is not None
        try:
            return _memline.Baseline.load(self.settings.save)
        except (FileNotFoundError, ValueError):
            return None

    def biggest(self, n: int = 5) -> list[tuple[int, str, Mapping[str, Any]]]:
        # equal changes by test id and line: the same list whatever order the reports came in
        return sorted(
            self.changes, key=lambda c: (-abs(c[0]), c[1], c[2]["line"] or 0)
        )[:n]

    def save(self, gone: Sequence[str] = ()) -> list[str]:
        """Writes the baseline (with ``prune``, without the ``gone`` entries); returns lines
        for the summary."""
        from pytest_memline import _memline

        if self.settings.save is None:
            return []
        path = display(self.settings.save)
        prune = list(gone) if self.settings.prune else []
        if not self.to_save and not prune:
            return [f"memline: nothing to save to {path} (no traced test passed)"]
        report = _memline.save_baseline(
            self.settings.save,
            self.settings.metric,
            python_version(),
            platform_tag(),
            json.dumps(self.to_save),
            keep=self.settings.samples,
            prune=prune,
        )
        lines = []
        if report["backup"]:
            lines.append(
                f"memline: warning: the existing baseline {path} was unusable "
                f"({report['backup_reason']}); it was moved to {report['backup']}"
            )
        if report["migrated_from"] is not None:
            lines.append(
                f"memline: baseline {path} rewritten from format version "
                f"{report['migrated_from']} to {_memline.BASELINE_VERSION} (each old entry is "
                f"one saved run)"
            )
        extras = []
        if report["kept"]:
            extras.append(f"kept {count(report['kept'], 'other entry')}")
        if report["pruned"]:
            extras.append(f"removed {count(report['pruned'], 'gone entry')}")
        resets = sum(1 for e in self.to_save.values() if e["reset"])
        if resets:
            extras.append(f"{count(resets, 'accepted change')} replacing the saved runs")
        more = f" ({'; '.join(extras)})" if extras else ""
        runs = f"up to {self.settings.samples} saved runs per test"
        lines.append(f"memline: saved {count(report['written'], 'test')} to {path}, {runs}{more}")
        return lines
