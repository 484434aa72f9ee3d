"""A realistic suite for measuring the regression gate: what data-library tests do.

Forty tests in seven files: json round trips, string building, lists of small objects,
caches built on first use (``functools.lru_cache``, a module-level dict, lazy imports), pandas
(groupby, pivot, merge, CSV, string methods), numpy (temporaries, a callee's 100 MiB temporary,
a 50 MiB and a 275 MiB array kept), bytearrays, and a test that leaves a 100 MiB reference
cycle behind. Lines of many small objects are the ones whose RSS moves between runs; lines of
one large buffer do not.

``write_suite(root, inject=..., size=...)`` writes it; ``INJECTIONS`` are the regressions the
detection benchmark plants, one per site:

- ``new``: a new line keeping ``size`` MiB, in a test of small objects (json);
- ``line50``: the 50 MiB line made to keep 50 + ``size`` MiB;
- ``line275``: the 275 MiB line made to keep 275 + ``size`` MiB;
- ``peak``: the callee's 100 MiB numpy temporary made 100 + ``size`` MiB (Peak only: the
  line keeps nothing).

A ``conftest.py`` reverses the collected order when ``GATE_SUITE_REVERSED=1``.
"""

from __future__ import annotations

from pathlib import Path

#: injection site -> (test node id, the contents of the line that regresses)
INJECTIONS = {
    "new": ("test_json.py::test_records_roundtrip", "extra = np.ones({n} * 2**17)"),
    "line50": ("test_numpy.py::test_keeps_50", "block = np.ones((50 + {n}) * 2**17)"),
    "line275": ("test_numpy.py::test_grid_275", "grid = np.ones((275 + {n}) * 2**17)"),
    "peak": ("test_numpy.py::test_callee_temporary", "total = reduce_scratch(100 + {n})"),
}

CONFTEST = '''
import os


def pytest_collection_modifyitems(items):
    if os.environ.get("GATE_SUITE_REVERSED") == "1":
        items.reverse()
'''

PYPROJECT = """
[tool.pytest.ini_options]
addopts = ["-p", "no:cacheprovider"]
"""

JSON = '''
import json

import numpy as np


def test_records_roundtrip():
    payload = [{{"id": i, "tags": ["a", "b", str(i)], "score": i / 7}} for i in range(40_000)]
{new}    text = json.dumps(payload)
    back = json.loads(text)
    assert back[123]["id"] == 123


def test_nested_document():
    doc = {{"rows": [[i, str(i), [i] * 3] for i in range(30_000)]}}
    text = json.dumps(doc, indent=1)
    assert json.loads(text)["rows"][7][0] == 7


def test_many_small_documents():
    texts = [json.dumps({{"k": i, "v": [i, i + 1]}}) for i in range(60_000)]
    parsed = [json.loads(t) for t in texts]
    assert parsed[-1]["k"] == 59_999


def test_dump_to_string_io():
    import io

    buf = io.StringIO()
    json.dump({{str(i): i for i in range(100_000)}}, buf)
    assert len(buf.getvalue()) > 100_000
'''

STRINGS = '''
import io


def test_fstring_parts():
    parts = [f"{i:08d}" for i in range(150_000)]
    joined = ",".join(parts)
    assert len(joined) == 150_000 * 9 - 1


def test_string_io_building():
    out = io.StringIO()
    for i in range(100_000):
        out.write(f"row {i}: {i * i}\\n")
    text = out.getvalue()
    assert text.count("\\n") == 100_000


def test_split_and_upper():
    text = "lorem ipsum dolor sit amet " * 200_000
    words = text.split()
    upper = [w.upper() for w in words[:300_000]]
    assert upper[0] == "LOREM"


def test_big_string_replace():
    s = "abcdefgh" * (2 * 2**20)
    t = s.replace("c", "CC")
    assert len(t) > len(s)


def test_bytes_join():
    chunks = [bytes([i % 256]) * 64 for i in range(100_000)]
    blob = b"".join(chunks)
    assert len(blob) == 6_400_000
'''

OBJECTS = '''
import operator
from collections import Counter
from dataclasses import dataclass


@dataclass
class Point:
    x: int
    y: int


def test_sort_points():
    points = [Point(i % 1000, -i) for i in range(100_000)]
    points.sort(key=operator.attrgetter("x", "y"))
    assert points[0].x == 0


def test_dict_of_tuples():
    table = {i: (i, str(i), float(i)) for i in range(120_000)}
    assert table[5][1] == "5"


def test_set_of_ints():
    seen = set(range(0, 600_000, 3))
    assert 300 in seen


def test_counter_of_words():
    words = [f"w{i % 5000}" for i in range(200_000)]
    counts = Counter(words)
    assert counts["w1"] == 40


def test_million_small_lists():
    rows = [[i] for i in range(1_000_000)]
    assert len(rows) == 1_000_000


def test_nested_dicts():
    tree = {i: {"a": i, "b": [i, i]} for i in range(60_000)}
    assert tree[9]["b"] == [9, 9]
'''

CACHES = '''
import functools

_REGISTRY = {}


@functools.lru_cache(maxsize=None)
def lookup_table(n):
    return {i: str(i) * 4 for i in range(n)}


def registry(name):
    if name not in _REGISTRY:
        _REGISTRY[name] = [str(i) for i in range(80_000)]
    return _REGISTRY[name]


def test_lru_first():
    table = lookup_table(100_000)
    assert table[7] == "7777"


def test_lru_second():
    table = lookup_table(100_000)
    assert len(table) == 100_000


def test_registry_first():
    names = registry("main")
    assert names[3] == "3"


def test_registry_second():
    names = registry("main")
    assert len(names) == 80_000


def test_lazy_import_first():
    import decimal
    import fractions
    values = [fractions.Fraction(i, 7) + fractions.Fraction(decimal.Decimal(i) / 8) for i in range(2_000)]
    assert values


def test_lazy_import_second():
    import fractions
    total = sum(fractions.Fraction(1, i) for i in range(1, 2_000))
    assert total > 1


def test_regex_cache():
    import re
    found = [re.findall(r"\\d+", f"a{i}b{i * 3}") for i in range(30_000)]
    assert found[10] == ["10", "30"]
'''

PANDAS = '''
import io

import numpy as np
import pandas as pd


def frame(n=200_000):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "key": rng.integers(0, 1_000, n),
        "cat": rng.choice(["a", "b", "c", "d"], n),
        "value": rng.random(n),
    })


def test_groupby_agg():
    df = frame()
    out = df.groupby("key").agg({"value": ["sum", "mean", "max"]})
    assert len(out) == 1_000


def test_pivot_table():
    df = frame()
    pt = df.pivot_table(index="key", columns="cat", values="value", aggfunc="mean")
    assert pt.shape == (1_000, 4)


def test_merge():
    left = frame()
    right = pd.DataFrame({"key": np.arange(1_000), "label": [f"k{i}" for i in range(1_000)]})
    merged = left.merge(right, on="key", how="left")
    assert len(merged) == len(left)


def test_csv_roundtrip():
    df = frame(100_000)
    text = df.to_csv(index=False)
    back = pd.read_csv(io.StringIO(text))
    assert back.shape == df.shape


def test_string_methods():
    s = pd.Series([f"item-{i}" for i in range(150_000)])
    upper = s.str.upper()
    parts = s.str.split("-", expand=True)
    assert upper.iloc[0] == "ITEM-0" and parts.shape[1] == 2


def test_from_records():
    records = [{"a": i, "b": str(i), "c": i * 0.5} for i in range(80_000)]
    df = pd.DataFrame.from_records(records)
    assert df.shape == (80_000, 3)


def test_concat_frames():
    parts = [frame(20_000) for _ in range(5)]
    whole = pd.concat(parts, ignore_index=True)
    assert len(whole) == 100_000
'''

NUMPY = '''
import numpy as np


def reduce_scratch(mib):
    scratch = np.ones(mib * 2**17)
    return float(scratch.sum())


def test_temporaries():
    a = np.arange(2_500_000, dtype=np.float64)
    b = (a * 2 + 1) / 3
    total = float((b - a).sum())
    assert total != 0


def test_callee_temporary():
    total = {peak}
    assert total > 0


def test_keeps_50():
    block = {line50}
    assert block.sum() > 0


def test_grid_275():
    grid = {line275}
    assert grid[0] == 1.0


def test_sort_unique():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 10_000, 2_000_000)
    uniq = np.unique(values)
    assert len(uniq) <= 10_000


def test_matmul():
    rng = np.random.default_rng(2)
    m = rng.random((700, 700))
    p = m @ m.T
    assert p.shape == (700, 700)
'''

BUFFERS = '''
class Node:
    def __init__(self, payload):
        self.payload = payload
        self.me = None


def test_bytearray_10():
    data = bytearray(10 * 2**20)
    assert len(data) == 10 * 2**20


def test_list_of_buffers():
    keep = []
    for _ in range(200):
        keep.append(bytearray(64 * 1024))
    assert len(keep) == 200


def test_leaves_a_cycle():
    n = Node(bytearray(100 * 2**20))
    n.me = n
    del n


def test_after_the_cycle():
    rows = [[i, i] for i in range(500_000)]
    assert len(rows) == 500_000


def test_bytes_copy():
    data = bytes(20 * 2**20)
    copy = bytearray(data)
    assert len(copy) == len(data)
'''


def line(text: str, indent: str = "    ") -> str:
    return indent + text + "\n"


def write_suite(root: Path, inject: str | None = None, size: int = 0, sites: tuple[str, ...] = ()) -> None:
    """Writes the suite into ``root``. ``inject`` (or several ``sites``) plants a regression of
    ``size`` MiB at that site (see ``INJECTIONS``)."""
    chosen = set(sites) | ({inject} if inject else set())
    unknown = chosen - set(INJECTIONS)
    if unknown:
        raise ValueError(f"unknown injection site(s) {sorted(unknown)}; known: {sorted(INJECTIONS)}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "pyproject.toml").write_text(PYPROJECT)
    n = size if chosen else 0
    new = line(INJECTIONS["new"][1].format(n=n)) if "new" in chosen else ""
    (root / "test_json.py").write_text(JSON.format(new=new))
    (root / "test_strings.py").write_text(STRINGS)
    (root / "test_objects.py").write_text(OBJECTS)
    (root / "test_caches.py").write_text(CACHES)
    (root / "test_pandas.py").write_text(PANDAS)
    (root / "test_buffers.py").write_text(BUFFERS)
    (root / "test_numpy.py").write_text(
        NUMPY.format(
            peak=f"reduce_scratch(100 + {n if 'peak' in chosen else 0})",
            line50=f"np.ones((50 + {n if 'line50' in chosen else 0}) * 2**17)",
            line275=f"np.ones((275 + {n if 'line275' in chosen else 0}) * 2**17)",
        )
    )


def count_tests() -> int:
    import re

    texts = [JSON, STRINGS, OBJECTS, CACHES, PANDAS, NUMPY, BUFFERS]
    return sum(len(re.findall(r"^def test_", t, re.M)) for t in texts)
