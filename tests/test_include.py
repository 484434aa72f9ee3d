"""`include`: functions of the named modules get their own tables under the test, and their
allocations also show on the test's calling line. Real allocations, subprocess sessions."""

from __future__ import annotations

import json
import sys

import pytest

MIB = 1024 * 1024

LIBRARY = """
def load(n):
    header = bytearray(2 * 2**20)
    body = bytearray(n * 2**20)
    return header, body


def recurse(depth):
    if depth == 0:
        return bytearray(5 * 2**20)
    return recurse(depth - 1)
"""

TEST = """
from mylib import io


def test_uses_lib():
    data = io.load(30)
    deep = io.recurse(3)
    assert data and deep
"""

BACKENDS = [
    "settrace",
    pytest.param(
        "monitoring",
        marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+"),
    ),
]


def make_project(pytester: pytest.Pytester) -> None:
    pkg = pytester.mkpydir("mylib")
    (pkg / "io.py").write_text(LIBRARY)
    pytester.makepyfile(test_uses=TEST)


def tables(pytester: pytest.Pytester) -> dict:
    report = json.loads((pytester.path / "report.json").read_text())
    return report["tests"]["test_uses.py::test_uses_lib"]


def row(table: dict, contents: str) -> dict:
    return next(r for r in table["lines"] if r["contents"].strip() == contents)


@pytest.mark.parametrize("backend", BACKENDS)
def test_included_function_and_calling_line_both_show_the_allocation(
    pytester: pytest.Pytester, backend: str
) -> None:
    make_project(pytester)
    result = pytester.runpytest_subprocess(
        "--memline", f"--memline-backend={backend}", "--memline-include=mylib",
        "--memline-tables=all", "--memline-json=report.json",
    )
    result.assert_outcomes(passed=1)
    test = tables(pytester)
    # the test's line is charged with everything its callee kept (32 MiB, within 2 MiB)
    calling = row(test["table"], "data = io.load(30)")
    assert abs(calling["increment"] - 32 * MIB) < 2 * MIB
    included = {t["function"]: t for t in test["included"]}
    assert set(included) == {"load", "recurse"}
    load = included["load"]
    assert load["role"] == "included"
    # ... and the library's own lines show where it came from
    assert abs(row(load, "body = bytearray(n * 2**20)")["increment"] - 30 * MIB) < 2 * MIB
    assert abs(row(load, "header = bytearray(2 * 2**20)")["increment"] - 2 * MIB) < MIB
    # recursion: every level is one occurrence of each line; the allocation at the bottom
    recurse = included["recurse"]
    assert row(recurse, "if depth == 0:")["occurrences"] == 4
    assert row(recurse, "return recurse(depth - 1)")["occurrences"] == 3
    assert abs(row(recurse, "return bytearray(5 * 2**20)")["increment"] - 5 * MIB) < MIB
    out = result.stdout.str()
    assert "test_uses.py::test_uses_lib > included load  (load in mylib/io.py)" in out
    assert "included function called by the test; its lines are also charged to the test's calling line" in out


def test_include_from_config_and_unknown_module(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.makepyprojecttoml('[tool.memline]\ninclude = ["mylib.io"]\n')
    result = pytester.runpytest_subprocess("--memline", "--memline-json=report.json")
    result.assert_outcomes(passed=1)
    assert {t["function"] for t in tables(pytester)["included"]} == {"load", "recurse"}
    result = pytester.runpytest_subprocess("--memline", "--memline-include=nosuchlib")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "memline: include: module 'nosuchlib' cannot be found; is it importable from here"
        in result.stderr.str()
    )
    result = pytester.runpytest_subprocess("--memline", "--memline-include=not a module")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--memline-include: 'not a module' is not a module name" in result.stderr.str()


def test_without_include_library_lines_are_not_traced(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    result = pytester.runpytest_subprocess("--memline", "--memline-json=report.json")
    result.assert_outcomes(passed=1)
    assert tables(pytester)["included"] == []


RAISING_LIBRARY = """
def boom():
    scratch = bytearray(2 * 2**20)
    raise ValueError("boom")
"""

RAISING_TEST = """
from mylib import io


def test_catches():
    try:
        io.boom()
    except ValueError:
        pass
    try:
        try:
            raise KeyError("inner")
        finally:
            kept = bytearray(3 * 2**20)
    except KeyError:
        pass
    after = bytearray(20 * 2**20)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callee_that_raises_closes_its_lines_where_it_left(
    pytester: pytest.Pytester, backend: str
) -> None:
    """An included function left by an exception: its raising line holds what it did (the
    2 MiB scratch freed, so about 0), not the 20 MiB the test allocates after catching it; and a
    ``finally`` that re-raises inside the test (RERAISE, not a frame exit) ends nothing."""
    pkg = pytester.mkpydir("mylib")
    (pkg / "io.py").write_text(RAISING_LIBRARY)
    pytester.makepyfile(test_raising=RAISING_TEST)
    result = pytester.runpytest_subprocess(
        "--memline", f"--memline-backend={backend}", "--memline-include=mylib",
        "--memline-tables=all", "--memline-json=report.json",
    )
    result.assert_outcomes(passed=1)
    test = json.loads((pytester.path / "report.json").read_text())["tests"]["test_raising.py::test_catches"]
    boom = next(t for t in test["included"] if t["function"] == "boom")
    assert abs(row(boom, "scratch = bytearray(2 * 2**20)")["increment"] - 2 * MIB) < MIB
    raising = row(boom, 'raise ValueError("boom")')
    assert raising["occurrences"] == 1
    assert raising["increment"] < 3 * MIB, raising  # not the test's later 20 MiB
    own = test["table"]
    assert abs(row(own, "kept = bytearray(3 * 2**20)")["increment"] - 3 * MIB) < MIB
    assert abs(row(own, "after = bytearray(20 * 2**20)")["increment"] - 20 * MIB) < MIB
