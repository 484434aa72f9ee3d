"""Do the leak figures flap, and does the leak check find what it should?

On the realistic suite of bench/gate_suite.py (40 tests: json, strings, small objects, caches,
pandas, numpy, bytearrays, a reference cycle; none of them keeps memory on purpose), plus
planted leaks (tests that append 2, 5 or 10 MiB to a module list on every call), under the
saved order, the reversed order, ``-n 2`` and random seeds, each ``--repeat`` times:

- ``left`` (what a test left after its teardown, the figure a plain leak limit judges): per
  configuration, the largest value over the suite's own tests (any of them would be a false
  leak under a limit below it) and the planted leaks' smallest;
- with ``--memline-leak-runs=N``: the largest repetition of the suite's own tests (the floor a
  confirmed leak limit needs) and the planted leaks' smallest repetition;
- the CPU time of the runs (children included), with and without the leak check.

    python bench/leaks.py [--repeat 3] [--runs 3] [--configs order,reversed,xdist,random]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gate_suite  # noqa: E402
from flakiness import CONFIGS, run  # noqa: E402

MIB = 2**20
PLANTED = {2: "test_leaks_two", 5: "test_leaks_five", 10: "test_leaks_ten"}
LEAKY = "\n".join(
    ["KEEP = []", ""]
    + [
        f"def {name}():\n    KEEP.append(bytearray({size} * 2**20))\n"
        for size, name in PLANTED.items()
    ]
)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--runs", type=int, default=3, help="--memline-leak-runs for the checked runs")
    p.add_argument("--configs", default="order,reversed,xdist,random")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="memline-leaks-"))
    try:
        gate_suite.write_suite(root)
        (root / "test_planted_leaks.py").write_text(LEAKY)
        report = root / "report.json"
        print(f"python {sys.version.split()[0]}, {gate_suite.count_tests() + len(PLANTED)} tests, "
              f"{a.repeat} runs per configuration, leak check {a.runs} runs")
        print("| configuration | mode | own tests: largest `left` | own tests: largest repetition "
              "| planted 2/5/10 MiB: smallest figure | CPU s (median) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for name in a.configs.split(","):
            _, compare_args, env = CONFIGS[name]
            for mode, extra in (("plain figure", []), (f"leak check x{a.runs}", [f"--memline-leak-runs={a.runs}"])):
                lefts: list[tuple[int, str]] = []
                reps: list[tuple[int, str]] = []
                planted: dict[int, list[int]] = {s: [] for s in PLANTED}
                times = []
                for _ in range(a.repeat):
                    before = children_cpu()
                    doc = run(root, [*compare_args, *extra], env, report)
                    times.append(children_cpu() - before)
                    for nodeid, t in doc["tests"].items():
                        around = t["table"].get("around") or {}
                        left = around.get("left")
                        size = next((s for s, n in PLANTED.items() if nodeid.endswith("::" + n)), None)
                        if extra:
                            figures = list(around.get("repetitions") or [])
                        else:
                            figures = [left] if left is not None else []
                        if size is not None:
                            planted[size].extend(figures)
                            continue
                        short = nodeid.split("::")[-1]
                        if left is not None:
                            lefts.append((left, short))
                        reps.extend((r, short) for r in around.get("repetitions") or [])
                times.sort()
                smallest = " / ".join(
                    f"{min(v) / MIB:.1f}" if v else "-" for v in planted.values()
                )
                top_left = max(lefts)
                top_rep = f"{max(reps)[0] / MIB:.1f} MiB ({max(reps)[1]})" if reps else "-"
                print(
                    f"| {name} | {mode} | {top_left[0] / MIB:.1f} MiB ({top_left[1]}) | "
                    f"{top_rep} | {smallest} MiB | {times[len(times) // 2]:.1f} |"
                )
                sys.stdout.flush()
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
