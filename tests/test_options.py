"""Turning the plugin on and off (--memline, --no-memline, [tool.memline] enabled), the
defaults without configuration, and what `pytest --help` and `--strict-markers` see."""

import json
import re
import sys

import pytest
from memtables import parse_tables, report_of

#: Records, at the end of the inner session, whether the native module was ever imported and
#: whether the plugin's manager was registered.
PROBE_CONFTEST = """
import sys


def pytest_terminal_summary(terminalreporter, config):
    native = "pytest_memline._memline" in sys.modules
    manager = config.pluginmanager.get_plugin("memline-manager") is not None
    terminalreporter.write_line(f"probe: native imported={native}, manager={manager}")
"""

#: A passing test that writes down which tracers it runs under, and a failing one.
PROBE_TESTS = """
import json
import pathlib
import sys


def test_sees_tracers():
    tools = [sys.gettrace()]
    if sys.version_info >= (3, 12):
        tools += [sys.monitoring.get_tool(i) for i in range(6)]
    pathlib.Path("tracers.json").write_text(json.dumps([str(t) for t in tools if t is not None]))


def test_fails():
    data = bytearray(33 * 2**20)
    assert len(data) == 0
"""

NO_MEMLINE = "[tool.black]\nline-length = 100\n"
MENTIONS_MEMLINE = "# we use pytest-memline, but not [tool.memline]\n" + NO_MEMLINE
ENABLED = "[tool.memline]\nenabled = true\n"
DISABLED = "[tool.memline]\nenabled = false\n"


@pytest.mark.parametrize(
    ("pyproject", "args", "on", "native"),
    [
        pytest.param(None, [], False, False, id="installed-but-off"),
        pytest.param(NO_MEMLINE, [], False, False, id="pyproject-without-memline"),
        pytest.param(ENABLED, ["--no-memline"], False, False, id="no-memline-beats-enabled"),
        # the file must be parsed (by the native module) to learn that it says "off"
        pytest.param(DISABLED, [], False, True, id="enabled-false"),
        pytest.param(ENABLED, [], True, True, id="enabled-true"),
        pytest.param(DISABLED, ["--memline"], True, True, id="memline-beats-enabled-false"),
        pytest.param(None, ["--memline"], True, True, id="memline-no-pyproject"),
        pytest.param(MENTIONS_MEMLINE, ["--memline"], True, True, id="memline-no-tool-memline"),
    ],
)
def test_on_and_off(
    pytester: pytest.Pytester, pyproject: str | None, args: list[str], on: bool, native: bool
) -> None:
    if pyproject is not None:
        pytester.makepyprojecttoml(pyproject)
    pytester.makeconftest(PROBE_CONFTEST)
    pytester.makepyfile(test_probe=PROBE_TESTS)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    tracers = json.loads((pytester.path / "tracers.json").read_text())
    assert f"probe: native imported={native}, manager={on}" in out
    failure = report_of(out, "test_fails")
    if on:
        backend = "monitoring" if sys.version_info >= (3, 12) else "settrace"
        # settrace: sys.gettrace() is memline's handle; monitoring: memline holds a tool id
        handle = "pytest-memline" if backend == "monitoring" else "<pytest_memline tracer>"
        assert tracers == [handle]
        result.stdout.fnmatch_lines(
            [f"memline: on (backend {backend}, *", "memline: 2 tests traced, 0 over budget"]
        )
        # no limits configured anywhere: the defaults
        assert "memline: tables=failed, top=10; default limits: none" in out
        (table,) = parse_tables("\n".join(failure))
        assert table.row("data = bytearray(33 * 2**20)").increment == pytest.approx(33, abs=3)
    else:
        assert tracers == []
        assert not re.search(r"^memline: ", out, flags=re.MULTILINE), out
        assert parse_tables(out) == []
        assert not any(re.match(r"^-+ memline: memory table -+$", line) for line in failure)


OPTIONS = [
    "--memline",
    "--no-memline",
    "--memline-tables",
    "--memline-top",
    "--memline-peak",
    "--memline-backend",
    "--memline-reader",
    "--memline-metric",
    "--memline-noise-floor",
    "--memline-tolerance",
    "--memline-samples",
    "--memline-confirm",
    "--memline-leak-runs",
    "--memline-accept",
    "--memline-missing-baseline",
    "--memline-isolate",
    "--memline-include",
    "--memline-fixtures",
    "--memline-malloc",
    "--memline-save",
    "--memline-compare",
    "--memline-prune",
    "--memline-json",
    "--memline-markdown",
]


def test_help_lists_every_option_in_one_group(pytester: pytest.Pytester) -> None:
    # (in-process: pytest-asyncio, when installed, would warn into this session's summary)
    result = pytester.runpytest("--help", "-p", "no:asyncio")
    assert result.ret == 0
    lines = result.stdout.lines
    start = lines.index("line-by-line memory tables and budgets (pytest-memline):")
    end = lines.index("", start)
    group = "\n".join(lines[start:end])
    in_group = re.findall(r"^  (--[\w-]+)", group, flags=re.MULTILINE)
    assert in_group == OPTIONS
    # and nowhere else
    everywhere = re.findall(r"(--(?:no-)?memline[\w-]*)", result.stdout.str())
    assert set(everywhere) == set(OPTIONS)
    outside = "\n".join(lines[:start] + lines[end:])
    assert not re.search(r"^\s+--(no-)?memline", outside, flags=re.MULTILINE)


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.mem_limit(test=None, *, line=None, tolerance=None, noise_floor=None, metric=None, trace=None, leak=None, leak_runs=None): pytest-memline budgets. *"]
    )


MARKED = """
import pytest


@pytest.mark.mem_limit("60MiB", line="50MiB")
def test_marked():
    data = bytearray(10 * 2**20)
"""


@pytest.mark.parametrize("args", [[], ["--memline"]], ids=["off", "on"])
def test_strict_markers(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(MARKED)
    result = pytester.runpytest_subprocess("--strict-markers", *args)
    result.assert_outcomes(passed=1)
