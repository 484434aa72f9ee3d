"""A path is not ours to destroy: what memline does with what is at the paths it writes and
reads (the baseline, the JSON and Markdown reports), end to end in real sessions.

The rules live in one place, `src/files.rs` (unit-tested there with `cargo test`): a directory,
device, FIFO or socket is refused before the run, never replaced or moved; symlinks are written
through; writes are atomic and keep the old file's mode (else the umask); backups never replace
earlier ones; a write that fails at the end of the run is one line and fails the run, and the
other files are still written. Device nodes are made with `mknod` in a temporary directory
(root only), never the system's.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 2**20
USAGE_ERROR = 4

SUITE = """
def test_small():
    data = bytearray(3 * 2**20)
    assert data
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # a FIFO must be refused, not opened: a hang would be this test's timeout, not forever
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--memline", *args, timeout=120)


def usage_error(result: pytest.RunResult) -> str:
    assert result.ret == USAGE_ERROR, result.stdout.str() + result.stderr.str()
    return result.stderr.str()


def test_a_project_directory_named_as_the_baseline_is_refused_and_left_in_place(
    suite: pytest.Pytester,
) -> None:
    suite.makepyprojecttoml('[tool.memline]\nbaseline = "."\n')
    err = usage_error(run(suite, "--memline-save"))
    assert f"memline: --memline-save: {suite.path} is a directory, not a regular file" in err
    assert "(the path comes from " in err and "baseline)" in err
    assert (suite.path / "test_suite.py").is_file() and (suite.path / "pyproject.toml").is_file()
    assert not suite.path.with_name(suite.path.name + ".bak").exists()

    (suite.path / "tests").mkdir()
    err = usage_error(run(suite, "--memline-save=tests/"))
    assert "looks like a test path, not a baseline file" in err
    assert (suite.path / "tests").is_dir()


@pytest.mark.parametrize("option", ["--memline-json", "--memline-markdown", "--memline-save"])
def test_directories_and_fifos_are_refused_before_the_run(
    suite: pytest.Pytester, option: str
) -> None:
    (suite.path / "out").mkdir()
    err = usage_error(run(suite, f"{option}=out/"))
    # (--memline-save's own argument check says a directory looks like a test path)
    assert option in err and (
        "out is a directory, not a regular file" in err or "looks like a test path" in err
    )
    os.mkfifo(suite.path / "pipe")
    err = usage_error(run(suite, f"{option}=pipe"))
    assert f"{suite.path}/pipe is a FIFO (named pipe), not a regular file: refusing" in err
    assert stat.S_ISFIFO(os.stat(suite.path / "pipe").st_mode)
    assert (suite.path / "out").is_dir() and list((suite.path / "out").iterdir()) == []


def test_an_empty_report_path_is_an_error(suite: pytest.Pytester) -> None:
    err = usage_error(run(suite, "--memline-json="))
    assert "memline: --memline-json needs a path (it was empty)" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")
def test_a_device_node_is_never_turned_into_a_file(suite: pytest.Pytester) -> None:
    dev = suite.path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, our own node
    for option in ("--memline-json", "--memline-save"):
        err = usage_error(run(suite, f"{option}=null"))
        assert f"{dev} is a character device, not a regular file: refusing to write it" in err
        assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert not dev.with_name("null.bak").exists()


def test_reading_a_fifo_or_an_endless_file_as_the_baseline_is_refused(
    suite: pytest.Pytester,
) -> None:
    os.mkfifo(suite.path / "pipe.json")
    err = usage_error(run(suite, "--memline-compare=pipe.json"))
    assert "pipe.json is a FIFO (named pipe), not a regular file" in err
    (suite.path / "zero.json").symlink_to("/dev/zero")
    err = usage_error(run(suite, "--memline-compare=zero.json"))
    assert "zero.json is a character device, not a regular file" in err


def test_a_failed_write_at_the_end_is_one_line_fails_the_run_and_the_rest_is_written(
    pytester: pytest.Pytester,
) -> None:
    # the paths are fine when the run starts; the test puts directories in their way
    pytester.makepyfile(
        test_suite="""
        import os

        def test_small():
            data = bytearray(3 * 2**20)
            os.makedirs("report.json/inside")
            os.makedirs(".memline/baseline.json")
            assert data
        """
    )
    result = run(pytester, "--memline-save", "--memline-json=report.json", "--memline-markdown=s.md")
    result.assert_outcomes(passed=1)
    assert result.ret == 1, "a lost baseline or report must not pass the gate job"
    result.stdout.fnmatch_lines(
        [
            "memline: wrote s.md",
            "memline: error: the baseline was not saved: */.memline/baseline.json is a directory, "
            "not a regular file: refusing to write it",
            "memline: error: the JSON report was not written: */report.json is a directory, "
            "not a regular file: refusing to write it",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str()
    assert (pytester.path / "report.json" / "inside").is_dir()
    assert (pytester.path / "s.md").read_text().startswith("## ")


def test_a_symlinked_baseline_is_saved_through_and_no_lock_file_is_left(
    suite: pytest.Pytester,
) -> None:
    shared = suite.path / "shared"
    shared.mkdir()
    (suite.path / ".memline").mkdir()
    link = suite.path / ".memline" / "baseline.json"
    link.symlink_to(shared / "baseline.json")  # dangling: refused, nothing created
    err = usage_error(run(suite, "--memline-save"))
    assert "is a symlink to" in err and "which does not exist: refusing to write through it" in err
    assert not (shared / "baseline.json").exists()

    (shared / "baseline.json").write_text("")  # now the target exists (empty: unusable)
    result = run(suite, "--memline-save")
    result.assert_outcomes(passed=1)
    assert link.is_symlink()
    saved = json.loads((shared / "baseline.json").read_text())
    entry = saved["tests"]["test_suite.py::test_small"]
    assert entry["peak_growth"][0] == pytest.approx(3 * MIB, abs=2 * MIB)
    # the empty file was moved aside beside its target; no lock or temporary file anywhere
    assert sorted(p.name for p in shared.iterdir()) == ["baseline.json", "baseline.json.bak"]
    assert [p.name for p in (suite.path / ".memline").iterdir()] == ["baseline.json"]


def test_backups_never_replace_earlier_backups(suite: pytest.Pytester) -> None:
    path = suite.path / "base.json"
    for i in range(3):
        path.write_text(f"{{ not json {i}")
        result = run(suite, "--memline-save=base.json")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"*it was moved to */base.json.bak{'' if i == 0 else f'.{i}'}"])
    assert (suite.path / "base.json.bak").read_text() == "{ not json 0"
    assert (suite.path / "base.json.bak.1").read_text() == "{ not json 1"
    assert (suite.path / "base.json.bak.2").read_text() == "{ not json 2"


def test_saving_over_another_platforms_baseline_is_refused_and_keeps_it(
    suite: pytest.Pytester,
) -> None:
    run(suite, "--memline-save=base.json").assert_outcomes(passed=1)
    doc = json.loads((suite.path / "base.json").read_text())
    doc["platform"] = "darwin-arm64"
    text = json.dumps(doc)
    (suite.path / "base.json").write_text(text)
    result = run(suite, "--memline-save=base.json")
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "memline: error: the baseline was not saved: baseline */base.json was recorded on "
            "darwin-arm64 and this is linux-*: saving here would mix the platforms' numbers; "
            "save to another file (--memline-save=PATH)"
        ]
    )
    assert (suite.path / "base.json").read_text() == text


def test_stale_temporaries_of_killed_savers_are_removed_and_modes_follow_the_umask(
    suite: pytest.Pytester,
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (suite.path / ".memline").mkdir()
    stale = suite.path / ".memline" / f"baseline.json.tmp{dead.pid}"
    stale.write_bytes(b"x" * 4096)
    unrelated = suite.path / ".memline" / "notes.tmp1"
    unrelated.write_text("not ours")
    result = run(suite, "--memline-save", "--memline-json=r.json", "--memline-markdown=r.md")
    result.assert_outcomes(passed=1)
    assert not stale.exists()
    assert unrelated.exists()
    umask = os.umask(0)
    os.umask(umask)
    for name in (".memline/baseline.json", "r.json", "r.md"):
        mode = stat.S_IMODE(os.stat(suite.path / name).st_mode)
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)}"
    os.chmod(suite.path / "r.json", 0o600)  # a mode the user chose is kept
    run(suite, "--memline-json=r.json").assert_outcomes(passed=1)
    assert stat.S_IMODE(os.stat(suite.path / "r.json").st_mode) == 0o600
