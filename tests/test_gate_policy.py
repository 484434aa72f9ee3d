"""The gate's policy code, without a pytest session: messages, the margin's explanation,
confirmation, accept globs, gone versus unselected, the bounds of the options. Fast: these run
in milliseconds and catch a policy bug before the end-to-end sessions do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pytest_memline import _memline
from pytest_memline._gate import Comparison, Gate, allowance, change_message, group_changes
from pytest_memline._settings import Limit, Settings, TestLimits, Tolerance
from pytest_memline._keys import MAX_SAMPLES, _bounded_int

MIB = 1024 * 1024


def change(what: str, old: int, new: int, lo: int | None = None, samples: int = 1, allowed: int | None = None, line: int | None = 4) -> dict:
    return {
        "line": line,
        "old_line": line,
        "contents": "a = f()",
        "what": what,
        "old": old,
        "new": new,
        "lo": old if lo is None else lo,
        "samples": samples,
        "allowed": old + MIB if allowed is None else allowed,
    }


def limits(tolerance: float = 0.0, floor: int = MIB) -> TestLimits:
    return TestLimits(tolerance=Tolerance(tolerance, "default"), noise_floor=Limit(floor, "default"))


@pytest.mark.parametrize(
    ("c", "lim", "expected"),
    [
        (change("increment", 10 * MIB, 30 * MIB), limits(),
         "over the 11.0 MiB allowed (1 saved run + the noise floor of 1 MiB (default))"),
        (change("increment", 10 * MIB, 30 * MIB, allowed=12 * MIB), limits(floor=2 * MIB),
         "over the 12.0 MiB allowed (1 saved run + the noise floor of 2 MiB (default))"),
        (change("increment", 5 * MIB, 9 * MIB, lo=3 * MIB, samples=5, allowed=7 * MIB), limits(),
         "over the 7.0 MiB allowed (highest of 5 saved runs + the 2.0 MiB those runs spread over)"),
        (change("increment", 100 * MIB, 130 * MIB, allowed=120 * MIB), limits(tolerance=0.2),
         "over the 120.0 MiB allowed (1 saved run + the tolerance of 20% (default))"),
    ],
    ids=["floor", "floor-2", "spread", "tolerance"],
)
def test_the_message_says_what_set_the_margin(c: dict, lim: TestLimits, expected: str) -> None:
    group = group_changes([c])[0]
    assert allowance(group, lim) == expected
    assert change_message(group, lim).startswith("memline: line 4 `a = f()`: increment ")


def test_groups_keep_every_value_and_sort_by_growth() -> None:
    groups = group_changes(
        [change("increment", 0, 2 * MIB), change("peak", 0, 9 * MIB), change("peak growth", 0, 5 * MIB, line=None)]
    )
    assert [g["line"] for g in groups] == [4, None]
    assert groups[0]["delta"] == 9 * MIB and len(groups[0]["bands"]) == 2


def test_confirmation_wording() -> None:
    base = Comparison("regressed", samples=3)
    assert base.confirmation() is None
    assert Comparison("regressed", reruns=3, reproduced=2).confirmation() == "confirmed in 2 of 3 re-runs"
    assert (
        Comparison("unconfirmed", reruns=3, reproduced=1).confirmation()
        == "not confirmed: seen again in 1 of 3 re-runs"
    )
    assert Comparison("regressed", rerun_error="boom").confirmation() == "not measured again: boom"
    # a round trip through the report keeps it
    again = Comparison.from_dict(json.loads(json.dumps(Comparison("unconfirmed", reruns=3, reproduced=1).to_dict())))
    assert again.status == "unconfirmed" and again.reruns == 3 and again.reproduced == 1
    assert Comparison("accepted").suspected and not Comparison("accepted").regressed


def test_accept_globs() -> None:
    s = Settings(accept=("tests/test_etl.py::*", "tests/test_x.py::test_y"))
    assert s.accepts("tests/test_etl.py::test_load[big]")
    assert s.accepts("tests/test_x.py::test_y")
    assert not s.accepts("tests/test_x.py::test_y2")


def test_gone_is_not_unselected(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    for name in ("test_a.py", "test_b.py"):
        (tmp_path / "tests" / name).write_text("")
    base = tmp_path / "baseline.json"
    entry = {"outcome": "passed", "function": "f", "filename": "f", "peak_growth": 1, "lines": []}
    ids = ["tests/test_a.py::test_1", "tests/test_a.py::test_2", "tests/test_b.py::test_3", "tests/test_gone.py::test_4"]
    _memline.save_baseline(
        str(base), "rss", "3", "x",
        json.dumps({i: {"table": entry, "tolerance": 0.0, "noise_floor": MIB} for i in ids}),
    )
    gate = Gate(Settings(compare=str(base)), tmp_path)
    gate.baseline = _memline.Baseline.load(str(base))
    # the whole suite: test_2 was not collected from a collected file, test_gone's file is gone
    assert gate.gone(["tests/test_a.py::test_1", "tests/test_b.py::test_3"]) == [
        "tests/test_a.py::test_2",
        "tests/test_gone.py::test_4",
    ]
    # `pytest tests/test_a.py::test_1`: the rest of test_a.py was not selected, not gone
    gate.select(["tests/test_a.py::test_1"], tmp_path)
    assert gate.partial_files == {"tests/test_a.py"}
    assert gate.gone(["tests/test_a.py::test_1"]) == ["tests/test_gone.py::test_4"]


def test_option_bounds() -> None:
    parse = _bounded_int(1, MAX_SAMPLES)
    assert parse("5") == 5
    for bad, why in [("0", "out of range; expected 1 to 100"), ("x", "not a whole number"), ("-1", "negative")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse(bad)
    assert _memline.BASELINE_KEEP == Settings().samples


def test_the_baseline_text_is_version_2_with_one_line_per_row(tmp_path: Path) -> None:
    rows = [
        {"line": 1, "contents": "def t():", "increment": None, "peak": None, "occurrences": 0, "mem_usage": None},
        {"line": 2, "contents": "    a = f()", "increment": 3 * MIB, "peak": 4 * MIB, "occurrences": 1, "mem_usage": 50 * MIB},
    ]
    entry = {"outcome": "passed", "function": "t", "filename": "t.py", "peak_growth": 4 * MIB, "lines": rows}
    path = tmp_path / "b.json"
    for _ in range(3):
        report = _memline.save_baseline(
            str(path), "rss", "3.12", "linux", json.dumps({"t.py::t": {"table": entry, "tolerance": 0.0, "noise_floor": MIB}}), keep=2
        )
    assert report["written"] == 1 and report["migrated_from"] is None
    text = path.read_text()
    assert '"version": 2,' in text
    assert '{"line":2,"contents":"    a = f()","occurrences":1,"mem_usage":52428800,"increment":[3145728,3145728],"peak":[4194304,4194304]}' in text
    b = _memline.Baseline.load(str(path))
    assert b.samples("t.py::t") == 2 and b.samples("nope") == 0 and b.version == 2
    with pytest.raises(ValueError, match="keep must be at least 1"):
        _memline.save_baseline(str(path), "rss", "3", "x", "{}", keep=0)


def test_sizes_and_rows_render_in_one_place() -> None:
    from pytest_memline._units import format_size
    from pytest_memline.table import LineRow, render_row

    assert [format_size(n) for n in (50 << 20, 160_000_000, -160_000_000, 512 << 10, 100, 3 << 29, 0)] == [
        "50 MiB", "152.6 MiB", "-152.6 MiB", "512 KiB", "100 B", "1.5 GiB", "0 B",
    ]
    for b in (0, 1, 1023, 1 << 20, 5 << 30, 123_456_789):  # what is formatted parses back
        assert abs(_memline.parse_size(format_size(b)) - b) <= b / 20 + 1
    row = LineRow(12, "    b = [2] * (2 * 10 ** 7)", 100 * MIB, 160_000_000, 160_000_000, 1)
    assert render_row(row) == (
        "    12    100.0 MiB    152.6 MiB    152.6 MiB            1       b = [2] * (2 * 10 ** 7)"
    )
    assert render_row(row, marked=True).startswith(">   12 ")
    assert render_row(LineRow(3, "def f():")) == "     3" + " " * 55 + "def f():"
    assert render_row(LineRow(4, "\tx" + "y" * 300)).endswith("    x" + "y" * 194 + "\u2026")
    # the one row type: the native LineRow, with the baseline's dict form
    assert LineRow.from_dict(row.to_dict()) == row
    assert row.to_dict()["line"] == 12 and row.ran and not LineRow(1, "x").ran


def test_every_metric_is_described_on_both_sides() -> None:
    from pytest_memline import _keys
    from pytest_memline._metrics import METRICS

    assert list(METRICS) == _memline.METRICS == list(_keys.METRICS)
    assert _keys.BY_NAME["metric"].arg == tuple(METRICS)


def test_a_fork_maps_the_parents_file_pages_before_it_measures() -> None:
    """fork does not copy the page-table entries of code files: without the prefault a forked
    body's RSS would grow by every page of code it runs (7 MiB on a one-line pandas test)."""
    import os

    def shared_pages() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[2])

    before = shared_pages()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        try:
            lost = shared_pages()
            mapped = _memline._prefault_like_parent()
            os.write(write_fd, f"{lost} {mapped} {shared_pages()}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    got_lost, got_mapped, got_after = os.read(read_fd, 100).decode().split()
    os.waitpid(pid, 0)
    assert int(got_lost) < before  # the child starts without them
    assert got_mapped != "None" and int(got_mapped) > 0
    assert abs(int(got_after) - before) <= before // 50 + 16, (before, got_lost, got_mapped, got_after)


def _collections(monkeypatch: pytest.MonkeyPatch, blocks: int, metric: str, times: int) -> list[int]:
    """The generations the collector ran for ``times`` calls of Measurer.settle."""
    import gc
    import types

    from pytest_memline import _measure

    monkeypatch.setattr(_measure, "FULL_COLLECTION_BLOCKS", blocks)
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    state = types.SimpleNamespace(_full_collections=True, malloc_fixed=False)
    gc.callbacks.append(note)
    try:
        for _ in range(times):
            _measure.Measurer.settle(state, metric)  # type: ignore[arg-type]
    finally:
        gc.callbacks.remove(note)
    return seen


def test_full_collections_stop_when_the_heap_is_large_and_never_by_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    # a small heap (the threshold above what this process holds): full collections every time
    assert _collections(monkeypatch, sys.getallocatedblocks() * 10, "rss", 3) == [2, 2, 2]
    # a large one: one full collection, then the young generations only, for good
    assert _collections(monkeypatch, 1, "rss", 3) == [2, 1, 1]
    # the heap metric always collects fully: the same collector schedule on every run
    assert _collections(monkeypatch, 1, "heap", 3) == [2, 2, 2]
