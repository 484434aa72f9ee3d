"""What the plugin needs before it knows whether it is on: the marker's and options' names,
and a look at pyproject.toml. Kept small and free of dataclasses, so that a run with the plugin
installed but off imports next to nothing (the full resolver is in ``_settings``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

MARKER = "mem_limit"


def mem_limit(
    test: object = None,
    *,
    line: object = None,
    tolerance: object = None,
    noise_floor: object = None,
    metric: object = None,
    trace: object = None,
    leak: object = None,
    leak_runs: object = None,
) -> None:
    """The ``mem_limit`` marker's signature: its arguments are bound to it (see
    ``_settings.parse_marker``); each keyword is the setting of ``_keys.MARKER_KEYS``."""


MARKER_SIGNATURE = inspect.signature(mem_limit)
MARKER_KEYWORDS = tuple(MARKER_SIGNATURE.parameters)
_PLAIN = MARKER_SIGNATURE.replace(
    parameters=[p.replace(annotation=inspect.Parameter.empty) for p in MARKER_SIGNATURE.parameters.values()],
    return_annotation=inspect.Signature.empty,
)
MARKER_DOC = (
    f"{MARKER}{_PLAIN}: "
    + "pytest-memline budgets. The test fails when its peak RSS growth exceeds `test`, or when "
    "any line's increment or peak exceeds `line` (sizes like '60MiB', '1.5 GiB', '512KiB' or an "
    "int of bytes); with --memline-compare, `tolerance` ('20%') and `noise_floor` ('2MiB') set "
    "how much growth over the baseline this test may show; `metric` ('rss' or 'heap') what is "
    "measured; `trace=False` runs the test untraced (for tests that check reference counts: see "
    "the README); `leak` ('1MiB') how much memory the test may leave behind after its "
    "teardown; `leak_runs` (3) how many more times its body runs to confirm a leak."
)
#: The accepted calls, for error messages.
MARKER_USAGE = (
    "mem_limit(test, *, line, tolerance, noise_floor, metric, trace, leak, leak_runs), e.g. "
    'mem_limit("60MiB"), mem_limit("60MiB", line="5MiB"), mem_limit(line="5MiB"), '
    'mem_limit(tolerance="20%"), mem_limit(leak="1MiB", leak_runs=3) or mem_limit(trace=False)'
)


def count(n: int, noun: str) -> str:
    """``1 test``, ``2 tests``, ``1 other entry``, ``3 other entries``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def display(path: str | Path) -> str:
    """A path as the user would write it: relative to the working directory when below it."""
    return _display(Path(path))


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
    from pytest_memline import _keys, _memline

    try:
        return _memline.parse_pyproject(text, display, *_keys.schema()), display
    except ValueError as exc:
        raise pytest.UsageError(f"memline: {exc}") from None


def enabled_from(option: bool | None, config: Mapping[str, Any] | None) -> bool:
    if option is not None:
        return option
    return bool(config and config.get("enabled"))


