"""The Python API: ``profile``, ``trace``, ``tracing``.

Everything that traces runs in a subprocess (``pytester.run``), so the tracer never competes
with the pytest running these tests. The scripts allocate bytearrays of 80 MiB: above glibc's
largest mmap threshold (32 MiB), so they are mapped when touched and unmapped when freed, and
RSS moves by their size. Tolerance: 3 MiB on 80 MiB (page tables, the interpreter's own
allocations on the same line).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest

import pytest_memline

MIB = 2**20
TOL = 3 * MIB
#: 80 MiB within TOL, as rendered (one decimal)
R80 = r"(7[7-9]|8[0-3])\.\d MiB"

# A script prelude: an allocating function, and a way to hand results back as JSON.
PRELUDE = """
import json, sys
import pytest_memline
from pytest_memline import profile, trace, tracing, MemoryTable

MIB = 2**20

def result(**kw):
    print("RESULT " + json.dumps(kw))

def inc(table, text):
    [row] = [r for r in table.lines if r.contents.strip() == text]
    return row.increment
"""


def run(pytester: pytest.Pytester, body: str, *args: str) -> tuple[pytest.RunResult, dict]:
    """Runs PRELUDE + body as a script; returns the run and its RESULT (merged)."""
    pytester.makepyfile(script=PRELUDE + textwrap.dedent(body))
    res = pytester.run(sys.executable, "-W", "error", "script.py", *args, timeout=120)
    out: dict = {}
    for line in res.outlines:
        if line.startswith("RESULT "):
            out.update(json.loads(line[len("RESULT ") :]))
    return res, out


def test_trace_returns_the_value_and_the_table(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        def load(n):
            data = bytearray(n * MIB)
            return data

        t = trace(load, 80)
        d = t.table.to_dict()
        result(
            value=len(t.value),
            inc=inc(t.table, "data = bytearray(n * MIB)"),
            peak=t.table.lines[0].peak,
            linenos=[r.lineno for r in t.table.lines],
            occurrences=[r.occurrences for r in t.table.lines],
            roundtrip=MemoryTable.from_dict(json.loads(json.dumps(d))) == t.table,
            title=t.table.title,
            rendered=t.render(),
            n_tables=len(t.tables),
            repr=repr(t),
        )
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert out["value"] == 80 * MIB
    assert abs(out["inc"] - 80 * MIB) <= TOL
    assert abs(out["peak"] - 80 * MIB) <= TOL
    assert out["linenos"] == [out["linenos"][0], out["linenos"][0] + 1]
    assert out["occurrences"] == [1, 1]
    assert out["roundtrip"] is True
    assert out["title"] == "__main__.load"
    assert out["n_tables"] == 1
    assert out["repr"] == "<Traced of __main__.load: 1 tables>"
    rendered = out["rendered"]
    assert "Line #    Mem usage    Increment         Peak  Occurrences   Line Contents" in rendered
    assert "data = bytearray(n * MIB)" in rendered
    # the row as rendered: Increment and Peak about 80 MiB, then Occurrences 1
    assert re.search(rf"\s{R80}\s+{R80}\s+1\s+data = bytearray\(n \* MIB\)", rendered), rendered


def test_tracing_gives_one_table_per_function_even_when_the_block_raises(
    pytester: pytest.Pytester,
) -> None:
    res, out = run(
        pytester,
        """
        def grow(keep):
            keep.append(bytearray(80 * MIB))

        def shrink(keep):
            keep.pop()

        def unused():
            return 1

        keep = []
        try:
            with tracing(grow, shrink, unused) as t:
                assert not t.finished
                grow(keep); grow(keep); shrink(keep)
                raise KeyError("inside")
        except KeyError:
            pass
        g, s, u = t.tables
        result(
            names=list(t.names),
            grow=inc(g, "keep.append(bytearray(80 * MIB))"),
            grow_occ=g.lines[0].occurrences,
            shrink=inc(s, "keep.pop()"),
            unused_ran=[r.lineno for r in u.lines],
            unused_notes=list(u.notes),
            together=[n for n in g.notes if "together" in n],
            tracing_after=pytest_memline._memline.is_tracing(),
        )
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert out["names"] == ["__main__.grow", "__main__.shrink", "__main__.unused"]
    assert abs(out["grow"] - 160 * MIB) <= 2 * TOL
    assert out["grow_occ"] == 2
    assert abs(out["shrink"] + 80 * MIB) <= TOL
    assert out["unused_ran"] == []
    assert "__main__.unused did not run during the trace" in out["unused_notes"]
    assert out["together"] == [
        "traced together with __main__.shrink: the summary line is the whole trace's"
    ]
    assert out["tracing_after"] is False


def test_a_second_trace_is_refused_while_one_runs(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        def f():
            return 1

        def g():
            return 2

        with tracing(f) as t:
            try:
                with tracing(g):
                    pass
            except RuntimeError as exc:
                error = str(exc)
            f()
        result(error=error, f_ran=len(t.table.lines))
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert out["error"] == (
        "memline: cannot trace __main__.g: a memline trace of __main__.f is running"
    )
    assert out["f_ran"] == 1


def test_profile_prints_each_call_and_keeps_the_last_tables(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        @profile
        def to_stdout():
            data = bytearray(80 * MIB)
            return len(data)

        @profile(stream=sys.stderr)
        def to_stderr():
            data = bytearray(80 * MIB)
            return len(data)

        @profile(stream=None, keep=2)
        def quiet(n):
            data = bytearray(n * MIB)
            return len(data)

        print("calls:")
        assert to_stdout() == 80 * MIB
        to_stderr()
        quiet(40); quiet(80); quiet(120)
        result(
            kept=len(quiet.memline_tables),
            incs=[inc(t, "data = bytearray(n * MIB)") for t in quiet.memline_tables],
            stdout_tables=len(to_stdout.memline_tables),
            wrapped=quiet.__wrapped__.__name__,
            name=quiet.__name__,
        )
        """,
    )
    assert res.ret == 0, res.stderr.str()
    stdout, stderr = res.stdout.str(), res.stderr.str()
    assert stdout.count("Line #") == 1
    assert "__main__.to_stdout  (to_stdout in " in stdout
    assert stderr.count("Line #") == 1
    assert "__main__.to_stderr  (to_stderr in " in stderr
    assert out["kept"] == 2
    assert abs(out["incs"][0] - 80 * MIB) <= TOL
    assert abs(out["incs"][1] - 120 * MIB) <= TOL
    assert out["stdout_tables"] == 1
    assert out["wrapped"] == out["name"] == "quiet"
    res.stdout.re_match_lines([rf".*\s{R80}\s+{R80}\s+1\s+data = bytearray\(80 \* MIB\)"])


def test_profile_prints_the_table_when_the_function_raises(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        @profile
        def fails():
            data = bytearray(80 * MIB)
            raise ValueError(len(data))

        try:
            fails()
        except ValueError as exc:
            table = fails.memline_tables[-1]
            result(error=exc.args[0], inc=inc(table, "data = bytearray(80 * MIB)"))
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert out["error"] == 80 * MIB
    assert abs(out["inc"] - 80 * MIB) <= TOL
    res.stdout.fnmatch_lines(["*raise ValueError(len(data))"])


def test_nested_profiled_functions_are_traced_together(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        @profile(stream=None)
        def inner():
            data = bytearray(80 * MIB)
            return data

        @profile(stream=None)
        def outer():
            kept = inner()
            return len(kept)

        outer()
        o, i = outer.memline_tables[-1], inner.memline_tables[-1]
        result(
            outer=inc(o, "kept = inner()"),
            inner=inc(i, "data = bytearray(80 * MIB)"),
            n_outer=len(outer.memline_tables), n_inner=len(inner.memline_tables),
        )
        inner()  # on its own now
        result(n_inner_after=len(inner.memline_tables))
        """,
    )
    assert res.ret == 0, res.stderr.str()
    # the caller's line is charged with what the callee's lines allocated
    assert abs(out["outer"] - 80 * MIB) <= TOL
    assert abs(out["inner"] - 80 * MIB) <= TOL
    assert (out["n_outer"], out["n_inner"], out["n_inner_after"]) == (1, 1, 2)
    assert "untraced" not in res.stderr.str()


def test_profile_works_on_methods(pytester: pytest.Pytester) -> None:
    res, out = run(
        pytester,
        """
        class Cache:
            def __init__(self):
                self.blocks = []

            @profile(stream=None)
            def fill(self, n):
                self.blocks.append(bytearray(n * MIB))
                return len(self.blocks)

        c = Cache()
        assert c.fill(80) == 1
        table = Cache.fill.memline_tables[-1]
        result(title=table.title, inc=inc(table, "self.blocks.append(bytearray(n * MIB))"))
        """,
    )
    assert res.ret == 0, res.stderr.str()
    assert out["title"] == "__main__.Cache.fill"
    assert abs(out["inc"] - 80 * MIB) <= TOL


def test_profiled_call_inside_pytest_memline_runs_untraced_and_says_so_once(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_inner="""
        from pytest_memline import profile

        @profile
        def build():
            return bytearray(80 * 2**20)

        def test_calls_build_twice():
            a = build()
            b = build()
            assert len(a) == len(b) == 80 * 2**20
            assert build.memline_tables.maxlen == 10 and not build.memline_tables
        """
    )
    res = pytester.runpytest_subprocess(
        "--memline", "--memline-tables=all", "-s", "-p", "no:cacheprovider"
    )
    res.assert_outcomes(passed=1)
    err = res.stderr.str()
    assert err.count("runs untraced") == 1
    assert (
        "pytest-memline: profile(test_inner.build) runs untraced: another memline trace is "
        "running (pytest --memline traces the calling test) (said once per function)"
    ) in err
    # the test's own table still shows the allocation, on the calling lines
    res.stdout.re_match_lines([rf".*\s{R80}\s+{R80}\s+1\s+a = build\(\)"])


def test_profile_and_tracing_reject_what_they_cannot_trace() -> None:
    # No trace starts in these: safe to run in-process.
    def gen():
        yield 1

    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match=r"profile: .*gen is a generator or async function"):
        pytest_memline.profile(gen)
    with pytest.raises(TypeError, match=r"profile: .*coro is a generator or async function"):
        pytest_memline.profile(coro)
    with pytest.raises(TypeError, match=r"cannot trace <built-in function len>: it is a "
                       r"builtin_function_or_method with no Python code"):
        pytest_memline.profile(len)
    with pytest.raises(TypeError, match=r"it is a class \(dict\); pass one of its methods"):
        with pytest_memline.tracing(dict):
            pass
    with pytest.raises(TypeError, match=r"tracing\(\) needs at least one function"):
        with pytest_memline.tracing():
            pass
    with pytest.raises(ValueError, match=r"profile\(keep=0\): keep at least 1 table"):
        pytest_memline.profile(keep=0)


def test_importing_the_package_loads_neither_the_native_module_nor_ipython(
    pytester: pytest.Pytester,
) -> None:
    res = pytester.run(
        sys.executable,
        "-W",
        "error",
        "-c",
        "import sys, pytest_memline; "
        "print(sorted(m for m in ('IPython', 'pytest_memline._memline') if m in sys.modules)); "
        "print(sorted(pytest_memline.__all__))",
    )
    assert res.ret == 0, res.stderr.str()
    assert res.outlines[0] == "[]"
    assert "load_ipython_extension" in res.outlines[1]
    assert "'profile', 'trace', 'tracing'" in res.outlines[1]


def test_peaks_are_not_floored_by_a_bigger_parent(pytester: pytest.Pytester) -> None:
    # getrusage's ru_maxrss never reads below the peak of the process image replaced at exec:
    # for a child spawned by a 200 MiB parent (a Jupyter server, pytest, an IDE), every line
    # would show a ~180 MiB Peak. The reader notices and reads VmHWM instead.
    pytester.makepyfile(
        child="""
        import json
        from pytest_memline import trace

        def quiet():
            x = 1
            y = [x] * 10
            return len(y)

        t = trace(quiet)
        print(json.dumps({"peaks": [r.peak for r in t.table.lines], "growth": t.table.peak_growth}))
        """,
        parent="""
        import subprocess, sys
        big = bytearray(200 * 2**20)
        big[::4096] = b"x" * len(big[::4096])  # touched: resident
        sys.exit(subprocess.run([sys.executable, "-W", "error", "child.py"]).returncode)
        """,
    )
    res = pytester.run(sys.executable, "parent.py", timeout=120)
    assert res.ret == 0, res.stderr.str()
    out = json.loads(res.outlines[-1])
    assert len(out["peaks"]) == 3
    assert all(0 <= p <= MIB for p in out["peaks"]), out
    assert out["growth"] <= 2 * MIB, out


def test_the_public_api_type_checks(pytester: pytest.Pytester) -> None:
    # Decorated functions keep their signatures; methods keep their return type; the tables
    # are typed. mypy reads the package's py.typed.
    pytest.importorskip("mypy")
    pytester.makepyfile(
        use="""
        import sys
        from pytest_memline import profile, trace, tracing

        @profile
        def f(n: int) -> bytes:
            return bytes(n)

        @profile(stream=sys.stderr, keep=3)
        def g(s: str) -> int:
            return len(s)

        class C:
            @profile
            def m(self, x: int) -> str:
                return str(x)

        reveal_type(f(3))
        reveal_type(f.memline_tables[-1].lines)
        reveal_type(C().m(1))
        reveal_type(trace(g, "x").value)
        with tracing(f, g) as t:
            f(1)
        reveal_type(t.table.to_dict())
        trace(f, "not an int")
        """
    )
    res = pytester.run(sys.executable, "-m", "mypy", "--strict", "use.py", timeout=300)
    # (older mypy versions print "builtins.bytes": the patterns accept both)
    res.stdout.fnmatch_lines(
        [
            'use.py:17: note: Revealed type is "*bytes"',
            'use.py:18: note: Revealed type is "*tuple[[]pytest_memline._memline.LineRow, ...]"',
            'use.py:19: note: Revealed type is "*str"',
            'use.py:20: note: Revealed type is "*int"',
            'use.py:23: note: Revealed type is "*dict[[]*str, Any]"',
            'use.py:24: error: Argument 2 to "trace" has incompatible type "str"; expected "int"  '
            "[[]arg-type[]]",
            "Found 1 error in 1 file (checked 1 source file)",
        ]
    )


def test_profile_takes_memory_profilers_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        script="""
        import io
        from pytest_memline import profile

        out = io.StringIO()

        @profile(stream=out, precision=3, backend="psutil")
        def build():
            a = bytearray(8 * 2**20)
            return len(a)

        build()
        print(out.getvalue())
        for bad in ({"precision": 9}, {"backend": "tracemalloc"}):
            try:
                profile(**bad)
            except ValueError as exc:
                print("error:", exc)
        """
    )
    res = pytester.run(sys.executable, "script.py", timeout=60)
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    row = next(line for line in out.splitlines() if "a = bytearray(8 * 2**20)" in line)
    numbers = re.findall(r"(-?\d+\.\d+) MiB", row)
    assert len(numbers) == 3 and all(len(n.split(".")[1]) == 3 for n in numbers), row
    assert float(numbers[1]) == pytest.approx(8, abs=1)
    assert "error: profile(precision=9): a whole number of decimals, 0 to 6" in out
    assert "error: profile(backend='tracemalloc'): memline measures RSS" in out
