"""The release plumbing stays consistent: the GitHub workflows are valid workflows, every place
that lists the supported Pythons lists the same ones, and the Makefile rebuilds the extension
only when its Rust inputs change. (The wheels themselves are built and installed without Rust
by `make wheels check-dist`, which .ci/run calls: that takes minutes, not a unit test's time.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def supported() -> list[str]:
    """The CPython versions pyproject.toml's classifiers name."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in meta["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    minimum = meta["requires-python"].removeprefix(">=")
    assert versions[0] == minimum, "requires-python and the oldest classifier disagree"
    return versions


def test_the_workflows_are_valid_github_workflows() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert [Path(f).name for f in files] == ["ci.yml", "release.yml"]
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
    broken.write_text(text.replace("runs-on:", "runs_on:", 1), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "'runs-on' is a required property" in proc.stdout


def test_every_list_of_pythons_is_the_supported_one() -> None:
    versions = supported()
    assert versions == ["3.11", "3.12", "3.13", "3.14"]
    ci = (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
    matrix = re.search(r"python: \[(.*?)\]", ci)
    assert matrix and re.findall(r'"(3\.\d+)"', matrix.group(1)) == versions
    release = (WORKFLOWS / "release.yml").read_text(encoding="utf-8")
    linux = re.search(r"args: --release --strip --out dist -i (.*)", release)
    assert linux and linux.group(1).split() == [f"python{v}" for v in versions]
    for block in re.findall(r"python-version: \|\n((?:\s+3\.\d+\n)+)", release):
        assert block.split() == versions
    checked = re.findall(r"--python python(3\.\d+)", release)
    assert checked == versions
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    wheels = re.search(r"^WHEEL_PYTHONS \?= (.*)$", makefile, re.M)
    assert wheels and wheels.group(1).split() == [f"python{v}" for v in versions]


def built_stamp() -> Path:
    return Path(sys.prefix) / ".memline-built"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
@pytest.mark.skipif(
    not built_stamp().exists(), reason="this venv was not built by `make` (no build stamp)"
)
def test_make_rebuilds_the_extension_only_when_its_rust_inputs_change() -> None:
    """`make -q` says whether a target is up to date; `-W FILE` asks "what if FILE changed"
    without touching it. Run in the venv that `make test` built."""

    def up_to_date(*what_if: str) -> bool:
        args = [a for f in what_if for a in ("-W", f)]
        proc = subprocess.run(
            ["make", "-q", f"VENV={sys.prefix}", *args, str(built_stamp())],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        return proc.returncode == 0

    assert up_to_date()
    assert up_to_date("pytest_memline/plugin.py", "README.md", "tests/test_release.py")
    for rust_input in ("src/lib.rs", "src/tracer/monitoring.rs", "Cargo.lock", "pyproject.toml"):
        assert not up_to_date(rust_input), f"a change to {rust_input} must rebuild"
