"""The cost of a traced line, in process and end to end in a pytest run, side by side.

``bench/run.py`` measures a traced line in process: ``_memline.start`` / ``stop`` around a
function, against the same function untraced. A user pays the line inside ``pytest
--memline``, in a larger process with pytest's plugins loaded; this measures both in one run,
on the same test body (a loop in the test function itself, so that every line event is one of
the test's own traced lines):

- **in process**: the body run as a function, traced (``start``/``stop``) and untraced,
  ``time.process_time``;
- **end to end**: ``pytest --memline`` and ``pytest -p no:memline`` on a file holding only that
  test, each a subprocess, CPU time (user + sys) from ``RUSAGE_CHILDREN``.

Both interleaved, ``--repeat`` times (default 7), in a shuffled order each repetition. The cost
per line event is the median over repetitions of (traced - untraced) / line events, the events
counted once with a ``sys.settrace`` counter. The end-to-end figure also holds memline's fixed
cost per test (under a millisecond, against a second of lines at the default size).

    python bench/perline.py [--repeat 7] [--iterations 500000]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

BODY = '''
def test_lines():
    total = 0
    for i in range({iterations}):
        total += i
    assert total >= 0
'''


def count_line_events(func) -> int:
    """Line events of ``func``'s own frame (what memline traces), by a ``sys.settrace`` counter."""
    n = 0
    code = func.__code__

    def local(frame, event, arg):
        nonlocal n
        if event == "line":
            n += 1
        return local

    def glob(frame, event, arg):
        return local if frame.f_code is code else None

    sys.settrace(glob)
    try:
        func()
    finally:
        sys.settrace(None)
    return n


def in_process(func, native, traced: bool) -> float:
    t0 = time.process_time()
    if traced:
        native.start([func.__code__])
        try:
            func()
        finally:
            native.stop()
    else:
        func()
    return time.process_time() - t0


def end_to_end(cwd: str, args: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-p", "no:xdist", "test_lines.py", *args],
        cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"),
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"pytest {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--iterations", type=int, default=500_000)
    opts = p.parse_args()
    from pytest_memline import _memline

    source = textwrap.dedent(BODY.format(iterations=opts.iterations))
    namespace: dict = {}
    with tempfile.TemporaryDirectory() as cwd:
        path = os.path.join(cwd, "test_lines.py")
        with open(path, "w") as f:
            f.write(source)
        exec(compile(source, path, "exec"), namespace)
        func = namespace["test_lines"]
        events = count_line_events(func)
        samples: dict[str, list[float]] = {k: [] for k in ("in plain", "in traced", "e2e plain", "e2e traced")}
        jobs = {
            "in plain": lambda: in_process(func, _memline, False),
            "in traced": lambda: in_process(func, _memline, True),
            "e2e plain": lambda: end_to_end(cwd, ["-p", "no:memline"]),
            "e2e traced": lambda: end_to_end(cwd, ["--memline"]),
        }
        for job in jobs.values():  # warm-up, untimed
            job()
        for i in range(opts.repeat):
            order = list(jobs)
            random.shuffle(order)
            for name in order:
                samples[name].append(jobs[name]())
            print(f"  repetition {i + 1}/{opts.repeat}: " + ", ".join(f"{k} {samples[k][-1]:.3f} s" for k in jobs), flush=True)

    def per_line(traced: str, plain: str) -> float:
        return statistics.median(
            (t - u) / events * 1e6 for t, u in zip(samples[traced], samples[plain])
        )

    inside = per_line("in traced", "in plain")
    e2e = per_line("e2e traced", "e2e plain")
    print()
    print(f"python {sys.version.split()[0]}, {events:,} line events, {opts.repeat} interleaved repetitions, CPU time")
    print("| where | untraced (median) | traced (median) | µs per line event |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| in process (start/stop) | {statistics.median(samples['in plain']):.3f} s | {statistics.median(samples['in traced']):.3f} s | {inside:.3f} |")
    print(f"| end to end (pytest) | {statistics.median(samples['e2e plain']):.3f} s | {statistics.median(samples['e2e traced']):.3f} s | {e2e:.3f} |")
    print(f"end to end / in process: {e2e / inside:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
