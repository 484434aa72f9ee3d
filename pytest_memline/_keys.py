"""The table of settings: one row per setting, which drives the command-line options, the
``[tool.memline]`` parser (the native module checks values against this schema), the resolver
(command line, then config file, then default) and the README check (tests/test_docs.py).

A new setting is one row here (and its use where it matters). Kept free of imports beyond the
standard library and pytest: the options are added even when the plugin is off.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_memline._metrics import METRICS as _METRICS

TABLES_CHOICES = ("failed", "all", "none")
METRICS = tuple(_METRICS)
BACKENDS = ("auto", "settrace", "monitoring")
READERS = ("auto", "procfs", "portable")
MALLOC_CHOICES = ("fixed", "native")
ISOLATE_CHOICES = ("off", "fork")
MISSING_BASELINE_CHOICES = ("warn", "fail")
#: Bounds of ``samples`` and ``confirm``.
MAX_SAMPLES = 100
MAX_CONFIRM = 20
#: Bound of ``leak_runs``: each repetition runs the test body once more.
MAX_LEAK_RUNS = 20

GROUP = ("memline", "line-by-line memory tables and budgets (pytest-memline)")


@dataclass(frozen=True)
class Key:
    """One setting.

    ``kind``: how a config value is checked (``bool``, ``size``, ``percent``, ``choice``,
    ``whole``, ``text``, ``modules``, ``globs``); ``arg``: the choices, or the bounds
    ``(low, high or None)``. ``config``: a ``[tool.memline]`` key; ``rule``: also a
    ``[[tool.memline.limits]]`` key; ``marker``: its ``mem_limit`` keyword. ``option``: the
    command-line flag, with the ``argparse`` arguments in ``cli``."""

    name: str
    kind: str
    default: Any = None
    arg: Any = None
    config: bool = True
    rule: bool = False
    marker: str | None = None
    option: str | None = None
    cli: tuple[tuple[str, Any], ...] = ()
    help: str = ""

    @property
    def dest(self) -> str:
        assert self.option is not None
        return self.option.lstrip("-").replace("-", "_")

    def schema(self) -> tuple[str, str, Any]:
        """What the native parser checks a config value against."""
        return (self.name, self.kind, self.arg)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; expected 0 or more")
    return value


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = _non_negative_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected {low} to {high}")
        return value

    parse.__name__ = "whole number"
    return parse


def _size(text: str) -> int:
    from pytest_memline import _memline

    try:
        return _memline.parse_size(text)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(f"{exc}; expected {_memline.SIZE_FORMS}") from None


def _percent(text: str) -> float:
    from pytest_memline import _memline

    try:
        return _memline.parse_percent(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; expected a percentage such as '10%'") from None


def _baseline_path(text: str) -> str:
    """A baseline path; refuses what looks like a test path swallowed by `--memline-save tests/`."""
    if text.endswith(".py") or "::" in text or (text and os.path.isdir(text)):
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like a test path, not a baseline file; write "
            f"--memline-save=PATH (with '='), or put the option after the test paths"
        )
    return text


def _choices(values: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    return (("choices", values),)


KEYS: tuple[Key, ...] = (
    Key("enabled", "bool", False, option="--memline",
        cli=(("action", "store_true"), ("dest", "memline")),
        help="trace every test function line by line and check its memory budgets "
        "(also: [tool.memline] enabled = true)."),
    Key("test_limit", "size", rule=True, marker="test"),
    Key("line_limit", "size", rule=True, marker="line"),
    # what a test may leave behind after its teardown (retained memory)
    Key("leak_limit", "size", rule=True, marker="leak"),
    Key("trace", "bool", True, config=False, rule=True, marker="trace"),
    Key("tables", "choice", "failed", TABLES_CHOICES, option="--memline-tables",
        cli=_choices(TABLES_CHOICES),
        help="whose memory tables to show: failed (default), all or none."),
    Key("top", "whole", 10, (0, None), option="--memline-top",
        cli=(("type", _non_negative_int), ("metavar", "N")),
        help="show the N lines with the largest increments after the run (default 10; 0: none)."),
    Key("peak", "bool", True, option="--memline-peak", cli=_choices(("on", "off")),
        help="measure each line's exact in-line peak (on, the default where the kernel allows "
        "it) or only its increment (off: cheaper)."),
    Key("backend", "choice", "auto", BACKENDS, config=False, option="--memline-backend",
        cli=_choices(BACKENDS),
        help="how lines are traced: auto (sys.monitoring on 3.12+, else settrace)."),
    Key("reader", "choice", "auto", READERS, config=False, option="--memline-reader",
        cli=_choices(READERS),
        help="how RSS is read: auto (procfs on Linux), procfs, or portable (sysinfo)."),
    Key("metric", "choice", "rss", METRICS, marker="metric", option="--memline-metric",
        cli=_choices(METRICS),
        help="what to measure: rss (resident memory of the process, the default) or heap "
        "(Python-visible allocated bytes from tracemalloc: the same on every run)."),
    Key("baseline", "text", ".memline/baseline.json"),
    Key("noise_floor", "size", 2 * 1024 * 1024, rule=True, marker="noise_floor",
        option="--memline-noise-floor", cli=(("type", _size), ("metavar", "SIZE")),
        help="growth over the baseline's highest saved run below this never counts "
        "(default 2MiB)."),
    Key("tolerance", "percent", 0.0, rule=True, marker="tolerance",
        option="--memline-tolerance", cli=(("type", _percent), ("metavar", "PERCENT")),
        help="growth over the baseline's highest saved run that is tolerated, relative to it "
        "(default 0%%: the noise floor and the saved runs' spread decide)."),
    Key("samples", "whole", 5, (1, MAX_SAMPLES), option="--memline-samples",
        cli=(("type", _bounded_int(1, MAX_SAMPLES)), ("metavar", "N")),
        help="how many saved runs the baseline keeps per test (default 5); the gate learns "
        "from them how much each value moves."),
    Key("confirm", "whole", 3, (0, MAX_CONFIRM), option="--memline-confirm",
        cli=(("type", _bounded_int(0, MAX_CONFIRM)), ("metavar", "N")),
        help="measure a test that looks regressed N more times, in a forked process, and "
        "fail it only when most of them show it again (default 3; 0: fail at once)."),
    Key("leak_runs", "whole", None, (1, MAX_LEAK_RUNS), rule=True, marker="leak_runs",
        option="--memline-leak-runs",
        cli=(("type", _bounded_int(1, MAX_LEAK_RUNS)), ("metavar", "N")),
        help="confirm leaks: run each test body N more times in a forked process and report "
        "what each repetition retained; a leak limit then fails a test only when every "
        "repetition retained more than it (off by default)."),
    # per test only (a marker or a rule): `pytest --memline` itself is the run-wide switch
    Key("accept", "globs", (), option="--memline-accept",
        cli=(("action", "append"), ("metavar", "GLOB")),
        help="tests (node ids or globs, repeatable) whose regressions are intended: reported, "
        "not failed; with --memline-save their new numbers replace the saved runs."),
    Key("missing_baseline", "choice", "warn", MISSING_BASELINE_CHOICES,
        option="--memline-missing-baseline", cli=_choices(MISSING_BASELINE_CHOICES),
        help="with --memline-compare, when the baseline file does not exist: warn (default; "
        "every test is new and the run passes) or fail (stop before any test runs)."),
    Key("isolate", "choice", "off", ISOLATE_CHOICES, option="--memline-isolate",
        cli=_choices(ISOLATE_CHOICES),
        help="fork: run every traced test body in a forked process that has run no other "
        "test body, so that its numbers do not depend on test order (fixtures run in place; "
        "what the body changes stays in the fork); off (default): in place."),
    Key("include", "modules", (), option="--memline-include",
        cli=(("action", "append"), ("metavar", "MODULES")),
        help="also give a table to every function of these modules (comma-separated, "
        "repeatable; a package includes its submodules) that the tests call."),
    Key("fixtures", "bool", False, option="--memline-fixtures", cli=(("action", "store_true"),),
        help="also trace each fixture's setup line by line: a memory table for every fixture "
        "function that allocated (fixtures named in [[tool.memline.limits]] are traced "
        "anyway)."),
    Key("malloc", "choice", "fixed", MALLOC_CHOICES, option="--memline-malloc",
        cli=_choices(MALLOC_CHOICES),
        help="fixed (default): return malloc's free memory to the kernel before each test "
        "(malloc_trim), so that a line's Increment does not depend on what the tests before it "
        "freed; native: leave malloc as it is."),
    Key("save", "text", config=False, option="--memline-save",
        cli=(("nargs", "?"), ("const", ""), ("type", _baseline_path), ("metavar", "PATH")),
        help="record every passing test's memory table in a baseline file (default "
        "[tool.memline] baseline, else .memline/baseline.json); other tests' entries are kept."),
    Key("compare", "text", config=False, option="--memline-compare",
        cli=(("nargs", "?"), ("const", ""), ("type", _baseline_path), ("metavar", "PATH")),
        help="compare every test with its baseline entry and fail the tests that regressed."),
    Key("prune", "bool", False, config=False, option="--memline-prune",
        cli=(("action", "store_true"),),
        help="with --memline-save: remove the baseline entries of tests that are gone."),
    Key("json_report", "text", config=False, option="--memline-json",
        cli=(("metavar", "PATH"),),
        help="write every test's table and comparison to a JSON file."),
    Key("markdown_report", "text", config=False, option="--memline-markdown",
        cli=(("metavar", "PATH"),),
        help="write a Markdown summary (for a pull-request comment or $GITHUB_STEP_SUMMARY)."),
)

BY_NAME = {k.name: k for k in KEYS}
#: ``[tool.memline]`` keys, in documentation order (``limits`` is the rules' array).
CONFIG_KEYS = tuple(k for k in KEYS if k.config)
RULE_KEYS = tuple(k for k in KEYS if k.rule)
#: ``mem_limit`` keywords -> settings.
MARKER_KEYS = {k.marker: k for k in KEYS if k.marker}


def schema() -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
    """The keys of ``[tool.memline]`` and of a ``[[tool.memline.limits]]`` entry, as the
    native parser takes them."""
    return [k.schema() for k in CONFIG_KEYS], [k.schema() for k in RULE_KEYS]


#: The options that make no sense untraced: given without --memline, they turn tracing on (a CI
#: step that forgot --memline must not pass a gate that never ran).
TURNS_ON = ("save", "compare", "json_report", "markdown_report")


def given_options(options: Any) -> list[Key]:
    """The memline options given on the command line (every one defaults to None)."""
    return [
        k for k in KEYS
        if k.option is not None and k.name != "enabled" and getattr(options, k.dest, None) is not None
    ]


def add_options(parser: pytest.Parser) -> None:
    """Every option of the table, in one group, in the table's order."""
    group = parser.getgroup(*GROUP)
    for key in KEYS:
        if key.option is None:
            continue
        kwargs: dict[str, Any] = {"dest": key.dest, "default": None, "help": key.help}
        kwargs.update(dict(key.cli))
        group.addoption(key.option, **kwargs)
        if key.name == "enabled":
            group.addoption(
                "--no-memline",
                action="store_false",
                dest="memline",
                help="turn memline off, even when [tool.memline] enabled = true.",
            )
