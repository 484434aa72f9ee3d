#!/usr/bin/env python3
"""pytest-memline benchmark (issue 4): cost per traced line, per line outside, per test.

    python bench/run.py              # full run (several minutes)
    python bench/run.py --quick      # under 2 minutes
    python bench/run.py --json out.json

Run it with the interpreter of a venv where pytest-memline is installed (`pip install -e
'.[bench]'`). It installs nothing: memory_profiler, line_profiler and pytest-memray are used
when they can be imported and skipped otherwise.

Times are CPU time (user + system) of the process doing the work: on a shared machine that
excludes the time spent waiting for a core, and it includes the tracer's syscalls. All tools of
one workload run interleaved, in a shuffled order each repetition; figures are medians over the
repetitions, ratios the median over repetitions of (tool time / plain time of the same
repetition), per-line figures the median of (tool time - plain time) / lines.

Workloads:

  a  a function whose own body runs ~1,000,000 simple lines (a loop with small allocations):
     microseconds per traced line = (time - plain time) / traced lines.
  b  a function of a few lines calling library code that runs ~1,000,000 lines (sorting with a
     Python key, json's pure-Python encoder, recursion): microseconds per outside line =
     (time - plain time) / lines run outside the traced function.
  c  a generated suite of 200 small tests, `pytest` vs `pytest --memline` vs `pytest --memray`,
     each a subprocess; and a suite of 500 one-line tests for the fixed cost per test: the
     CPU time of pytest_runtest_protocol summed over the tests, --memline minus plain, / 500.
  d  the plugin installed but off: `pytest` vs `pytest -p no:memline` on the suites above and
     on a one-test suite (startup), the import time of the plugin module, and whether the
     native module got imported.
  e  the floor: ns per statm read and per peak reset (clear_refs + getrusage), timed in Rust
     by `_memline._bench_floor` in every repetition of workload a.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_memline import _memline

HAS_MONITORING = sys.version_info >= (3, 12)
BACKENDS = ["settrace", "monitoring"] if HAS_MONITORING else ["settrace"]
DEFAULT_BACKEND = "monitoring" if HAS_MONITORING else "settrace"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------
# The traced code. Fresh function objects are made per run (see `fresh`) so that a tool that
# rewrites or tags `__code__` (line_profiler) cannot affect the others.


def body_loop(n):
    keep = []
    for i in range(n):
        item = [i, i + 1]
        keep.append(item)
        if len(keep) >= 1000:
            keep = []
    return len(keep)


def py_key(x):
    return -x


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def calls_library(data, doc, depth, encoder):
    ordered = sorted(data, key=py_key)
    text = encoder.encode(doc)
    count = fib(depth)
    return len(ordered) + len(text) + count


def fresh(func: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object with its own copy of the code object."""
    code = func.__code__.replace()
    return types.FunctionType(code, func.__globals__, func.__name__)


def count_lines(func: Callable[..., Any], *args: Any) -> tuple[int, int]:
    """(lines run in `func` itself, lines run elsewhere) during `func(*args)`."""
    own, other = 0, 0
    target = func.__code__

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        nonlocal own, other
        if event == "line":
            if frame.f_code is target:
                own += 1
            else:
                other += 1
        return tracer

    sys.settrace(tracer)
    try:
        func(*args)
    finally:
        sys.settrace(None)
    return own, other


# ---------------------------------------------------------------------------------------------
# Tools: each returns the seconds one call of `func(*args)` took under it.


# CPU time of this process, not wall time: on a shared machine it does not count the time
# spent waiting for a core, and the tracer's syscalls are in it (system time).
clock = time.process_time


def run_plain(func: Callable[..., Any], args: tuple[Any, ...]) -> float:
    f = fresh(func)
    t = clock()
    f(*args)
    return clock() - t


def run_memline(
    backend: str, peak: bool, metric: str = "rss"
) -> Callable[[Callable[..., Any], tuple[Any, ...]], float]:
    def run(func: Callable[..., Any], args: tuple[Any, ...]) -> float:
        f = fresh(func)
        t = clock()
        _memline.start([f.__code__], peak=peak, backend=backend, metric=metric)
        try:
            f(*args)
        finally:
            r = _memline.stop()
        elapsed = clock() - t
        if r.error:
            raise RuntimeError(f"memline: {r.error}")
        return elapsed

    return run


def run_memory_profiler(func: Callable[..., Any], args: tuple[Any, ...]) -> float:
    from memory_profiler import LineProfiler

    prof = LineProfiler(backend="psutil")
    wrapped = prof(fresh(func))
    t = clock()
    wrapped(*args)
    return clock() - t


def run_line_profiler(func: Callable[..., Any], args: tuple[Any, ...]) -> float:
    from line_profiler import LineProfiler

    prof = LineProfiler()
    wrapped = prof(fresh(func))
    t = clock()
    wrapped(*args)
    return clock() - t


@dataclass
class Tool:
    name: str
    run: Callable[[Callable[..., Any], tuple[Any, ...]], float]
    args: tuple[Any, ...]
    lines: int  # the lines that count for this tool's per-line figure
    baseline: str  # the plain tool it is compared with
    times: list[float] = field(default_factory=list)


def memline_tools(
    args: tuple[Any, ...], lines: int, baseline: str, peaks: list[bool]
) -> list[Tool]:
    tools = []
    for backend in BACKENDS:
        for peak in peaks:
            name = f"memline {backend}, peak {'on' if peak else 'off'}"
            tools.append(Tool(name, run_memline(backend, peak), args, lines, baseline))
    return tools


def interleave(
    func: Callable[..., Any],
    tools: list[Tool],
    reps: int,
    between: Callable[[], None] | None = None,
) -> None:
    rng = random.Random(4)
    for tool in tools:  # warm-up, not timed
        tool.run(func, tool.args)
    for _ in range(reps):
        order = tools[:]
        rng.shuffle(order)
        for tool in order:
            gc.collect()
            tool.times.append(tool.run(func, tool.args))
        if between is not None:
            between()


def paired_ratio(times: list[float], base: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


# ---------------------------------------------------------------------------------------------
# Rows of the result table.


@dataclass
class Row:
    workload: str
    tool: str
    lines: int
    median_s: float
    ratio: float
    us_per_traced_line: float | None = None
    us_per_outside_line: float | None = None
    times: list[float] = field(default_factory=list)


def rows_for(workload: str, tools: list[Tool], per: str) -> list[Row]:
    by_name = {t.name: t for t in tools}
    rows = []
    for tool in tools:
        base = by_name[tool.baseline]
        med = statistics.median(tool.times)
        row = Row(
            workload,
            tool.name,
            tool.lines,
            med,
            paired_ratio(tool.times, base.times),
            times=tool.times,
        )
        if tool is not base:
            extra = statistics.median(t - b for t, b in zip(tool.times, base.times, strict=True))
            us = extra / tool.lines * 1e6
            if per == "traced":
                row.us_per_traced_line = us
            else:
                row.us_per_outside_line = us
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Workload a: lines of the traced function itself.


def workload_a(quick: bool, reps: int, floors: list[dict[str, Any]]) -> list[Row]:
    target_lines = 300_000 if quick else 1_000_000
    small_lines = 3_000 if quick else 20_000  # memory_profiler: ~100 us a line
    n = target_lines // 4
    n_small = small_lines // 4
    lines, _ = count_lines(body_loop, n)
    lines_small, _ = count_lines(body_loop, n_small)
    tools = [Tool("plain", run_plain, (n,), lines, "plain")]
    tools += memline_tools((n,), lines, "plain", [False, True])
    # the heap metric (tracemalloc: slows every allocation, and two calls per line)
    default = BACKENDS[-1]
    tools.append(
        Tool(f"memline {default}, heap metric", run_memline(default, True, "heap"), (n,), lines, "plain")
    )
    if have("line_profiler"):
        tools.append(Tool("line_profiler", run_line_profiler, (n,), lines, "plain"))
    if have("memory_profiler") and have("psutil"):
        tools.append(
            Tool(
                f"plain ({lines_small:,} lines)",
                run_plain,
                (n_small,),
                lines_small,
                f"plain ({lines_small:,} lines)",
            )
        )
        tools.append(
            Tool(
                "memory_profiler",
                run_memory_profiler,
                (n_small,),
                lines_small,
                f"plain ({lines_small:,} lines)",
            )
        )

    def floor() -> None:
        floors.append(dict(_memline._bench_floor(5_000 if quick else 20_000, 3)))

    interleave(body_loop, tools, reps, between=floor)
    return rows_for("a", tools, "traced")


# ---------------------------------------------------------------------------------------------
# Workload b: lines outside the traced function.


def workload_b(quick: bool, reps: int) -> list[Row]:
    # about a third of the lines each: the sort key, the json encoder, the recursion
    scale = 0.3 if quick else 1.0
    rng = random.Random(7)
    data = [rng.random() for _ in range(int(300_000 * scale))]
    doc = [
        {"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "score": i * 0.5, "ok": i % 2 == 0}
        for i in range(int(2_500 * scale))
    ]
    depth = 22 if quick else 25
    encoder = json.JSONEncoder()
    args = (data, doc, depth, encoder)
    # json's pure-Python encoder: JSONEncoder.iterencode takes it when c_make_encoder is None
    saved, json.encoder.c_make_encoder = json.encoder.c_make_encoder, None  # type: ignore[attr-defined]
    try:
        return _workload_b(args, reps)
    finally:
        json.encoder.c_make_encoder = saved  # type: ignore[attr-defined]


def _workload_b(args: tuple[Any, ...], reps: int) -> list[Row]:
    own, outside = count_lines(calls_library, *args)
    tools = [Tool("plain", run_plain, args, outside, "plain")]
    tools += memline_tools(args, outside, "plain", [True])
    if have("line_profiler"):
        tools.append(Tool("line_profiler", run_line_profiler, args, outside, "plain"))
    if have("memory_profiler") and have("psutil"):
        tools.append(Tool("memory_profiler", run_memory_profiler, args, outside, "plain"))
    interleave(calls_library, tools, reps)
    return rows_for("b", tools, "outside")


# ---------------------------------------------------------------------------------------------
# Workloads c and d: pytest subprocesses.

TRIVIAL = """
def test_trivial_{i}():
    assert {i} + 1 == {j}
"""
ALLOC = """
def test_alloc_{i}():
    data = bytes(range(256)) * (4096 * {mib})
    assert len(data) == {mib} << 20
    del data
"""
WORK = """
def test_work_{i}():
    total = 0
    for k in range({n}):
        total += k * k
    words = sorted(str(k) for k in range(200))
    assert total > 0 and words[0] == "0"
"""
ONE_LINE = """
def test_one_{i}():
    pass
"""


TIMER_PLUGIN = """
import os, time
import pytest

_total = [0.0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t = time.process_time()
    try:
        return (yield)
    finally:
        _total[0] += time.process_time() - t


def pytest_unconfigure(config):
    with open(os.environ["MEMLINE_BENCH_TIMES"], "w") as f:
        f.write(repr(_total[0]))
"""


def write_suites(root: str) -> dict[str, tuple[str, int]]:
    """The suites: name -> (directory, number of tests). Each has an empty pytest.ini (its own
    rootdir) and `memline_bench_timer.py`, a plugin (`-p memline_bench_timer`, in every mode)
    that sums the CPU time of the per-test protocol (setup, call, teardown, reports)."""

    def suite(name: str, files: dict[str, str]) -> str:
        path = os.path.join(root, name)
        os.makedirs(path)
        files = {"pytest.ini": "[pytest]\n", "memline_bench_timer.py": TIMER_PLUGIN, **files}
        for fname, text in files.items():
            with open(os.path.join(path, fname), "w") as f:
                f.write(text)
        return path

    mixed: dict[str, str] = {}
    for k in range(4):
        parts = []
        for i in range(k * 50, k * 50 + 50):
            kind = i % 3
            if kind == 0:
                parts.append(TRIVIAL.format(i=i, j=i + 1))
            elif kind == 1:
                parts.append(ALLOC.format(i=i, mib=1 + i % 4))
            else:
                parts.append(WORK.format(i=i, n=500 + 10 * (i % 50)))
        mixed[f"test_mixed_{k}.py"] = "".join(parts)
    one_line = {
        f"test_one_{k}.py": "".join(ONE_LINE.format(i=i) for i in range(k * 100, k * 100 + 100))
        for k in range(5)
    }
    return {
        "suite200": (suite("suite200", mixed), 200),
        "one_line500": (suite("one_line500", one_line), 500),
        "startup": (suite("startup", {"test_one.py": ONE_LINE.format(i=0)}), 1),
    }


def pytest_env() -> dict[str, str]:
    """The environment without pytest/coverage settings, and with bytecode caching on (as for
    an installed package: without it every run recompiles the plugin's modules)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "COVERAGE_"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class Sample:
    wall: float
    cpu: float  # user + system time of the pytest process
    protocol_cpu: float  # CPU time inside pytest_runtest_protocol, summed over the tests


def run_pytest(path: str, extra: list[str]) -> Sample:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "memline_bench_timer",
        *extra,
        path,
    ]
    env = pytest_env()
    env["MEMLINE_BENCH_TIMES"] = times_file = os.path.join(os.path.dirname(path), "times.txt")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(times_file) as f:
        protocol = float(f.read())
    return Sample(wall, cpu, protocol)


@dataclass
class Run:
    suite: str
    mode: str
    args: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [s.cpu for s in self.samples]


def workload_cd(quick: bool, reps: int) -> tuple[list[Row], dict[str, Any]]:
    root = tempfile.mkdtemp(prefix="memline-bench-")
    try:
        suites = write_suites(root)
        memray = have("pytest_memray")
        runs = [
            Run("suite200", "plain", []),
            Run("suite200", "-p no:memline", ["-p", "no:memline"]),
            Run("suite200", "--memline", ["--memline"]),
            Run("one_line500", "plain", []),
            Run("one_line500", "--memline", ["--memline"]),
            Run("startup", "plain", []),
            Run("startup", "-p no:memline", ["-p", "no:memline"]),
        ]
        if memray:
            runs.insert(3, Run("suite200", "--memray", ["--memray"]))
        rng = random.Random(5)
        for run in runs:  # warm-up: page cache, .pyc files
            run_pytest(suites[run.suite][0], run.args)
        for _ in range(reps):
            order = runs[:]
            rng.shuffle(order)
            for run in order:
                run.samples.append(run_pytest(suites[run.suite][0], run.args))
        rows = []
        by_key = {(r.suite, r.mode): r for r in runs}
        for run in runs:
            base = by_key[(run.suite, "plain")]
            rows.append(
                Row(
                    "c" if run.mode in ("plain", "--memline", "--memray") else "d",
                    f"pytest {run.mode} ({run.suite})",
                    suites[run.suite][1],
                    statistics.median(run.times),
                    paired_ratio(run.times, base.times),
                    times=run.times,
                )
            )
        extra: dict[str, Any] = {
            "wall_median_s": {
                f"{r.mode} ({r.suite})": statistics.median(s.wall for s in r.samples) for r in runs
            },
            "samples": {f"{r.mode} ({r.suite})": [asdict(s) for s in r.samples] for r in runs},
        }

        def per_test_ms(suite: str, mode: str) -> float:
            run, base = by_key[(suite, mode)], by_key[(suite, "plain")]
            diff = statistics.median(
                s.protocol_cpu - b.protocol_cpu
                for s, b in zip(run.samples, base.samples, strict=True)
            )
            return diff / suites[suite][1] * 1e3

        extra["per_test_ms_one_line500"] = per_test_ms("one_line500", "--memline")
        extra["per_test_ms_suite200"] = per_test_ms("suite200", "--memline")
        if memray:
            extra["per_test_ms_memray_suite200"] = per_test_ms("suite200", "--memray")
            extra["memray_over_memline"] = paired_ratio(
                by_key[("suite200", "--memray")].times, by_key[("suite200", "--memline")].times
            )
        for suite in ("suite200", "startup"):
            run, base = by_key[(suite, "-p no:memline")], by_key[(suite, "plain")]
            extra[f"off_vs_no_memline_{suite}"] = {
                "diff_ms": 1e3
                * statistics.median(b - t for t, b in zip(run.times, base.times, strict=True)),
                "spread_ms": spread(run.times) * 1e3,
            }
        extra.update(plugin_off_checks(suites["startup"][0]))
        return rows, extra
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spread(times: list[float]) -> float:
    """Interquartile range (the full range below four values)."""
    if len(times) < 4:
        return max(times) - min(times)
    q = statistics.quantiles(times, n=4)
    return q[2] - q[0]


def plugin_off_checks(path: str) -> dict[str, Any]:
    """With the plugin installed but off: is the native module imported, and what does importing
    the plugin module cost once pytest and its entry points are loaded?"""
    probe = (
        "import sys, pytest\n"
        "rc = pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]])\n"
        "print('NATIVE', 'pytest_memline._memline' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, path],
        cwd=path,
        env=pytest_env(),
        capture_output=True,
        text=True,
    )
    native = "NATIVE True" in proc.stdout
    timing = (
        "import time, pytest, importlib.metadata\n"
        "importlib.metadata.entry_points(group='pytest11')\n"
        "t = time.process_time()\n"
        "import pytest_memline.plugin\n"
        "print(time.process_time() - t)\n"
    )
    costs = []
    for _ in range(7):
        proc = subprocess.run(
            [sys.executable, "-c", timing],
            cwd=path,
            env=pytest_env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            costs.append(float(proc.stdout.strip()))
    return {
        "native_imported_when_off": native,
        "plugin_import_ms": statistics.median(costs) * 1e3 if costs else None,
    }


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("pytest", "memory_profiler", "line_profiler", "pytest-memray", "memray", "psutil"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        cores: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": cores,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg_start": os.getloadavg(),
        "default_backend": DEFAULT_BACKEND,
        "versions": versions,
    }


def fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def table(rows: list[Row]) -> str:
    head = (
        "| workload | tool | lines | median CPU s | ratio to plain "
        "| µs per traced line | µs per outside line |"
    )
    out = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(
            f"| {r.workload} | {r.tool} | {r.lines:,} | {r.median_s:.3f} | {r.ratio:.2f}x | "
            f"{fmt(r.us_per_traced_line, '.3f')} | {fmt(r.us_per_outside_line, '.3f')} |"
        )
    return "\n".join(out)


def field_of(row: Row | None, name: str) -> float | None:
    return None if row is None else getattr(row, name)


def targets(rows: list[Row], extra: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, figure, limit, met) per target of issue 4."""
    get = {(r.workload, r.tool): r for r in rows}
    out: list[tuple[str, str, str, bool | None]] = []

    def add(name: str, value: float | None, limit: float, unit: str, le: bool = True) -> None:
        if value is None:
            out.append((name, "n/a", f"{'≤' if le else '≥'} {limit}{unit}", None))
            return
        met = value <= limit if le else value >= limit
        out.append((name, f"{value:.3g}{unit}", f"{'≤' if le else '≥'} {limit}{unit}", met))

    d = DEFAULT_BACKEND
    a_off, a_on = get.get(("a", f"memline {d}, peak off")), get.get(("a", f"memline {d}, peak on"))
    add(f"1. µs per traced line, peak off ({d})", field_of(a_off, "us_per_traced_line"), 2.0, " µs")
    add(f"1. µs per traced line, peak on ({d})", field_of(a_on, "us_per_traced_line"), 3.5, " µs")
    mp = get.get(("a", "memory_profiler"))
    for label, row in (
        ("peak off: like for like, memory_profiler reads RSS only", a_off),
        ("peak on", a_on),
    ):
        ratio = None
        if mp and row and mp.us_per_traced_line and row.us_per_traced_line:
            ratio = mp.us_per_traced_line / row.us_per_traced_line
        add(f"1. faster than memory_profiler per traced line ({label})", ratio, 40, "x", le=False)
    for backend in BACKENDS:
        b = get.get(("b", f"memline {backend}, peak on"))
        if backend == "settrace":
            name, limit = "2. µs per outside line (settrace)", 0.05
        else:
            name, limit = "2. µs per outside line (monitoring: nothing measurable)", 0.01
        if backend != d:
            name += " [not the default here: for information]"
        add(name, field_of(b, "us_per_outside_line"), limit, " µs")
        add(f"2. whole call vs plain ({backend})", field_of(b, "ratio"), 1.5, "x")
        if backend != d:
            out[-2:] = [(n, f, lim, None) for n, f, lim, _ in out[-2:]]
    c = get.get(("c", "pytest --memline (suite200)"))
    add("3. pytest --memline vs plain, 200 tests", field_of(c, "ratio"), 1.3, "x")
    add("3. pytest --memray / pytest --memline", extra.get("memray_over_memline"), 3, "x", le=False)
    add(
        "3. fixed cost per test (500 one-line tests)",
        extra.get("per_test_ms_one_line500"),
        0.3,
        " ms",
    )
    for suite in ("startup", "suite200"):
        off = extra.get(f"off_vs_no_memline_{suite}")
        if off:
            limit = max(
                off["spread_ms"],
                0.02 * get[("d", f"pytest -p no:memline ({suite})")].median_s * 1e3,
            )
            out.append(
                (
                    f"4. installed but off vs -p no:memline ({suite})",
                    f"{off['diff_ms']:+.1f} ms",
                    # one-sided: the question is whether the plugin costs anything when off;
                    # a run faster than with the plugin blocked is noise by construction
                    f"not slower beyond noise (≤ +{limit:.1f} ms: IQR of the runs, at least 2%)",
                    off["diff_ms"] <= limit,
                )
            )
    if "native_imported_when_off" in extra:
        out.append(
            (
                "4. native module imported when off",
                str(extra["native_imported_when_off"]),
                "False",
                not extra["native_imported_when_off"],
            )
        )
    return out


def report(
    info: dict[str, Any], rows: list[Row], floor: dict[str, Any], extra: dict[str, Any]
) -> str:
    lines = [
        f"pytest-memline benchmark, {info['date']}",
        f"machine: {info['cores']} cores, Linux {info['kernel']}, "
        f"{info['implementation']} {info['python']} (default backend {info['default_backend']}), "
        f"load average at start {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
        "",
        table(rows),
        "",
    ]
    if floor:

        def ns(key: str) -> str:
            return "n/a" if floor.get(key) is None else f"{floor[key]:,.0f} ns"

        lines.append(
            f"floor (Rust, CPU time, median of {floor['count']} measurements): "
            f"statm pread + parse {ns('statm_read')}; "
            f"peak reset (clear_refs write + getrusage) {ns('peak_reset')} "
            f"(clear_refs {ns('clear_refs')}, getrusage {ns('getrusage')})"
        )
    if extra:
        per = extra.get("per_test_ms_one_line500")
        lines.append(
            f"per test: --memline adds {fmt(per, '.3f')} ms (500 one-line tests), "
            f"{fmt(extra.get('per_test_ms_suite200'), '.3f')} ms (the 200-test suite); "
            f"--memray adds {fmt(extra.get('per_test_ms_memray_suite200'), '.2f')} ms"
        )
        lines.append(
            f"plugin off: native module imported: {extra.get('native_imported_when_off')}; "
            f"importing pytest_memline.plugin (after pytest and its entry points): "
            f"{fmt(extra.get('plugin_import_ms'), '.2f')} ms CPU"
        )
    lines += ["", "| target | figure | limit | met |", "| --- | --- | --- | --- |"]
    for name, figure, limit, met in targets(rows, extra):
        lines.append(
            f"| {name} | {figure} | {limit} | {'-' if met is None else ('yes' if met else 'NO')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer lines and repetitions: under 2 minutes"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--only", default="abcd", help="workloads to run, e.g. 'ab' (default abcd; e runs with a)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7, quick 3)")
    opts = parser.parse_args()
    reps = opts.reps or (3 if opts.quick else 7)
    info = machine()
    print(
        f"pytest-memline benchmark: Python {info['python']}, {info['cores']} cores, reps {reps}"
        f"{', quick' if opts.quick else ''}",
        file=sys.stderr,
    )
    missing = [
        m for m in ("memory_profiler", "line_profiler", "pytest_memray", "psutil") if not have(m)
    ]
    if missing:
        print(
            f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')",
            file=sys.stderr,
        )
    rows: list[Row] = []
    floors: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if "a" in opts.only:
        print("a: lines of the traced function ...", file=sys.stderr)
        rows += workload_a(opts.quick, reps, floors)
    if "b" in opts.only:
        print("b: lines outside the traced function ...", file=sys.stderr)
        rows += workload_b(opts.quick, reps)
    if "c" in opts.only or "d" in opts.only:
        print("c, d: pytest suites in subprocesses ...", file=sys.stderr)
        suite_rows, extra = workload_cd(opts.quick, reps)
        rows += suite_rows
    floor: dict[str, Any] = {}
    if floors:
        floor = {"count": len(floors), "reader": floors[0]["reader"]}
        for key in ("statm_read", "peak_reset", "clear_refs", "getrusage"):
            values = [f[key] for f in floors if f.get(key) is not None]
            floor[key] = statistics.median(values) if values else None
    info["seconds"] = time.perf_counter() - t0
    text = report(info, rows, floor, extra)
    print(text)
    print(
        f"\n({info['seconds']:.0f} s; rerun: {os.path.relpath(sys.executable)} bench/run.py"
        f"{' --quick' if opts.quick else ''})"
    )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "floor": floor,
                    "rows": [asdict(r) for r in rows],
                    "extra": extra,
                    "targets": [
                        dict(zip(("target", "figure", "limit", "met"), t, strict=True))
                        for t in targets(rows, extra)
                    ],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
