"""Drive the tracer's hot path for an instruction-count profile (not a timing benchmark).

Instruction counts from callgrind are stable on a busy machine, where timings are not:

    python bench/hotpath.py --report       # runs the cases below under callgrind, prints a table
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.out \
        .venv/bin/python bench/hotpath.py inside settrace off 100000
    callgrind_annotate cg.out | grep -E "_memline|pread|pwrite|getrusage|memcmp"

`inside`: a traced loop, 2 line events per iteration (per-line cost); `outside`: a traced
function calling untraced Python code, 4 lines outside per iteration (cost per line outside).
Backend `none` runs the same code untraced, to subtract the interpreter's share. Callgrind
counts user-space instructions only: the kernel's side of the syscalls is not in them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from pytest_memline import _memline


def loop(n: int) -> int:
    keep = []
    for i in range(n):
        keep.append(i)
    return len(keep)


def leaf(i: int) -> int:
    j = i + 1
    return j


def calls(n: int) -> int:
    total = 0
    for i in range(n):
        total += leaf(i)
    return total


def main() -> None:
    where, backend, peak = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
    if backend == "none":
        loop(n) if where == "inside" else outer(n)
        return
    if where == "inside":
        _memline.start([loop.__code__], peak=peak, backend=backend)
        loop(n)
    else:
        _memline.start([outer.__code__], peak=peak, backend=backend)
        outer(n)
    r = _memline.stop()
    print(r.samples, r.error)


def outer(n: int) -> int:
    return calls(n)


#: what one iteration of each workload produces: line events (inside), lines outside (outside)
EVENTS_PER_ITERATION = {"inside": 2, "outside": 4}
OURS = re.compile(r"_memline\.cpython|pread64|pwrite64|getrusage|memcmp")


def callgrind(where: str, backend: str, peak: str, n: int, outdir: str) -> tuple[int, int]:
    """(instructions of the whole run, instructions in memline and its syscall wrappers)."""
    out = os.path.join(outdir, f"cg.{where}.{backend}.{peak}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    cmd += [__file__, where, backend, peak, str(n)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    total = int(re.search(r"Collected : (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    annotate = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", out],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = 0
    for line in annotate.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m and OURS.search(m.group(2)):
            ours += int(m.group(1).replace(",", ""))
    return total, ours


def report(n: int = 100_000) -> None:
    backends = ["settrace"] + (["monitoring"] if sys.version_info >= (3, 12) else [])
    print(f"Python {sys.version.split()[0]}, {n:,} iterations; instructions per event")
    print("| case | backend | peak | all (minus untraced run) | memline's own |")
    print("| --- | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("inside", "outside"):
            base, base_ours = callgrind(where, "none", "off", n, tmp)
            events = n * EVENTS_PER_ITERATION[where]
            for backend in backends:
                for peak in ("off", "on") if where == "inside" else ("off",):
                    total, ours = callgrind(where, backend, peak, n, tmp)
                    print(
                        f"| {where} | {backend} | {peak} | {(total - base) / events:.0f} "
                        f"| {(ours - base_ours) / events:.0f} |"
                    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        report()
    else:
        main()
