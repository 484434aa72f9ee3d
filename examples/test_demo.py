"""The demo suite: run it with `pytest --memline --memline-tables=all examples/`."""

import pytest


def test_seed():
    # memory_profiler's classic example, as a test
    a = [1] * (10 ** 6)
    b = [2] * (2 * 10 ** 7)
    del b
    assert len(a) == 10 ** 6


def build_and_discard(mib):
    """Allocates, touches and frees `mib` MiB before returning."""
    scratch = bytearray(mib * 2**20)
    scratch[::4096] = b"x" * len(scratch[::4096])
    return len(scratch)


def test_peak_inside_a_callee():
    # Increment ~0 (memory came back), Peak ~200 MiB: memory_profiler shows +0.0 here
    n = build_and_discard(200)
    assert n == 200 * 2**20


def test_loop():
    # 1000 iterations keeping 100 KiB each: Increment ~97.7 MiB, Occurrences 1000
    keep = []
    for _ in range(1000):
        keep.append(bytearray(100 * 1024))
    assert len(keep) == 1000


@pytest.mark.mem_limit("100MiB")
def test_within_budget():
    data = bytearray(60 * 2**20)
    assert len(data) == 60 * 2**20


def test_over_budget():
    # fails on purpose: its [[tool.memline.limits]] entry allows 50 MiB per line
    cache = bytearray(80 * 2**20)
    assert cache
