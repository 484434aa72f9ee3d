"""Sizes as text, in one place: ``mib`` for tables and diffs (memory_profiler's one decimal),
``format_size`` for limits and messages (the largest unit that fits: ``50 MiB``)."""

from __future__ import annotations

import re

MIB = 1024 * 1024
_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def mib(value: int, digits: int = 1) -> str:
    """Bytes as memory_profiler shows them: ``152.6 MiB`` (``digits``: its ``precision``)."""
    return f"{value / MIB:.{digits}f} MiB"


def signed_mib(value: int, digits: int = 1) -> str:
    return f"{value / MIB:+.{digits}f} MiB"


def format_size(n: int) -> str:
    """Bytes for messages: ``152.6 MiB``, ``50 MiB``, ``512 KiB``, ``100 B``, ``-1.5 GiB``."""
    sign = "-" if n < 0 else ""
    b = abs(n)
    for size, unit in _UNITS:
        if b >= size:
            text = f"{b / size:.1f}".removesuffix(".0")
            return f"{sign}{text} {unit}"
    return f"{sign}{b} B"


# -- text that comes from users' code (node ids, source lines, baseline entries) ------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: what can start markup in the middle of a line (emphasis, code, links, HTML, entities, table
#: cells, strikethrough), escaped with a backslash outside code spans; the text is never at the
#: start of a line, where ``#``, ``-`` or ``1.`` would matter
_MD_PUNCT = re.compile(r"([\\`*_\[\]<>|~&!])")
_MENTION = re.compile(r"@[\w./-]*")


def printable(text: str) -> str:
    """``text`` with control characters (an ESC that would colour or move the terminal's
    cursor, a carriage return, a newline) shown as escapes; tabs as four spaces."""
    text = text.replace("\t", "    ")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text.replace("\n", "\\n"))


def md_code(text: str) -> str:
    """``text`` as a Markdown code span that nothing in it can close: a fence longer than
    any run of backticks inside, ``|`` escaped (GitHub's tables split on it even in code),
    control characters made visible. Mentions, HTML and links are inert inside it."""
    text = printable(text).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_text(text: str) -> str:
    """Plain ``text`` for Markdown: every character with a meaning escaped, and ``@name`` in a
    code span (GitHub turns an escaped ``\\@name`` into a mention all the same)."""
    parts = []
    last = 0
    text = printable(text)
    for m in _MENTION.finditer(text):
        parts.append(_MD_PUNCT.sub(r"\\\1", text[last : m.start()]))
        parts.append(md_code(m.group()))
        last = m.end()
    parts.append(_MD_PUNCT.sub(r"\\\1", text[last:]))
    return "".join(parts)
