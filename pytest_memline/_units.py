"""Sizes as text, in one place: ``mib`` for tables and diffs (memory_profiler's one decimal),
``format_size`` for limits and messages (the largest unit that fits: ``50 MiB``)."""

from __future__ import annotations

MIB = 1024 * 1024
_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def mib(value: int) -> str:
    """Bytes as memory_profiler shows them: ``152.6 MiB``."""
    return f"{value / MIB:.1f} MiB"


def signed_mib(value: int) -> str:
    return f"{value / MIB:+.1f} MiB"


def format_size(n: int) -> str:
    """Bytes for messages: ``152.6 MiB``, ``50 MiB``, ``512 KiB``, ``100 B``, ``-1.5 GiB``."""
    sign = "-" if n < 0 else ""
    b = abs(n)
    for size, unit in _UNITS:
        if b >= size:
            text = f"{b / size:.1f}".removesuffix(".0")
            return f"{sign}{text} {unit}"
    return f"{sign}{b} B"
