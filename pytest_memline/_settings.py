"""One resolver: command line, then ``[tool.memline]`` in pyproject.toml, then defaults.

Per test, the ``mem_limit`` marker beats a matching ``[[tool.memline.limits]]`` entry, which
beats the ``[tool.memline]`` defaults, value by value. Every value carries where it came from,
so that a failure can say which limit it broke and where that limit was set.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MARKER = "mem_limit"
MARKER_DOC = (
    "mem_limit(test=None, *, line=None): pytest-memline budgets. The test fails when its peak "
    "RSS growth exceeds `test`, or when any line's increment or peak exceeds `line`. Sizes like "
    "'60MiB', '1.5 GiB', '512KiB' or an int of bytes."
)
MARKER_KEYWORDS = ("test", "line")
#: The accepted calls, for error messages.
MARKER_USAGE = (
    'mem_limit(test, *, line), e.g. mem_limit("60MiB"), mem_limit("60MiB", line="5MiB") or '
    'mem_limit(line="5MiB")'
)

TABLES_CHOICES = ("failed", "all", "none")
DEFAULT_TABLES = "failed"
DEFAULT_TOP = 10


@dataclass(frozen=True)
class Limit:
    """A budget in bytes, and where it was set (for messages)."""

    value: int
    source: str


@dataclass(frozen=True)
class Rule:
    """One ``[[tool.memline.limits]]`` entry."""

    pattern: str
    test_limit: Limit | None
    line_limit: Limit | None


@dataclass(frozen=True)
class TestLimits:
    test: Limit | None = None
    line: Limit | None = None

    __test__ = False  # not a test class, whatever its name


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

    def limits_for(self, nodeid: str, marker: TestLimits | None) -> TestLimits:
        test, line = self.test_limit, self.line_limit
        for rule in self.rules:
            if fnmatch.fnmatchcase(nodeid, rule.pattern):
                test = rule.test_limit or test
                line = rule.line_limit or line
                break
        if marker is not None:
            test = marker.test or test
            line = marker.line or line
        return TestLimits(test=test, line=line)


class MarkerError(Exception):
    """A ``mem_limit`` marker with bad arguments."""


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def find_pyproject(rootpath: Path) -> Path | None:
    path = rootpath / "pyproject.toml"
    return path if path.is_file() else None


def read_config(path: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """``[tool.memline]`` as a dict (parsed by the native module), and the file's display name.

    The native module is imported only when the file mentions memline at all, so that a
    project that does not use the plugin pays nothing for having it installed.
    """
    if path is None:
        return None, None
    display = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(f"memline: cannot read {display}: {exc}") from None
    if "memline" not in text:
        return None, display
    from pytest_memline import _memline

    try:
        return _memline.parse_pyproject(text, display), display
    except ValueError as exc:
        raise pytest.UsageError(f"memline: {exc}") from None


def enabled_from(option: bool | None, config: Mapping[str, Any] | None) -> bool:
    if option is not None:
        return option
    return bool(config and config.get("enabled"))


def resolve(options: Any, config: Mapping[str, Any] | None, config_file: str | None) -> Settings:
    """Builds the settings. ``options`` is pytest's ``config.option`` namespace."""
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
            )
        )
    backend = getattr(options, "memline_backend", None) or "auto"
    if backend == "monitoring" and sys.version_info < (3, 12):
        raise pytest.UsageError(
            "memline: --memline-backend=monitoring needs Python 3.12 or later (sys.monitoring); "
            f"this is Python {platform.python_version()}: use settrace or auto"
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
    )


def parse_marker(mark: pytest.Mark | None, nodeid: str) -> TestLimits | None:
    """The limits a ``mem_limit`` marker sets, or ``MarkerError`` naming the bad value."""
    if mark is None:
        return None
    from pytest_memline import _memline

    if len(mark.args) > 1:
        raise MarkerError(
            f"{nodeid}: @pytest.mark.{MARKER} takes at most one positional argument (the test "
            f"limit), got {len(mark.args)}: {mark.args!r}; accepted: {MARKER_USAGE}"
        )
    unknown = sorted(set(mark.kwargs) - set(MARKER_KEYWORDS))
    if unknown:
        raise MarkerError(
            f"{nodeid}: @pytest.mark.{MARKER} got unknown keyword "
            f"{unknown[0]}={mark.kwargs[unknown[0]]!r}; accepted: {MARKER_USAGE}"
        )
    if mark.args and "test" in mark.kwargs:
        raise MarkerError(f"{nodeid}: @pytest.mark.{MARKER} got the test limit twice")
    values = {"test": mark.args[0] if mark.args else mark.kwargs.get("test"), "line": mark.kwargs.get("line")}
    if values["test"] is None and values["line"] is None:
        raise MarkerError(
            f"{nodeid}: @pytest.mark.{MARKER} sets no limit; use e.g. mem_limit(\"60MiB\") or "
            f"mem_limit(line=\"5MiB\")"
        )
    limits: dict[str, Limit | None] = {}
    for key, raw in values.items():
        if raw is None:
            limits[key] = None
            continue
        try:
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError(f"{raw!r}: not a size")
            value = _memline.parse_size(raw)
        except (ValueError, OverflowError) as exc:
            raise MarkerError(
                f"{nodeid}: @pytest.mark.{MARKER}({key}={raw!r}): {exc}; expected "
                f"{_memline.SIZE_FORMS}"
            ) from None
        limits[key] = Limit(value, f"@pytest.mark.{MARKER}")
    return TestLimits(test=limits["test"], line=limits["line"])
