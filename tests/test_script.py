"""``python -m pytest_memline script.py [args]``, run for real in a subprocess.

Sizes: memory_profiler's seed example (a list of 10**6 and one of 2 * 10**7 pointers: 7.63 and
152.59 MiB) and bytearrays of 40 MiB (above glibc's largest mmap threshold, 32 MiB, so each one
is mapped when touched and unmapped when freed). Tolerances: 0.5 MiB on 7.6, 3 MiB on the rest.
"""

from __future__ import annotations

import re
import sys

import pytest

ROW = re.compile(
    r"^\s*(\d+)\s+(-?[\d.]+) MiB\s+(-?[\d.]+) MiB\s+(-?[\d.]+) MiB\s+(\d+)\s+(.*)$"
)

SEED = """
@profile
def my_func():
    a = [1] * (10 ** 6)
    b = [2] * (2 * 10 ** 7)
    del b
    return a

if __name__ == "__main__":
    print("script output first")
    my_func()
"""


def rows(text: str) -> dict[str, tuple[float, float, float, int]]:
    """``contents -> (mem usage, increment, peak, occurrences)`` of the rendered rows that ran."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out[m[6].strip()] = (float(m[2]), float(m[3]), float(m[4]), int(m[5]))
    return out


def memline(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-W", "error", "-m", "pytest_memline", *args, timeout=120)


def test_seed_example_with_bare_profile(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(seed=SEED)
    res = memline(pytester, "seed.py")
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    assert out.index("script output first") < out.index("Line #")  # tables come at the end
    assert "__main__.my_func  (my_func in " in out
    r = rows(out)
    assert abs(r["a = [1] * (10 ** 6)"][1] - 7.6) <= 0.5
    assert abs(r["b = [2] * (2 * 10 ** 7)"][1] - 152.6) <= 3
    assert abs(r["b = [2] * (2 * 10 ** 7)"][2] - 152.6) <= 3  # Peak
    assert abs(r["del b"][1] + 152.6) <= 3
    assert r["return a"][1] == 0.0
    assert {v[3] for v in r.values()} == {1}
    assert res.stderr.str() == ""


def test_script_runs_as_main_with_its_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        helper="VALUE = 42",
        prog="""
        import sys
        import helper  # the script's own directory is on sys.path

        print("name", __name__)
        print("argv", sys.argv)
        print("helper", helper.VALUE)
        print("profile builtin", profile.__module__)
        """,
    )
    res = memline(pytester, "prog.py", "-x", "--flag", "value", "-h")
    assert res.ret == 0, res.stderr.str()
    res.stdout.fnmatch_lines(
        [
            "name __main__",
            "argv ['prog.py', '-x', '--flag', 'value', '-h']",
            "helper 42",
            "profile builtin pytest_memline._api",
        ]
    )
    assert "pytest-memline: no @profile function ran in prog.py" in res.stderr.str()


def test_calls_add_up_in_one_table_per_function(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        calls="""
        @profile
        def chunk(n):
            data = bytearray(n * 2**20)
            return len(data)

        @profile
        def driver():
            total = 0
            for n in (40, 40, 40):
                total += chunk(n)
            return total

        assert driver() == 120 * 2**20
        assert chunk(40) == 40 * 2**20
        """
    )
    res = memline(pytester, "calls.py")
    assert res.ret == 0, res.stderr.str()
    out = res.stdout.str()
    # driver first (first to return its tables), then chunk, 4 calls: 3 nested, 1 alone
    assert out.index("__main__.driver  (driver in") < out.index(
        "__main__.chunk, 4 calls  (chunk in"
    )
    driver, chunk = out.split("__main__.chunk, 4 calls")
    d, c = rows(driver), rows(chunk)
    inc, occ = c["data = bytearray(n * 2**20)"][1], c["data = bytearray(n * 2**20)"][3]
    assert abs(inc - 160) <= 4 * 3 and occ == 4
    assert abs(c["data = bytearray(n * 2**20)"][2] - 40) <= 3  # Peak: the largest of one call
    # the caller's line is charged with the callee's peaks, 3 times
    assert d["total += chunk(n)"][3] == 3
    assert abs(d["total += chunk(n)"][2] - 40) <= 3
    assert "note: 2 traces merged: Increment and Occurrences add up" in chunk


def test_a_script_that_raises(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        fails="""
        @profile
        def load():
            data = bytearray(40 * 2**20)
            return data

        def main():
            kept = load()
            raise RuntimeError(f"failed after {len(kept)} bytes")

        main()
        """
    )
    res = memline(pytester, "fails.py")
    assert res.ret == 1
    assert abs(rows(res.stdout.str())["data = bytearray(40 * 2**20)"][1] - 40) <= 3
    err = res.stderr.lines
    # the traceback starts at the script: the runner's frames are left out
    assert err[0] == "Traceback (most recent call last):"
    assert err[1].endswith('fails.py", line 10, in <module>')
    assert err[-1] == "RuntimeError: failed after 41943040 bytes"
    assert "runpy" not in res.stderr.str()


def test_sys_exit_keeps_its_code_and_prints_the_tables(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        exits="""
        import sys

        @profile
        def work():
            return len(bytearray(40 * 2**20))

        work()
        sys.exit(3)
        """
    )
    res = memline(pytester, "exits.py")
    assert res.ret == 3
    r = rows(res.stdout.str())["return len(bytearray(40 * 2**20))"]
    assert r[1] == 0.0 and abs(r[2] - 40) <= 3  # Increment 0, Peak 40 MiB: freed on the line
    assert res.stderr.str() == ""


def test_explicit_stream_prints_each_call_as_it_returns(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        streams="""
        import sys
        from pytest_memline import profile

        @profile(stream=sys.stderr)
        def each():
            return 1

        each(); each()
        print("done")
        """
    )
    res = memline(pytester, "streams.py")
    assert res.ret == 0
    assert res.stderr.str().count("Line #") == 2
    assert "Line #" not in res.stdout.str()


def test_missing_script_and_usage(pytester: pytest.Pytester) -> None:
    res = memline(pytester, "nope.py")
    assert res.ret == 2
    assert res.stderr.lines[-1] == (
        "python -m pytest_memline: error: cannot run 'nope.py': no such file"
    )

    res = memline(pytester)
    assert res.ret == 2
    assert "python -m pytest_memline: error: the following arguments are required: script" in (
        res.stderr.str()
    )

    res = memline(pytester, "-h")
    assert res.ret == 0
    out = res.stdout.str()
    assert out.startswith("usage: python -m pytest_memline [-h] script [args ...]")
    assert "@profile (available as a builtin" in out

    res = memline(pytester, "--bogus", "x.py")
    assert res.ret == 2
    assert "unrecognized arguments: --bogus" in res.stderr.str()
