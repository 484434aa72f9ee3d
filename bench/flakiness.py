"""Does the regression gate cry wolf, and does it catch what it should?

On the realistic suite of bench/gate_suite.py (40 tests: json, strings, small objects, caches,
pandas, numpy, bytearrays, a reference cycle), with the code unchanged:

    false   for each configuration, build the baseline as the README's CI workflow does
            (``--saves`` runs of ``--memline-save`` on "main"), then compare ``--repeat`` times;
            every regression reported is a false alarm. Configurations:
              order     the saved order (``-p no:randomly``)
              reversed  saved in order, compared in reverse order
              xdist     saved and compared with ``-n 2``
              random    pytest-randomly, a new seed for every save and every compare
            Prints, per configuration, the runs with at least one false regression, the false
            regressions in all, and the largest move of a value (a row's Increment or Peak, a
            test's peak growth) over all runs.

    detect  plants regressions of 1, 2, 5, 10 and 20 MiB (bench/gate_suite.INJECTIONS: a new
            line in a test of small objects, the 50 MiB line, the 275 MiB line, a callee's
            100 MiB temporary: Peak only), all sites at once, and counts the compare runs that
            catch each one (the test fails as regressed, on the planted line or, for the
            Peak-only site, on that line or its peak growth) and the false regressions of the
            other tests.

    python bench/flakiness.py false [--saves 5] [--repeat 20] [--configs order,reversed,...]
    python bench/flakiness.py detect [--saves 5] [--repeat 20] [--sizes 1,2,5,10,20]
    Extra pytest arguments after ``--`` go to every run (``-- --memline-isolate=fork``).

Exits 1 when a target of the README's gating section is missed (a false regression, or a
5 MiB regression caught in fewer than 19 of 20 runs), 2 when a run breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gate_suite  # noqa: E402

MIB = 2**20
CONFIGS = {
    # name: (save args, compare args, compare env)
    "order": (["-p", "no:randomly"], ["-p", "no:randomly"], {}),
    "reversed": (["-p", "no:randomly"], ["-p", "no:randomly"], {"GATE_SUITE_REVERSED": "1"}),
    "xdist": (["-p", "no:randomly", "-n", "2"], ["-p", "no:randomly", "-n", "2"], {}),
    "random": (["-p", "randomly"], ["-p", "randomly"], {}),
}


class RunFailed(Exception):
    pass


def run(root: Path, args: list[str], env: dict[str, str], report: Path) -> dict[str, Any]:
    """One pytest session; its JSON report."""
    if report.exists():
        report.unlink()
    e = dict(os.environ, **env)
    e.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--memline", f"--memline-json={report}", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=e,
    )
    if not report.exists():
        raise RunFailed(f"no report from {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(report.read_text())


def values(doc: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    """Every measured value of a run: (test, row contents or '', what) -> bytes."""
    out = {}
    for nodeid, t in doc["tests"].items():
        out[(nodeid, "", "peak growth")] = int(t["peak_growth"])
        rows = t["table"].get("rows") or t["table"].get("lines") or []
        for r in rows:
            if not r.get("occurrences"):
                continue
            key = r["contents"].strip()
            for what in ("increment", "peak"):
                if r.get(what) is not None:
                    out[(nodeid, key, what)] = int(r[what])
    return out


def regressions(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Regressed tests and what grew."""
    out = {}
    for nodeid, t in doc["tests"].items():
        c = t.get("comparison") or {}
        if c.get("status") == "regressed":
            out[nodeid] = list(c.get("changes") or [])
    return out


def build_baseline(root: Path, saves: int, save_args: list[str], extra: list[str], seen: list) -> None:
    base = root / ".memline" / "baseline.json"
    if base.exists():
        base.unlink()
    for _ in range(saves):
        doc = run(root, ["--memline-save", *save_args, *extra], {}, root / "save.json")
        seen.append(values(doc))


def spread(seen: list[dict[tuple[str, str, str], int]]) -> tuple[int, tuple[str, str, str] | None]:
    lo: dict[Any, int] = {}
    hi: dict[Any, int] = {}
    for v in seen:
        for k, x in v.items():
            lo[k] = min(lo.get(k, x), x)
            hi[k] = max(hi.get(k, x), x)
    if not hi:
        return 0, None
    key = max(hi, key=lambda k: hi[k] - lo[k])
    return hi[key] - lo[key], key


def false_alarms(opts: argparse.Namespace, root: Path) -> bool:
    rows = []
    ok = True
    for name in opts.configs:
        save_args, cmp_args, env = CONFIGS[name]
        gate_suite.write_suite(root)
        seen: list = []
        t0 = time.time()
        build_baseline(root, opts.saves, save_args, opts.pytest_args, seen)
        bad_runs = total = 0
        examples: list[str] = []
        for i in range(opts.repeat):
            doc = run(root, ["--memline-compare", *cmp_args, *opts.pytest_args], env, root / "cmp.json")
            seen.append(values(doc))
            reg = regressions(doc)
            if reg:
                bad_runs += 1
                total += len(reg)
                for nodeid, changes in reg.items():
                    for c in changes[:1]:
                        examples.append(
                            f"{nodeid} {c.get('contents') or ''!s:.40} {c['what']} "
                            f"{c['old'] / MIB:.1f} -> {c['new'] / MIB:.1f} MiB"
                        )
            print(f"  {name} compare {i + 1}/{opts.repeat}: {len(reg)} regressed", flush=True)
        move, key = spread(seen)
        where = f"{key[0]} {key[1][:40]!r} {key[2]}" if key else ""
        rows.append((name, bad_runs, total, move, where, time.time() - t0))
        for e in sorted(set(examples))[:8]:
            print("    false:", e)
        ok = ok and bad_runs == 0
    print()
    print(f"python {sys.version.split()[0]}, {gate_suite.count_tests()} tests, "
          f"{opts.saves} saves, {opts.repeat} compares, extra args {opts.pytest_args or 'none'}")
    print("| compared as | runs with a false regression | false regressions | largest move of a value |")
    print("| --- | --- | ---: | --- |")
    for name, bad, total, move, where, _ in rows:
        print(f"| {name} | {bad} / {opts.repeat} | {total} | {move / MIB:.1f} MiB ({where}) |")
    return ok


def detect(opts: argparse.Namespace, root: Path) -> bool:
    save_args, cmp_args, env = CONFIGS[opts.detect_config]
    gate_suite.write_suite(root)
    build_baseline(root, opts.saves, save_args, opts.pytest_args, [])
    caught: dict[tuple[str, int], int] = defaultdict(int)
    others = 0
    for size in opts.sizes:
        gate_suite.write_suite(root, sites=tuple(gate_suite.INJECTIONS), size=size)
        for i in range(opts.repeat):
            doc = run(root, ["--memline-compare", *cmp_args, *opts.pytest_args], env, root / "cmp.json")
            reg = regressions(doc)
            planted = {gate_suite.INJECTIONS[s][0]: s for s in gate_suite.INJECTIONS}
            for nodeid, changes in reg.items():
                site = planted.get(nodeid)
                if site is None:
                    others += 1
                    continue
                contents = gate_suite.INJECTIONS[site][1].format(n=size) if site != "peak" else None
                hit = any(
                    (c.get("contents") or "").strip() == contents
                    if contents
                    else (c["line"] is None or "reduce_scratch" in (c.get("contents") or ""))
                    for c in changes
                )
                caught[(site, size)] += hit
            print(f"  +{size} MiB compare {i + 1}/{opts.repeat}: {sorted(reg)}", flush=True)
    print()
    print(f"python {sys.version.split()[0]}, {opts.saves} saves, {opts.repeat} compares per size, "
          f"config {opts.detect_config}, extra args {opts.pytest_args or 'none'}")
    header = "| injected regression | " + " | ".join(f"+{s} MiB" for s in opts.sizes) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(opts.sizes))
    names = {
        "new": "a new line keeping N MiB (json test)",
        "line50": "the 50 MiB line keeping 50 + N",
        "line275": "the 275 MiB line keeping 275 + N",
        "peak": "a callee's 100 MiB temporary made 100 + N (Peak only)",
    }
    ok = others == 0
    for site in gate_suite.INJECTIONS:
        cells = [f"{caught[(site, s)]} / {opts.repeat}" for s in opts.sizes]
        print(f"| {names[site]} | " + " | ".join(cells) + " |")
        if 5 in opts.sizes and caught[(site, 5)] < opts.repeat - opts.repeat // 20:
            ok = False
    print(f"false regressions of the other tests: {others}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("false", "detect"))
    p.add_argument("--saves", type=int, default=5)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--configs", default="order,reversed,xdist,random")
    p.add_argument("--detect-config", default="order", choices=sorted(CONFIGS))
    p.add_argument("--sizes", default="1,2,5,10,20")
    p.add_argument("--workdir", type=Path, default=None)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    opts = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    opts.pytest_args = extra
    opts.configs = [c for c in opts.configs.split(",") if c]
    bad = [c for c in opts.configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration(s) {bad}; known: {', '.join(CONFIGS)}")
    opts.sizes = [int(s) for s in opts.sizes.split(",") if s]
    if opts.saves < 1 or opts.repeat < 1:
        p.error("--saves and --repeat must be at least 1")
    root = opts.workdir or Path(tempfile.mkdtemp(prefix="memline-gate-"))
    try:
        ok = false_alarms(opts, root) if opts.mode == "false" else detect(opts, root)
    except RunFailed as exc:
        print(exc)
        return 2
    finally:
        if opts.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
