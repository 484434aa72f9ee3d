"""The IPython magic ``%memline``, driven in a real IPython shell inside a subprocess.

The subprocess runs with ``-W error``: IPython emits no warning on this path today; if a
version does, filter it narrowly in SHELL below, with a comment saying which and why.

Sizes: memory_profiler's seed example (lists of 10**6 and 2 * 10**7 pointers: 7.63 and
152.59 MiB) and bytearrays of 80 MiB (above glibc's largest mmap threshold, so RSS moves by
their size). Tolerances: 0.5 MiB on 7.6, 3 MiB on the rest.
"""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

pytest.importorskip("IPython", reason="the magic needs IPython (pip install -e '.[test]')")

ROW = re.compile(
    r"^\s*(\d+)\s+(-?[\d.]+) MiB\s+(-?[\d.]+) MiB\s+(-?[\d.]+) MiB\s+(\d+)\s+(.*)$"
)
HEADER = "Line #    Mem usage    Increment         Peak  Occurrences   Line Contents"

SHELL = """
import sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance(colors="nocolor")
assert "IPython" in sys.modules and "pytest_memline" not in sys.modules
shell.run_line_magic("load_ext", "pytest_memline")

def cell(source):
    print(f"--- cell: {source.splitlines()[0]}", flush=True)
    result = shell.run_cell(source)
    sys.stdout.flush(); sys.stderr.flush()
    error = result.error_in_exec or result.error_before_exec
    print(f"--- error: {type(error).__name__}", flush=True)
    return result
"""

SEED = '''
def my_func():
    a = [1] * (10 ** 6)
    b = [2] * (2 * 10 ** 7)
    del b
    return a
'''


def rows(text: str) -> dict[str, tuple[float, float, float, int]]:
    """``contents -> (mem usage, increment, peak, occurrences)`` of the rendered rows that ran."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out[m[6].strip()] = (float(m[2]), float(m[3]), float(m[4]), int(m[5]))
    return out


def ipython(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(drive=SHELL + textwrap.dedent(body))
    return pytester.run(sys.executable, "-W", "error", "drive.py", timeout=180)


def test_seed_example_defined_in_a_cell(pytester: pytest.Pytester) -> None:
    res = ipython(
        pytester,
        f"""
        cell({SEED!r})
        cell("%memline -f my_func my_func()")
        """,
    )
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    assert "--- error: NoneType" in out
    # the cell's source is found (IPython registers cells in linecache): every line is there
    assert HEADER in out
    res.stdout.re_match_lines([r"__main__\.my_func  \(my_func in <ipython-input-1-\w+>\)"])
    r = rows(out)
    assert list(r) == ["a = [1] * (10 ** 6)", "b = [2] * (2 * 10 ** 7)", "del b", "return a"]
    assert abs(r["a = [1] * (10 ** 6)"][1] - 7.6) <= 0.5
    assert abs(r["b = [2] * (2 * 10 ** 7)"][1] - 152.6) <= 3
    assert abs(r["b = [2] * (2 * 10 ** 7)"][2] - 152.6) <= 3
    assert abs(r["del b"][1] + 152.6) <= 3
    assert abs(r["del b"][2]) <= 0.5  # its Peak (the kernel's batched counter): not the 152 MiB
    assert r["return a"][1] == 0.0
    res.stdout.fnmatch_lines(["     1 *def my_func():"])


def test_functions_from_a_file_and_from_a_cell_traced_together(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        loader="""
        MIB = 2**20

        def load(n):
            block = bytearray(n * MIB)
            return block
        """
    )
    res = ipython(
        pytester,
        """
        cell("import loader")
        cell(
            "def pipeline():\\n"
            "    kept = [loader.load(80) for _ in range(2)]\\n"
            "    return len(kept)\\n"
        )
        cell("%memline -f pipeline -f loader.load n = pipeline()")
        cell("print('n =', n)")
        """,
    )
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    pipeline, load = out.split("__main__.pipeline  (")[1].split("loader.load  (")
    assert "pipeline in <ipython-input-" in pipeline
    assert "load in loader.py)" in load
    # the calling line is charged with what load's lines allocated, twice
    p = rows(pipeline)["kept = [loader.load(80) for _ in range(2)]"]
    assert abs(p[1] - 160) <= 6
    l = rows(load)["block = bytearray(n * MIB)"]
    assert abs(l[1] - 160) <= 6 and l[3] == 2
    assert abs(l[2] - 80) <= 3
    assert "note: traced together with loader.load: the summary line is the whole trace's" in out
    res.stdout.fnmatch_lines(["n = 2"])


def test_r_returns_the_trace_and_cell_magic(pytester: pytest.Pytester) -> None:
    res = ipython(
        pytester,
        """
        cell("def grow(keep):\\n    keep.append(bytearray(80 * 2**20))\\n")
        cell("keep = []\\nt = %memline -r -f grow grow(keep)")
        cell("print(type(t).__name__, len(t.tables), t.table.title, t.table.lines[0].occurrences)")
        cell("print('inc', t.table.lines[0].increment, 'dict', sorted(t.to_dict()))")
        cell("%%memline -f grow\\nfor _ in range(3):\\n    grow(keep)\\n")
        """,
    )
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    res.stdout.fnmatch_lines(["Trace 1 __main__.grow 1"])
    [inc] = re.findall(r"^inc (\d+) dict \['tables'\]$", out, re.M)
    assert abs(int(inc) - 80 * 2**20) <= 3 * 2**20
    # -r printed nothing: the only table is the cell magic's, 3 occurrences, +240 MiB
    assert out.count(HEADER) == 1
    r = rows(out)["keep.append(bytearray(80 * 2**20))"]
    assert r[3] == 3 and abs(r[1] - 240) <= 9


def test_statement_that_raises_still_prints_the_table(pytester: pytest.Pytester) -> None:
    res = ipython(
        pytester,
        """
        cell("def load():\\n    data = bytearray(80 * 2**20)\\n    return data\\n")
        cell("%memline -f load kept = load(); 1 / 0")
        """,
    )
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    assert out.index(HEADER) < out.index("ZeroDivisionError")
    assert "--- error: ZeroDivisionError" in out
    assert abs(rows(out)["data = bytearray(80 * 2**20)"][1] - 80) <= 3
    # the traceback shows the statement, not the magic's internals
    assert "----> 1 kept = load(); 1 / 0" in out
    assert "_magic.py" not in out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "%memline my_func()",
            "UsageError: %memline needs at least one -f FUNC, the function(s) to trace, "
            "e.g. %memline -f my_func my_func()",
        ),
        ("%memline -f nope nope()", "UsageError: -f nope: NameError: name 'nope' is not defined"),
        (
            "%memline -f number my_func()",
            "UsageError: -f number: cannot trace 42: it is an int, not a function",
        ),
        (
            "%memline -f len len([])",
            "UsageError: -f len: cannot trace <built-in function len>: it is a "
            "builtin_function_or_method with no Python code (built-in or C extension)",
        ),
        ("%memline -f my_func", "UsageError: %memline needs a statement to run"),
        ("%memline -f", "UsageError: -f needs a function name"),
        ("%memline -x -f my_func my_func()", "UsageError: unknown option -x"),
    ],
)
def test_usage_errors(pytester: pytest.Pytester, line: str, message: str) -> None:
    res = ipython(
        pytester,
        f"""
        cell({SEED!r})
        cell("number = 42")
        cell({line!r})
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert message in res.stderr.lines
    assert HEADER not in res.stdout.str()


def test_help(pytester: pytest.Pytester) -> None:
    res = ipython(pytester, 'print(shell.find_line_magic("memline").__doc__)')
    assert res.ret == 0, res.stderr.str()
    res.stdout.fnmatch_lines(["*%memline [[]-r[]] -f FUNC [[]-f FUNC ...[]] STATEMENT"])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("-f f f()", (["f"], False, "f()")),
        ('-ff\t-r  x = f("a  b")', (["f"], True, 'x = f("a  b")')),  # statement kept verbatim
        ("-r -f obj.method -f mod.load -- -1", (["obj.method", "mod.load"], True, "-1")),
        ("-f f", (["f"], False, "")),
    ],
)
def test_option_parsing(line: str, expected: tuple[list[str], bool, str]) -> None:
    # Parsing only, no trace: in-process. Importing IPython here emits no warning today; if a
    # version does, filter that one warning here (filterwarnings = error).
    pytest.importorskip("IPython")
    from pytest_memline._magic import parse

    assert parse(line) == expected


def test_memit_prints_peak_and_increment_as_memory_profiler(pytester: pytest.Pytester) -> None:
    res = ipython(
        pytester,
        """
        cell("keep = []")
        cell("%memit keep.append(bytearray(40 * 2**20))")
        cell("%memit -r 3 x = bytearray(100 * 2**20); del x")
        cell("%%memit\\ny = bytearray(20 * 2**20)\\ndel y")
        cell("%memit -r zero pass")
        cell("%memit")
        """,
    )
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    found = re.findall(r"^peak memory: ([\d.]+) MiB, increment: ([\d.]+) MiB$", out, re.M)
    assert len(found) == 3, out
    increments = [float(inc) for _, inc in found]
    # 40 MiB kept, 100 MiB transient (the highest of 3 runs), 20 MiB transient in a cell
    assert increments[0] == pytest.approx(40, abs=2)
    assert increments[1] == pytest.approx(100, abs=2)
    assert increments[2] == pytest.approx(20, abs=2)
    peaks = [float(p) for p, _ in found]
    assert peaks[1] - increments[1] > 40  # an absolute RSS, above what the session holds
    assert "-r needs a whole number of runs, 1 or more" in out + res.stderr.str()
    assert "%memit needs a statement to run" in out + res.stderr.str()

