"""Tests that check reference counts, traced: `sys.getrefcount` and `ndarray.resize` (which
refuses to resize an array that something else references) on every backend.

On Python 3.11, while any trace function is set, CPython calls a C type's method through a
temporary bound method (for the profiler's C_CALL event), one more reference to ``self``: so
`a.resize(...)` in a traced test body fails there, as under a plain `sys.settrace` (numpy marks
such tests `_no_tracing`). memline cannot avoid it in the traced frame; it runs such a test
untraced on request (`mem_limit(trace=False)`, a rule's `trace = false`) and, when a traced
test fails that way, says that tracing may be the cause. 3.12 and later (both backends) keep
the counts exact.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("numpy", reason="numpy is in the test extra")

SUITE = """
import sys

import numpy as np
import pytest


def test_resize():
    a = np.array([1, 2, 3])
    a.resize((2,))
    assert a.shape == (2,)


def test_getrefcount():
    x = object()
    assert sys.getrefcount(x) == 2


@pytest.mark.mem_limit(trace=False)
def test_resize_untraced():
    a = np.array([1, 2, 3])
    a.resize((2,))
    assert a.shape == (2,)


def test_resize_by_rule():
    b = np.zeros(4)
    b.resize((8,))
    assert b.shape == (8,)
"""

RULE = '[[tool.memline.limits]]\nmatch = "*::test_resize_by_rule"\ntrace = false\n'


def test_reference_counts_in_traced_tests(pytester: pytest.Pytester, backend: str) -> None:
    pytester.makepyfile(test_refs=SUITE)
    pytester.makepyprojecttoml(RULE)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--memline", f"--memline-backend={backend}", "--memline-tables=all"
    )
    untraced = (
        "memline: 2 tests run untraced (trace=False, from @pytest.mark.mem_limit; "
        "pyproject.toml [[tool.memline.limits]] #1 (match = '*::test_resize_by_rule'))"
    )
    out = result.stdout.str()
    if sys.version_info >= (3, 12):
        result.assert_outcomes(passed=4)
    else:
        # the one traced resize fails, and the report says why
        result.assert_outcomes(passed=3, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*- memline: tracing -*",
                "This test may fail because it was traced: on Python 3.11, *"
                "@pytest.mark.mem_limit(trace=False)*",
            ]
        )
        assert "FAILED test_refs.py::test_resize - ValueError: cannot resize" in out
    assert untraced in out
    assert "memline: 2 tests traced" in out
    # the untraced tests have no table; the traced ones do
    assert "test_refs.py::test_resize_untraced  (" not in out
    assert "test_refs.py::test_getrefcount  (test_getrefcount" in out


def test_trace_must_be_a_bool(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.mem_limit(trace="no")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--memline")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_bad.py::test_x: @pytest.mark.mem_limit(trace='no'): expected True or False*"]
    )
