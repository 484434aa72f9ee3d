"""One resolver: command line, then ``[tool.memline]`` in pyproject.toml, then defaults.

Per test, the ``mem_limit`` marker beats a matching ``[[tool.memline.limits]]`` entry, which
beats the ``[tool.memline]`` defaults, value by value. Every value carries where it came from,
so that a failure can say which limit it broke and where that limit was set.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_memline._keys import BY_NAME, RULE_KEYS
from pytest_memline._preflight import (  # noqa: F401  (re-exported)
    MARKER,
    MARKER_DOC,
    MARKER_KEYWORDS,
    MARKER_SIGNATURE,
    MARKER_USAGE,
    display,
    enabled_from,
    find_pyproject,
    read_config,
)


def _default(name: str) -> Any:
    return BY_NAME[name].default


DEFAULT_TOLERANCE: float = _default("tolerance")
DEFAULT_NOISE_FLOOR: int = _default("noise_floor")


@dataclass(frozen=True)
class Limit:
    """A budget in bytes, and where it was set (for messages)."""

    value: int
    source: str


@dataclass(frozen=True)
class Tolerance:
    """A relative tolerance (0.1 for 10%), and where it was set."""

    value: float
    source: str

    def __str__(self) -> str:
        return f"{self.value * 100:g}%"


@dataclass(frozen=True)
class Rule:
    """One ``[[tool.memline.limits]]`` entry."""

    pattern: str
    #: where it is written: ``pyproject.toml [[tool.memline.limits]] #1 (match = '...')``
    source: str = ""
    #: a fixture's budget (``fixture = "big_frame"``): its setup, in the tests ``pattern``
    #: matches (every test when the rule has no ``match``); only the two limits apply
    fixture: str | None = None
    test_limit: Limit | None = None
    line_limit: Limit | None = None
    tolerance: Tolerance | None = None
    noise_floor: Limit | None = None
    trace: bool | None = None
    leak_limit: Limit | None = None
    leak_runs: int | None = None


@dataclass(frozen=True)
class TestLimits:
    """The budgets and regression thresholds of one test."""

    test: Limit | None = None
    line: Limit | None = None
    tolerance: Tolerance = Tolerance(DEFAULT_TOLERANCE, "default")
    noise_floor: Limit = Limit(DEFAULT_NOISE_FLOOR, "default")
    metric: str = "rss"
    #: False: the test runs untraced (``mem_limit(trace=False)``, a rule's ``trace = false``),
    #: with where that was set
    trace: bool = True
    trace_source: str = ""
    #: what the test may leave behind after its teardown
    leak: Limit | None = None
    #: how many more times the body runs to confirm a leak (None: not repeated)
    leak_runs: int | None = None

    __test__ = False  # not a test class, whatever its name


@dataclass(frozen=True)
class MarkerLimits:
    """What a ``mem_limit`` marker sets (None: not set)."""

    test: Limit | None = None
    line: Limit | None = None
    tolerance: Tolerance | None = None
    noise_floor: Limit | None = None
    metric: str | None = None
    trace: bool | None = None
    leak: Limit | None = None
    leak_runs: int | None = None


NO_RULE = Rule("")
NO_MARKER = MarkerLimits()


@dataclass(frozen=True)
class Settings:
    """Everything a run of the plugin needs, resolved once in ``pytest_configure``: one field
    per row of ``_keys.KEYS`` (sizes and percentages with where they were set), and the
    ``[[tool.memline.limits]]`` rules."""

    tables: str = _default("tables")
    top: int = _default("top")
    peak: bool = True
    backend: str = "auto"
    reader: str = "auto"
    config_file: str | None = None
    test_limit: Limit | None = None
    line_limit: Limit | None = None
    leak_limit: Limit | None = None
    leak_runs: int | None = None
    rules: tuple[Rule, ...] = ()
    tolerance: Tolerance = Tolerance(DEFAULT_TOLERANCE, "default")
    noise_floor: Limit = Limit(DEFAULT_NOISE_FLOOR, "default")
    save: str | None = None
    compare: str | None = None
    json_report: str | None = None
    markdown_report: str | None = None
    metric: str = "rss"
    include: tuple[str, ...] = ()
    malloc: str = "fixed"
    samples: int = _default("samples")
    confirm: int = _default("confirm")
    accept: tuple[str, ...] = ()
    prune: bool = False
    isolate: str = "off"
    missing_baseline: str = "warn"
    #: a memory table for each fixture's setup (``--memline-fixtures``)
    fixtures: bool = False

    def accepts(self, nodeid: str) -> bool:
        """Whether ``accept`` names this test: its regressions are reported, not failed."""
        return any(fnmatch.fnmatchcase(nodeid, p) for p in self.accept)

    def limits_for(self, nodeid: str, marker: MarkerLimits | None) -> TestLimits:
        """Value by value: the marker, then the first matching rule, then the run's defaults."""
        if marker is None and not self.test_rules:
            return self._defaults  # most tests: computed once per run
        rule = next((r for r in self.test_rules if fnmatch.fnmatchcase(nodeid, r.pattern)), NO_RULE)
        m = marker or NO_MARKER
        if m.trace is not None:
            trace, trace_source = m.trace, f"@pytest.mark.{MARKER}"
        elif rule.trace is not None:
            trace, trace_source = rule.trace, rule.source
        else:
            trace, trace_source = True, ""
        return TestLimits(
            test=m.test or rule.test_limit or self.test_limit,
            line=m.line or rule.line_limit or self.line_limit,
            tolerance=m.tolerance or rule.tolerance or self.tolerance,
            noise_floor=m.noise_floor or rule.noise_floor or self.noise_floor,
            metric=m.metric or self.metric,
            trace=trace,
            trace_source=trace_source,
            leak=m.leak or rule.leak_limit or self.leak_limit,
            leak_runs=m.leak_runs or rule.leak_runs or self.leak_runs,
        )

    @functools.cached_property
    def test_rules(self) -> tuple[Rule, ...]:
        """The rules that set tests' limits (the others name a fixture)."""
        return tuple(r for r in self.rules if r.fixture is None)

    @functools.cached_property
    def fixture_rules(self) -> tuple[Rule, ...]:
        """The rules that set a fixture's limits (``fixture = "..."``)."""
        return tuple(r for r in self.rules if r.fixture is not None)

    def fixture_limits(self, name: str, nodeid: str) -> TestLimits | None:
        """The limits of fixture ``name`` set up for test ``nodeid``: the first rule naming it
        whose ``match`` (if any) matches the test."""
        for r in self.fixture_rules:
            if r.fixture == name and (not r.pattern or fnmatch.fnmatchcase(nodeid, r.pattern)):
                return TestLimits(test=r.test_limit, line=r.line_limit, metric=self.metric)
        return None

    @functools.cached_property
    def _defaults(self) -> TestLimits:
        return TestLimits(
            test=self.test_limit,
            line=self.line_limit,
            tolerance=self.tolerance,
            noise_floor=self.noise_floor,
            metric=self.metric,
            leak=self.leak_limit,
            leak_runs=self.leak_runs,
        )


class MarkerError(Exception):
    """A ``mem_limit`` marker with bad arguments."""


def resolve(
    options: Any,
    config: Mapping[str, Any] | None,
    config_file: str | None,
    rootpath: Path | None = None,
    invocation_dir: Path | None = None,
) -> Settings:
    """Builds the settings from ``_keys.KEYS``: for each, the command line (pytest's
    ``config.option`` namespace), else ``[tool.memline]``, else the default. Paths given on the
    command line are relative to ``invocation_dir``; those from the config file or the defaults
    to ``rootpath``. The settings hold absolute paths."""
    root = rootpath or Path.cwd()
    here = invocation_dir or Path.cwd()
    cfg = config or {}
    where = f"{config_file} [tool.memline]"

    def given(name: str) -> tuple[Any, str | None]:
        """The value and where it was set (None: the default)."""
        key = BY_NAME[name]
        if key.option is not None and getattr(options, key.dest, None) is not None:
            return getattr(options, key.dest), key.option
        if key.config and cfg.get(name) is not None:
            return cfg[name], f"{where} {name}"
        return key.default, None

    def value(name: str) -> Any:
        return given(name)[0]

    def limit(name: str) -> Limit | None:
        v, source = given(name)
        return None if v is None else Limit(int(v), source or "default")

    def tolerance(name: str) -> Tolerance:
        v, source = given(name)
        return Tolerance(float(v), source or "default")

    rules = []
    for i, r in enumerate(cfg.get("limits") or (), start=1):
        named = ", ".join(f"{k} = {r[k]!r}" for k in ("fixture", "match") if r.get(k) is not None)
        source = f"{config_file} [[tool.memline.limits]] #{i} ({named})"
        wrap: dict[str, Any] = {"size": Limit, "percent": Tolerance}
        fields: dict[str, Any] = {
            k.name: None
            if r.get(k.name) is None
            else wrap[k.kind](r[k.name], source) if k.kind in wrap else r[k.name]
            for k in RULE_KEYS
        }
        rules.append(Rule(pattern=r.get("match") or "", source=source, fixture=r.get("fixture"), **fields))
    default_baseline = cfg.get("baseline") or _default("baseline")

    def baseline_path(name: str) -> str | None:
        v = getattr(options, BY_NAME[name].dest, None)
        if v is None:
            return None
        return str(here / v) if v else str(root / default_baseline)

    def report_path(name: str) -> str | None:
        v = getattr(options, BY_NAME[name].dest, None)
        if v == "":
            raise pytest.UsageError(f"memline: {BY_NAME[name].option} needs a path (it was empty)")
        return None if v is None else str(here / v)

    backend = value("backend")
    if backend == "monitoring" and sys.version_info < (3, 12):
        raise pytest.UsageError(
            "memline: --memline-backend=monitoring needs Python 3.12 or later (sys.monitoring); "
            f"this is Python {platform.python_version()}: use settrace or auto"
        )
    if value("prune") and getattr(options, BY_NAME["save"].dest, None) is None:
        raise pytest.UsageError(
            "memline: --memline-prune removes the baseline entries of tests that are gone when "
            "the baseline is saved: use it with --memline-save"
        )
    peak = value("peak")
    cli_accept = getattr(options, BY_NAME["accept"].dest, None) or ()
    baseline_source = f"{where} baseline" if cfg.get("baseline") else "the default"
    _check_paths(
        {
            "save": baseline_path("save"),
            "compare": baseline_path("compare"),
            "json_report": report_path("json_report"),
            "markdown_report": report_path("markdown_report"),
        },
        {name: baseline_source for name in ("save", "compare") if getattr(options, BY_NAME[name].dest, None) == ""},
    )
    return Settings(
        tables=value("tables"),
        top=int(value("top")),
        peak=peak == "on" if isinstance(peak, str) else peak is not False,
        backend=backend,
        reader=value("reader"),
        config_file=config_file,
        test_limit=limit("test_limit"),
        line_limit=limit("line_limit"),
        leak_limit=limit("leak_limit"),
        leak_runs=None if value("leak_runs") is None else int(value("leak_runs")),
        rules=tuple(rules),
        tolerance=tolerance("tolerance"),
        noise_floor=limit("noise_floor") or Limit(DEFAULT_NOISE_FLOOR, "default"),
        save=baseline_path("save"),
        compare=baseline_path("compare"),
        metric=value("metric"),
        include=_include(options, cfg),
        malloc=value("malloc"),
        samples=int(value("samples")),
        confirm=int(value("confirm")),
        accept=tuple(cfg.get("accept") or ()) + tuple(cli_accept),
        prune=bool(value("prune")),
        isolate=value("isolate"),
        missing_baseline=value("missing_baseline"),
        fixtures=bool(value("fixtures")),
        json_report=report_path("json_report"),
        markdown_report=report_path("markdown_report"),
    )


def _check_paths(paths: Mapping[str, str | None], sources: Mapping[str, str]) -> None:
    """Refuses, before any test runs, a path that memline will not write (a directory, a
    device, a FIFO: ``src/files.rs``) or a baseline to compare with that is not a regular file."""
    from pytest_memline import _memline

    for name, path in paths.items():
        if path is None:
            continue
        check = _memline.check_read_path if name == "compare" else _memline.check_write_path
        try:
            check(path)
        except ValueError as exc:
            source = f" (the path comes from {sources[name]})" if name in sources else ""
            raise pytest.UsageError(f"memline: {BY_NAME[name].option}: {exc}{source}") from None


def unmatched_rules(
    rules: tuple[Rule, ...], collected: set[str], rootpath: Path, whole_suite: bool
) -> list[str]:
    """A warning for each ``[[tool.memline.limits]]`` rule that matches no collected test and
    would not match in the whole suite either: its file does not exist under the rootdir (a
    pattern written relative to the wrong folder), or, for a pattern with wildcards in its
    file part, the run collected the whole suite."""
    import difflib

    out = []
    for rule in rules:
        if not rule.pattern:  # a fixture's rule for every test (see unmatched_fixtures)
            continue
        if any(fnmatch.fnmatchcase(nodeid, rule.pattern) for nodeid in collected):
            continue
        file_part = rule.pattern.split("::", 1)[0]
        if any(c in file_part for c in "*?["):
            if not whole_suite:
                continue
        elif (rootpath / file_part).exists():
            continue  # a file of the suite that this run did not collect
        closest = difflib.get_close_matches(rule.pattern, sorted(collected), n=1, cutoff=0.0)
        hint = f"; node ids are relative to the rootdir, the closest is {closest[0]!r}" if closest else ""
        out.append(
            f"memline: {rule.source} matches none of the {len(collected)} collected tests{hint}"
        )
    return out


def unmatched_fixtures(rules: tuple[Rule, ...], fixtures: set[str]) -> list[str]:
    """A warning for each fixture rule whose fixture none of the collected tests uses
    (``fixtures``: the names in their fixture closures)."""
    import difflib

    out = []
    for name in sorted({r.fixture for r in rules if r.fixture is not None and r.fixture not in fixtures}):
        source = next(r.source for r in rules if r.fixture == name)
        closest = difflib.get_close_matches(name, sorted(fixtures), n=1, cutoff=0.6)
        hint = f"; did you mean {closest[0]!r}?" if closest else ""
        out.append(
            f"memline: {source} names fixture {name!r}, which none of the collected tests "
            f"uses: its limits were not checked{hint}"
        )
    return out


def _include(options: Any, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Module names from ``--memline-include`` (comma-separated, repeatable), else the config."""
    given = getattr(options, BY_NAME["include"].dest, None)
    if given is None:
        return tuple(cfg.get("include") or ())
    names = tuple(n.strip() for arg in given for n in arg.split(",") if n.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise pytest.UsageError(
                f"memline: --memline-include: {name!r} is not a module name (e.g. mypkg or mypkg.io)"
            )
    return names


def include_paths(names: tuple[str, ...]) -> list[str]:
    """The files (and, for packages, folders ending in a separator) of the included modules.

    Found without importing the modules themselves (a package's parent is imported to find a
    submodule). A name that cannot be found is a usage error."""
    import importlib.util

    paths: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            spec = None
            why = f" ({exc})"
        else:
            why = ""
        if spec is None:
            raise pytest.UsageError(
                f"memline: include: module {name!r} cannot be found{why}; is it importable from "
                f"here (installed, or on sys.path)?"
            )
        for folder in spec.submodule_search_locations or ():
            paths.append(os.path.join(folder, ""))
        if spec.origin and spec.has_location and not spec.submodule_search_locations:
            paths.append(spec.origin)
    return paths


def parse_marker(mark: pytest.Mark | None, nodeid: str) -> MarkerLimits | None:
    """What a ``mem_limit`` marker sets (its arguments bound to ``_preflight.mem_limit``'s
    signature, each checked by the kind of its setting), or ``MarkerError`` naming the bad
    value."""
    if mark is None:
        return None
    from pytest_memline import _memline
    from pytest_memline._keys import MARKER_KEYS

    name = f"@pytest.mark.{MARKER}"
    if len(mark.args) > 1:
        raise MarkerError(
            f"{nodeid}: {name} takes at most one positional argument (the test limit), got "
            f"{len(mark.args)}: {mark.args!r}; accepted: {MARKER_USAGE}"
        )
    unknown = sorted(set(mark.kwargs) - set(MARKER_KEYWORDS))
    if unknown:
        raise MarkerError(
            f"{nodeid}: {name} got unknown keyword {unknown[0]}={mark.kwargs[unknown[0]]!r}; "
            f"accepted: {MARKER_USAGE}"
        )
    try:
        bound = MARKER_SIGNATURE.bind(*mark.args, **mark.kwargs)
    except TypeError:  # the only way left: the test limit given twice
        raise MarkerError(f"{nodeid}: {name} got the test limit twice") from None
    values = dict(bound.arguments)
    if all(values.get(k) is None for k in MARKER_KEYWORDS):
        raise MarkerError(
            f"{nodeid}: {name} sets no limit; use e.g. mem_limit(\"60MiB\") or "
            f"mem_limit(line=\"5MiB\")"
        )
    out: dict[str, Any] = {}
    for keyword, raw in values.items():
        if raw is None:
            continue
        kind = MARKER_KEYS[keyword].kind
        if kind == "size":
            try:
                if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                    raise ValueError(f"{raw!r}: not a size")
                out[keyword] = Limit(_memline.parse_size(raw), name)
            except (ValueError, OverflowError) as exc:
                raise MarkerError(
                    f"{nodeid}: {name}({keyword}={raw!r}): {exc}; expected {_memline.SIZE_FORMS}"
                ) from None
        elif kind == "percent":
            try:
                if not isinstance(raw, str):
                    raise ValueError(f"{raw!r}: not a percentage")
                out[keyword] = Tolerance(_memline.parse_percent(raw), name)
            except ValueError as exc:
                raise MarkerError(
                    f"{nodeid}: {name}({keyword}={raw!r}): {exc}; expected a percentage such as "
                    f"'10%'"
                ) from None
        elif kind == "bool":
            if not isinstance(raw, bool):
                raise MarkerError(f"{nodeid}: {name}({keyword}={raw!r}): expected True or False")
            out[keyword] = raw
        elif kind == "whole":
            low, high = MARKER_KEYS[keyword].arg
            if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
                raise MarkerError(
                    f"{nodeid}: {name}({keyword}={raw!r}): expected a whole number from {low} "
                    f"to {high}"
                )
            out[keyword] = raw
        elif raw not in MARKER_KEYS[keyword].arg:  # a choice
            choices = " or ".join(repr(c) for c in MARKER_KEYS[keyword].arg)
            raise MarkerError(f"{nodeid}: {name}({keyword}={raw!r}): expected {choices}")
        else:
            out[keyword] = raw
    return MarkerLimits(**out)
