"""The tracer's own memory stays bounded: it keeps one record per distinct line, not per line
event, so 10,000,000 line events add less than 1 MiB to RSS (issue 4, target 5).

The traced loop runs in a pytest subprocess so that the tracer never competes with the outer
pytest. The loop allocates nothing that outlives an iteration; whatever RSS gains between
before the trace and after it is the tracer's. No timing is asserted here: speed is measured by
bench/run.py, not by tests. The in-line peak is off: it changes which syscalls a line makes,
not what the tracer keeps, and it would double the run time.
"""

from __future__ import annotations

import sys

import pytest

INNER = """
import os
import sys

import pytest

from pytest_memline import _memline

MIB = 1 << 20
EVENTS = 10_000_000
BACKENDS = ["settrace"] + (["monitoring"] if sys.version_info >= (3, 12) else [])


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def spin(n):
    for i in range(n):
        x = i
    return n


@pytest.mark.parametrize("backend", BACKENDS)
def test_line_events_do_not_grow_the_tracer(backend):
    # warm-up: one-time allocations of a trace (types, buffers) are not what is measured
    _memline.start([spin.__code__], peak=False, backend=backend)
    spin(1_000)
    _memline.stop()
    before = rss()
    _memline.start([spin.__code__], peak=False, backend=backend)
    spin(EVENTS // 2)  # two line events per iteration: the `for` line and its body
    result = _memline.stop()
    grown = rss() - before
    assert result.error is None
    assert result.samples >= EVENTS
    (function,) = result.functions
    assert len(function.lines) == 3  # one record per distinct line
    assert grown < MIB, f"RSS grew by {grown / MIB:.2f} MiB over {result.samples:,} line events"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_tracer_memory_is_bounded_over_ten_million_line_events(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    backends = 2 if sys.version_info >= (3, 12) else 1
    result.assert_outcomes(passed=backends)
