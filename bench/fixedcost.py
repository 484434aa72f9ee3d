"""Instruction count of memline's fixed cost per test, where thousands of tiny tests run.

Real suites such as numpy's ``_core/tests`` run thousands of tests of a few lines each in a
process of 150-200 MiB; there the cost memline pays once per test (setup, start and stop of
the tracer, the collection and trim before the test, building the table, the report hooks)
decides the overhead, not the cost per line. Timing cannot resolve it on a shared machine,
so this runs a generated suite of that shape (tiny parametrized numpy tests, with numpy and,
when installed, pandas imported so that the heap is large) under callgrind, plain and with
``--memline``, each at two sizes (``--tests`` and three times as many), so that what is paid
once per session (imports, configuration, the summary) drops out of the slope, and prints:

- the instructions per test that ``--memline`` adds (the slope's difference), and
- the C functions whose counts per test grew most, by self cost and by inclusive cost (where
  the cost goes: the garbage collector, ``malloc_trim``, ``_Py_Instrument`` re-instrumenting
  code objects, memline's own native functions, the interpreter running the plugin's code).

    python bench/fixedcost.py [--tests 100] [--top 20] [-- extra pytest args for memline]

Callgrind counts user-space instructions only: the kernel's side of syscalls is not in them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap

SUITE = '''
import numpy as np
import pytest
{extra_import}

@pytest.mark.parametrize("n", range({tests}))
def test_tiny(n):
    a = np.arange(n % 17 + 1, dtype=np.float64)
    b = a * 2.0
    assert b.sum() == 2.0 * a.sum()
'''


def callgrind(cwd: str, args: list[str], out: str) -> None:
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
        "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist",
        "test_tiny.py", *args,
    ]
    # no bytecode written: otherwise the first run of each size compiles the test module and
    # the next reads it back, which leaves tens of thousands of instructions of `compile` in
    # one mode's slope and not the other's
    env = dict(
        os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"pytest failed under callgrind ({' '.join(args) or 'plain'}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def counts(out: str, inclusive: bool) -> tuple[int, dict[str, int]]:
    """Total instructions and the count per function (self, or inclusive)."""
    text = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", out],
        capture_output=True, text=True, check=True,
    ).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    funcs: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(?:\*\s+)?(\S+)", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2).split(":", 1)[-1] if ":" in m.group(2) else m.group(2)
            funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return total, funcs


# the call machinery every Python call goes through: inclusive counts that say nothing
GENERIC = re.compile(
    r"'\d+$|^0x|^\(below|Vectorcall|vectorcall|_Call|Call_|EvalCode|EvalFrame|_PyEval_Vector|"
    r"builtin_exec|slot_tp_call|object_vacall|main|Main|run_module|run_python|MakeTpCall|"
    r"CallMethod|CallOneArg|CallNoArgs|_start"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tests", type=int, default=100)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("memline_args", nargs="*", help="pytest args of the memline run (default --memline)")
    opts = p.parse_args()
    try:
        import pandas  # noqa: F401
        extra = "import pandas  # a large heap, as in the suites this models"
    except ImportError:
        extra = ""
    memline_args = opts.memline_args or ["--memline"]
    small, large = opts.tests, 3 * opts.tests
    runs: dict[tuple[str, int], tuple[tuple[int, dict[str, int]], tuple[int, dict[str, int]]]] = {}
    with tempfile.TemporaryDirectory() as cwd:
        for n in (small, large):
            with open(os.path.join(cwd, "test_tiny.py"), "w") as f:
                f.write(textwrap.dedent(SUITE.format(tests=n, extra_import=extra)))
            for name, args in (("plain", ["-p", "no:memline"]), ("memline", memline_args)):
                out = os.path.join(cwd, f"cg.{name}.{n}")
                callgrind(cwd, args, out)
                runs[name, n] = (counts(out, False), counts(out, True))

    def per_test(name: str, which: int, func: str | None = None) -> float:
        """Instructions per test of mode ``name`` (slope between the two sizes)."""
        (t_small, f_small), (t_large, f_large) = runs[name, small][which], runs[name, large][which]
        if func is None:
            return (t_large - t_small) / (large - small)
        return (f_large.get(func, 0) - f_small.get(func, 0)) / (large - small)

    plain, ml = per_test("plain", 0), per_test("memline", 0)
    print(f"python {sys.version.split()[0]}, {small} and {large} tiny tests, memline args: {' '.join(memline_args)}")
    print(f"instructions per test: plain {plain:,.0f}, memline {ml:,.0f}: +{ml - plain:,.0f} per test ({ml / plain:.2f}x)")
    for which, title in ((0, "self"), (1, "inclusive")):
        names = set(runs["plain", large][which][1]) | set(runs["memline", large][which][1])
        if which == 1:
            names = {n for n in names if not GENERIC.search(n)}
        grown = sorted(
            ((per_test("memline", which, n) - per_test("plain", which, n), n) for n in names), reverse=True
        )
        print()
        print(f"| function ({title}) | plain per test | memline per test | added per test |")
        print("| --- | ---: | ---: | ---: |")
        for diff, name in grown[: opts.top]:
            print(f"| {name[:80]} | {per_test('plain', which, name):,.0f} | {per_test('memline', which, name):,.0f} | {diff:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
