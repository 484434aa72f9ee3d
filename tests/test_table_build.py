"""Building a table from a trace: the native row builder and the source cache (unit tests; the
end-to-end tables are in test_measure.py and test_reporting.py)."""

from __future__ import annotations

import linecache
import textwrap
from pathlib import Path

from pytest_memline._memline import LineRow, table_rows
from pytest_memline.table import build_table, source_of


def test_table_rows_put_each_measured_row_on_its_source_line() -> None:
    source = ["def f():", "    a = 1", "    b = 2", "    return a + b"]
    measured = [
        LineRow(11, "", 1000, 10, 20, 1),
        LineRow(13, "", 3000, -5, 0, 2),
        LineRow(99, "", 1, 1, 1, 1),  # outside the source: ignored
        LineRow(5, "", 1, 1, 1, 1),  # before the first line: ignored
        LineRow(11, "", 2000, 30, 40, 3),  # a later row of the same line wins
    ]
    rows = table_rows(10, source, measured)
    assert [r.lineno for r in rows] == [10, 11, 12, 13]
    assert [r.contents for r in rows] == source
    assert [r.ran for r in rows] == [False, True, False, True]
    assert (rows[1].mem_usage, rows[1].increment, rows[1].peak, rows[1].occurrences) == (2000, 30, 40, 3)
    assert (rows[3].mem_usage, rows[3].increment, rows[3].peak, rows[3].occurrences) == (3000, -5, 0, 2)
    assert rows[0].increment is None and rows[0].occurrences == 0
    assert table_rows(1, [], measured) == ()


def test_source_cache_follows_the_code_and_a_reread_file(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    x = 1\n    return x\n\ndef g():\n    return 2\n")
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    f, g = namespace["f"], namespace["g"]
    first, why = source_of(f.__code__)  # type: ignore[attr-defined]
    assert why is None and first == ["def f():", "    x = 1", "    return x"]
    # the same code again: the same answer; another code: its own lines
    assert source_of(f.__code__)[0] == first  # type: ignore[attr-defined]
    assert source_of(g.__code__)[0] == ["def g():", "    return 2"]  # type: ignore[attr-defined]
    # the file changes and linecache reads it again: the cache must not answer from before
    path.write_text("def f():\n    y = 1\n    return y\n")
    linecache.checkcache(str(path))
    assert source_of(f.__code__)[0] == ["def f():", "    y = 1", "    return y"]  # type: ignore[attr-defined]


def test_build_table_rows_from_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent("""\
        def test_x():
            a = 1
            return a
        """))
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    code = namespace["test_x"].__code__  # type: ignore[attr-defined]
    table = build_table(
        title="t", code=code, lines=[LineRow(2, "", 5 << 20, 1 << 20, 2 << 20, 1)],
        start_rss=4 << 20, end_rss=5 << 20, peak_growth=2 << 20, exact_peak=True,
    )
    assert [(r.lineno, r.contents, r.increment) for r in table.rows] == [
        (1, "def test_x():", None), (2, "    a = 1", 1 << 20), (3, "    return a", None),
    ]
    assert [r.lineno for r in table.lines] == [2]
