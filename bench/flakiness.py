"""How often does the regression gate cry wolf? Save a baseline once, compare N times.

A suite of T tests with allocations of different sizes and shapes (one big buffer, many small
objects, a loop, a transient peak inside a callee, numpy-free pure Python) is saved once with
`--memline-save`, then compared N times in a row with `--memline-compare` and the default
tolerance (10%) and noise floor (1 MiB). Nothing changes between runs, so every regression
reported is a false alarm. Prints the count; exits 1 if there was any.

    python bench/flakiness.py [--tests 24] [--repeat 10] [--workdir DIR] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = [
    "    data = bytearray({n} * 2**20)\n    assert data\n",
    "    items = [str(i) * 8 for i in range({n} * 20000)]\n    assert items\n",
    "    keep = []\n    for _ in range({n} * 10):\n        keep.append(bytearray(100 * 1024))\n    assert keep\n",
    "    total = transient({n})\n    assert total\n",
    "    d = {{i: (i, str(i)) for i in range({n} * 10000)}}\n    assert d\n",
    "    s = 'x' * ({n} * 2**20)\n    t = s.upper()\n    assert t\n",
]

HELPERS = '''
def transient(mib):
    scratch = bytearray(mib * 2**20)
    return len(scratch)

'''


def write_suite(root: Path, n_tests: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # the same order every run (pytest-randomly, when installed, would shuffle it): a different
    # order is a different measurement, since the allocator's state carries over between tests
    (root / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\naddopts = ['-p', 'no:cacheprovider', '-p', 'no:randomly']\n"
    )
    body = [HELPERS]
    for i in range(n_tests):
        size = 1 + (i * 7) % 40  # 1..40 MiB
        body.append(f"def test_{i:02d}():\n" + SHAPES[i % len(SHAPES)].format(n=size) + "\n")
    (root / "test_flaky.py").write_text("\n".join(body))


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--memline", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tests", type=int, default=24)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("pytest_args", nargs="*")
    opts = p.parse_args()
    if opts.tests < 1 or opts.repeat < 1:
        p.error("--tests and --repeat must be at least 1")
    root = opts.workdir or Path(tempfile.mkdtemp(prefix="memline-flaky-"))
    write_suite(root, opts.tests)
    saved = run(root, "--memline-save", *opts.pytest_args)
    if saved.returncode != 0:
        print(saved.stdout + saved.stderr)
        print("the save run failed")
        return 2
    false_alarms = 0
    for i in range(opts.repeat):
        compared = run(root, "--memline-compare", *opts.pytest_args)
        m = re.search(r"^(\d+) regressed, (\d+) improved, (\d+) unchanged, (\d+) new", compared.stdout, re.M)
        if m is None:
            print(compared.stdout + compared.stderr)
            print(f"compare run {i + 1}: no summary line")
            return 2
        regressed = int(m.group(1))
        false_alarms += regressed
        print(f"compare run {i + 1}: {m.group(0)}")
        if regressed:
            for line in compared.stdout.splitlines():
                if line.startswith("memline: line") or line.startswith("memline: test"):
                    print("    " + line)
    print(f"false regressions: {false_alarms} in {opts.repeat} compare runs of {opts.tests} tests")
    if opts.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if false_alarms else 0


if __name__ == "__main__":
    sys.exit(main())
