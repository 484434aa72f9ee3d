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

from pytest_memline._preflight import (  # noqa: F401  (re-exported)
    MARKER,
    MARKER_DOC,
    MARKER_KEYWORDS,
    MARKER_USAGE,
    METRICS,
    TABLES_CHOICES,
    display,
    enabled_from,
    find_pyproject,
    read_config,
)

DEFAULT_TABLES = "failed"
DEFAULT_TOP = 10
DEFAULT_BASELINE = ".memline/baseline.json"
DEFAULT_TOLERANCE = 0.0
DEFAULT_NOISE_FLOOR = 1024 * 1024
#: Saved runs a baseline keeps per test.
DEFAULT_SAMPLES = 5
#: Re-runs of a test that looks regressed, before it fails.
DEFAULT_CONFIRM = 3
ISOLATE_CHOICES = ("off", "fork")


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
    test_limit: Limit | None = None
    line_limit: Limit | None = None
    tolerance: Tolerance | None = None
    noise_floor: Limit | None = None


@dataclass(frozen=True)
class TestLimits:
    """The budgets and regression thresholds of one test."""

    test: Limit | None = None
    line: Limit | None = None
    tolerance: Tolerance = Tolerance(DEFAULT_TOLERANCE, "default")
    noise_floor: Limit = Limit(DEFAULT_NOISE_FLOOR, "default")
    metric: str = "rss"

    __test__ = False  # not a test class, whatever its name


@dataclass(frozen=True)
class MarkerLimits:
    """What a ``mem_limit`` marker sets (None: not set)."""

    test: Limit | None = None
    line: Limit | None = None
    tolerance: Tolerance | None = None
    noise_floor: Limit | None = None
    metric: str | None = None


NO_RULE = Rule("")
NO_MARKER = MarkerLimits()


@dataclass(frozen=True)
class Settings:
    """Everything a run of the plugin needs, resolved once in ``pytest_configure``."""

    enabled: bool
    tables: str = DEFAULT_TABLES
    top: int = DEFAULT_TOP
    peak: bool = True
    backend: str = "auto"
    reader: str = "auto"
    config_file: str | None = None
    test_limit: Limit | None = None
    line_limit: Limit | None = None
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
    samples: int = DEFAULT_SAMPLES
    confirm: int = DEFAULT_CONFIRM
    accept: tuple[str, ...] = ()
    prune: bool = False
    isolate: str = "off"

    def accepts(self, nodeid: str) -> bool:
        """Whether ``accept`` names this test: its regressions are reported, not failed."""
        return any(fnmatch.fnmatchcase(nodeid, p) for p in self.accept)

    def limits_for(self, nodeid: str, marker: MarkerLimits | None) -> TestLimits:
        """Value by value: the marker, then the first matching rule, then the run's defaults."""
        if marker is None and not self.rules:
            return self._defaults  # most tests: computed once per run
        rule = next((r for r in self.rules if fnmatch.fnmatchcase(nodeid, r.pattern)), NO_RULE)
        m = marker or NO_MARKER
        return TestLimits(
            test=m.test or rule.test_limit or self.test_limit,
            line=m.line or rule.line_limit or self.line_limit,
            tolerance=m.tolerance or rule.tolerance or self.tolerance,
            noise_floor=m.noise_floor or rule.noise_floor or self.noise_floor,
            metric=m.metric or self.metric,
        )

    @functools.cached_property
    def _defaults(self) -> TestLimits:
        return TestLimits(
            test=self.test_limit,
            line=self.line_limit,
            tolerance=self.tolerance,
            noise_floor=self.noise_floor,
            metric=self.metric,
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
    """Builds the settings. ``options`` is pytest's ``config.option`` namespace. Paths given on
    the command line are relative to ``invocation_dir``; those from the config file or the
    defaults to ``rootpath``. The settings hold absolute paths."""
    root = rootpath or Path.cwd()
    here = invocation_dir or Path.cwd()
    cfg = config or {}
    where = f"{config_file} [tool.memline]"

    def pick(option_name: str, key: str, default: Any) -> Any:
        value = getattr(options, option_name, None)
        if value is not None:
            return value
        if cfg.get(key) is not None:
            return cfg[key]
        return default

    def limit(key: str) -> Limit | None:
        value = cfg.get(key)
        return None if value is None else Limit(int(value), f"{where} {key}")

    rules = []
    for i, r in enumerate(cfg.get("limits") or (), start=1):
        source = f"{config_file} [[tool.memline.limits]] #{i} (match = {r['match']!r})"
        rules.append(
            Rule(
                pattern=r["match"],
                test_limit=None if r.get("test_limit") is None else Limit(r["test_limit"], source),
                line_limit=None if r.get("line_limit") is None else Limit(r["line_limit"], source),
                tolerance=None if r.get("tolerance") is None else Tolerance(r["tolerance"], source),
                noise_floor=(
                    None if r.get("noise_floor") is None else Limit(r["noise_floor"], source)
                ),
            )
        )
    tolerance = Tolerance(DEFAULT_TOLERANCE, "default")
    if getattr(options, "memline_tolerance", None) is not None:
        tolerance = Tolerance(options.memline_tolerance, "--memline-tolerance")
    elif cfg.get("tolerance") is not None:
        tolerance = Tolerance(cfg["tolerance"], f"{where} tolerance")
    noise_floor = Limit(DEFAULT_NOISE_FLOOR, "default")
    if getattr(options, "memline_noise_floor", None) is not None:
        noise_floor = Limit(options.memline_noise_floor, "--memline-noise-floor")
    elif cfg.get("noise_floor") is not None:
        noise_floor = Limit(cfg["noise_floor"], f"{where} noise_floor")
    default_baseline = cfg.get("baseline") or DEFAULT_BASELINE

    def baseline_path(option_name: str) -> str | None:
        value = getattr(options, option_name, None)
        if value is None:
            return None
        return str(here / value) if value else str(root / default_baseline)

    def report_path(option_name: str) -> str | None:
        value = getattr(options, option_name, None)
        return None if value is None else str(here / value)
    backend = getattr(options, "memline_backend", None) or "auto"
    if backend == "monitoring" and sys.version_info < (3, 12):
        raise pytest.UsageError(
            "memline: --memline-backend=monitoring needs Python 3.12 or later (sys.monitoring); "
            f"this is Python {platform.python_version()}: use settrace or auto"
        )
    if getattr(options, "memline_prune", False) and getattr(options, "memline_save", None) is None:
        raise pytest.UsageError(
            "memline: --memline-prune removes the baseline entries of tests that are gone when "
            "the baseline is saved: use it with --memline-save"
        )
    peak_option = getattr(options, "memline_peak", None)
    peak = (peak_option == "on") if peak_option is not None else cfg.get("peak", True) is not False
    return Settings(
        enabled=enabled_from(getattr(options, "memline", None), cfg),
        tables=pick("memline_tables", "tables", DEFAULT_TABLES),
        top=int(pick("memline_top", "top", DEFAULT_TOP)),
        peak=peak,
        backend=backend,
        reader=getattr(options, "memline_reader", None) or "auto",
        config_file=config_file,
        test_limit=limit("test_limit"),
        line_limit=limit("line_limit"),
        rules=tuple(rules),
        tolerance=tolerance,
        noise_floor=noise_floor,
        save=baseline_path("memline_save"),
        compare=baseline_path("memline_compare"),
        metric=pick("memline_metric", "metric", "rss"),
        include=_include(options, cfg),
        malloc=pick("memline_malloc", "malloc", "fixed"),
        samples=int(pick("memline_samples", "samples", DEFAULT_SAMPLES)),
        confirm=int(pick("memline_confirm", "confirm", DEFAULT_CONFIRM)),
        accept=tuple(cfg.get("accept") or ()) + tuple(getattr(options, "memline_accept", None) or ()),
        prune=bool(getattr(options, "memline_prune", False)),
        isolate=pick("memline_isolate", "isolate", "off"),
        json_report=report_path("memline_json"),
        markdown_report=report_path("memline_markdown"),
    )


def _include(options: Any, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Module names from ``--memline-include`` (comma-separated, repeatable), else the config."""
    given = getattr(options, "memline_include", None)
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
    """What a ``mem_limit`` marker sets, or ``MarkerError`` naming the bad value."""
    if mark is None:
        return None
    from pytest_memline import _memline

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
    if mark.args and "test" in mark.kwargs:
        raise MarkerError(f"{nodeid}: {name} got the test limit twice")
    values = dict(mark.kwargs)
    if mark.args:
        values["test"] = mark.args[0]
    metric = values.get("metric")
    if metric is not None and metric not in METRICS:
        raise MarkerError(f"{nodeid}: {name}(metric={metric!r}): expected 'rss' or 'heap'")
    if all(values.get(k) is None for k in MARKER_KEYWORDS):
        raise MarkerError(
            f"{nodeid}: {name} sets no limit; use e.g. mem_limit(\"60MiB\") or "
            f"mem_limit(line=\"5MiB\")"
        )
    sizes: dict[str, Limit | None] = {}
    for key in ("test", "line", "noise_floor"):
        raw = values.get(key)
        if raw is None:
            sizes[key] = None
            continue
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError(f"{raw!r}: not a size")
            sizes[key] = Limit(_memline.parse_size(raw), name)
        except (ValueError, OverflowError) as exc:
            raise MarkerError(
                f"{nodeid}: {name}({key}={raw!r}): {exc}; expected {_memline.SIZE_FORMS}"
            ) from None
    tolerance = None
    raw = values.get("tolerance")
    if raw is not None:
        try:
            if not isinstance(raw, str):
                raise ValueError(f"{raw!r}: not a percentage")
            tolerance = Tolerance(_memline.parse_percent(raw), name)
        except ValueError as exc:
            raise MarkerError(
                f"{nodeid}: {name}(tolerance={raw!r}): {exc}; expected a percentage such as "
                f"'10%'"
            ) from None
    return MarkerLimits(
        test=sizes["test"],
        line=sizes["line"],
        tolerance=tolerance,
        noise_floor=sizes["noise_floor"],
        metric=metric,
    )
