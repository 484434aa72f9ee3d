"""CPU cost of memline on real test suites, and whether their outcomes stay the same.

Runs the test suites that ship inside installed packages (pandas, scikit-learn, numpy, ...)
with plain pytest, with ``--memline`` (in place, the default) and with ``--memline
--memline-isolate=fork``, interleaved, ``--repeat`` times, and prints per suite and mode the
median CPU time (user + sys of the pytest process and its children) and its system part, the
ratio to plain and the fixed cost per test (medians over the repetitions of each run against
the plain run of the same repetition), and the outcome counts (which must be the same in every
mode).

    python bench/realsuites.py [--repeat 3] [--suite pandas.tests.reshape] [--suite ...]
        [--modes plain,memline,fork]

A suite is a module for ``--pyargs``, several joined with ``+``, or a preset (``numpy-core``:
numpy's test_umath, test_numeric and test_regression, 6,900 tiny tests). "per test" is the
fixed cost: median over repetitions of (CPU - plain's CPU) / tests run.

Needs the packages installed (``pip install pandas scikit-learn``). CPU time, not wall time:
the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile

SUITES = ["pandas.tests.reshape", "sklearn.preprocessing"]
# named sets of modules (a suite may also be several modules joined with "+")
PRESETS = {
    # thousands of tiny tests in a 150-200 MiB process: the per-test fixed cost decides here
    "numpy-core": "numpy._core.tests.test_umath+numpy._core.tests.test_numeric"
    "+numpy._core.tests.test_regression",
}
MODES = {
    "plain": ["-p", "no:memline"],
    "memline": ["--memline"],
    "fork": ["--memline", "--memline-isolate=fork"],
}


# BLAS and OpenMP worker threads spin-wait between calls and make CPU time noisy (numpy's suite
# moved by 30% from run to run): one thread in every mode
ONE_THREAD = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


#: modes that import pytest_memline from another folder (``--build NAME=DIR``): a build of
#: another commit, measured side by side with this one
MODE_PATH: dict[str, str] = {}


def run(suite: str, args: list[str], path: str | None = None) -> tuple[float, float, str]:
    env = dict(os.environ, PYTHONHASHSEED="0", **ONE_THREAD)
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             "--pyargs", *PRESETS.get(suite, suite).split("+"), *args],
            cwd=cwd, capture_output=True, text=True, env=env,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    counts = re.sub(r" in [\d.]+s.*", "", tail).strip("= ")
    return user + system, system, counts


def test_count(counts: str) -> int:
    """Tests run, from pytest's last line ("6855 passed, 61 skipped, 1 xfailed")."""
    return sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed|skipped|xfailed|xpassed|error)", counts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--suite", action="append", default=None)
    p.add_argument("--modes", default="plain,memline,fork")
    p.add_argument("--mode", action="append", default=[], metavar="NAME=ARGS",
                   help='an extra mode, e.g. --mode "nopeak=--memline --memline-peak=off" (add NAME to --modes)')
    p.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                   help="a mode NAME that runs with --memline, importing pytest_memline from DIR "
                   "(a build of another commit: pip install --no-deps --target DIR WHEEL); add "
                   "NAME to --modes")
    opts = p.parse_args()
    for spec in opts.build:
        name, sep, path = spec.partition("=")
        if not sep or not name or not os.path.isdir(os.path.join(path, "pytest_memline")):
            p.error(f"--build {spec!r}: expected NAME=DIR with DIR/pytest_memline in it")
        MODES[name] = ["--memline"]
        MODE_PATH[name] = os.path.abspath(path)
    for spec in opts.mode:
        name, sep, args = spec.partition("=")
        if not sep or not name:
            p.error(f"--mode {spec!r}: expected NAME=ARGS")
        MODES[name] = args.split()
    modes = [m for m in opts.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; known: {', '.join(MODES)}")
    suites = opts.suite or SUITES
    rows = []
    same = True
    for suite in suites:
        times: dict[str, list[float]] = {m: [] for m in modes}
        sys_times: dict[str, list[float]] = {m: [] for m in modes}
        outcomes: dict[str, set[str]] = {m: set() for m in modes}
        for i in range(opts.repeat):
            for mode in modes:
                cpu, system, counts = run(suite, MODES[mode], MODE_PATH.get(mode))
                times[mode].append(cpu)
                sys_times[mode].append(system)
                outcomes[mode].add(counts)
                print(f"  {suite} {mode} {i + 1}/{opts.repeat}: {cpu:.1f} s CPU ({system:.1f} s sys), {counts}", flush=True)
        for mode in modes:
            med = statistics.median(times[mode])
            tests = max(test_count(o) for o in outcomes[mode])
            ratio = per_test = ""
            if "plain" in times and mode != "plain":
                # paired with the plain run of the same repetition (the machine's load drifts)
                pairs = list(zip(times[mode], times["plain"]))
                ratio = f"{statistics.median(t / p for t, p in pairs):.2f}x"
                if tests:
                    per_test = f"{1000 * statistics.median(t - p for t, p in pairs) / tests:.2f} ms"
            rows.append((suite, mode, med, min(times[mode]), max(times[mode]),
                         statistics.median(sys_times[mode]), ratio, per_test,
                         " / ".join(sorted(outcomes[mode]))))
        first = outcomes[modes[0]]
        same = same and all(outcomes[m] == first for m in modes)
    print()
    print(f"python {sys.version.split()[0]}, {opts.repeat} interleaved runs, CPU = user + sys")
    print("ratio and per test: medians over repetitions of (mode vs plain of the same repetition)")
    print("| suite | mode | median CPU | range | of it sys | ratio | per test | outcomes |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    for suite, mode, med, lo, hi, system, ratio, per_test, outs in rows:
        print(f"| {suite} | {mode} | {med:.1f} s | {lo:.1f}-{hi:.1f} s | {system:.1f} s | {ratio} | {per_test} | {outs} |")
    print("outcomes identical in every mode" if same else "OUTCOMES DIFFER between modes")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
