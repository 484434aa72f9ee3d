"""Helpers of the compatibility tests (tests/test_compat_*.py): inner sessions and their reports.

Every inner session runs in a subprocess (`runpytest_subprocess`), in file order (pytest-randomly,
installed for these tests, is blocked unless a test asks for it) and with glibc's mmap threshold
fixed: by default glibc raises it after a large buffer is freed, so that a later, smaller
`bytearray` comes from memory the heap already holds and RSS does not move. These tests check
where memory is charged, not glibc's heuristics; the fixed threshold makes `bytearray(n)` grow
RSS by n wherever it runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

MIB = 1024 * 1024
#: An allocation of N MiB is asserted to within this (allocator and page-table overhead).
TOLERANCE = 2 * MIB
MONITORING = sys.version_info >= (3, 12)
DEFAULT_BACKEND = "monitoring" if MONITORING else "settrace"


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    # when this suite runs under xdist, inner sessions must not think they are xdist workers
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def need(module: str) -> Any:
    """The plugin module, or a skip naming what is missing (the `test` extra installs it)."""
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")


def run(pytester: pytest.Pytester, *args: str, report: str = "memline.json") -> pytest.RunResult:
    """An inner session with memline on and a JSON report of every traced test."""
    return pytester.runpytest_subprocess("--memline", f"--memline-json={report}", *args)


def traced(pytester: pytest.Pytester, report: str = "memline.json") -> dict[str, Any]:
    """The traced tests of the JSON report, by node id."""
    return json.loads((pytester.path / report).read_text())["tests"]


def row(test: dict[str, Any], contents: str) -> dict[str, Any]:
    """The table row whose stripped contents are `contents`."""
    rows = [r for r in test["table"]["lines"] if r["contents"].strip() == contents]
    assert len(rows) == 1, (contents, test["table"]["lines"])
    return rows[0]


def assert_mib(value: int | None, mib: float) -> None:
    assert value is not None
    assert abs(value - mib * MIB) < TOLERANCE, f"{value / MIB:.2f} MiB, expected {mib} MiB"
