"""The process's real peak: memline resets the kernel's peak counter (VmHWM, and with it
`ru_maxrss` and `/usr/bin/time`) before traced lines, so it reports what the counter would read
without it, in the terminal summary, the JSON report and the JUnit XML.

Measured against a plain run of the same suite: the child's `ru_maxrss` from `os.wait4` (the
kernel's own figure, which nothing resets in a plain run). A 300 MiB buffer in a fixture (never
traced) and a 200 MiB one inside a line make the peak; tolerance 16 MiB (what memline itself
adds to the process, its module and tables, is a few MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 2**20

SUITE = """
import pytest


@pytest.fixture
def big():
    b = bytearray(300 * 2**20)  # untraced: its mark is erased by the next test's reset
    del b


def test_fixture_peak(big):
    x = bytearray(10 * 2**20)
    assert x


def test_inline_peak():
    y = bytearray(200 * 2**20)
    del y
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the counter reset is Linux's clear_refs"
)


def pytest_with_rusage(cwd: Path, *args: str) -> tuple[int, int, str]:
    """Runs pytest in a child; returns its exit status, its ru_maxrss in bytes, its output."""
    out = cwd / f"out-{len(list(cwd.glob('out-*')))}.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, out.read_text()


def reported(output: str) -> float:
    line = next(x for x in output.splitlines() if x.startswith("memline: real peak RSS of"))
    return float(line.split(": ")[2].split(" MiB")[0])


def test_the_real_peak_is_reported_though_the_counter_was_reset(tmp_path: Path) -> None:
    (tmp_path / "test_p.py").write_text(SUITE)
    status, plain_peak, _ = pytest_with_rusage(tmp_path)
    assert status == 0
    status, counter_after, out = pytest_with_rusage(
        tmp_path, "--memline", "--junitxml=j.xml", "--memline-json=r.json"
    )
    assert status == 0, out
    assert "memline: the kernel's peak RSS counter (VmHWM, ru_maxrss) is reset" in out
    peak = reported(out) * MIB
    assert plain_peak > 300 * MIB
    assert peak == pytest.approx(plain_peak, abs=16 * MIB)
    # the reason for the figure: the kernel's own counter, read after the run, is far lower
    assert counter_after < plain_peak - 200 * MIB
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["process_peak"] == pytest.approx(peak, abs=0.1 * MIB)
    assert summary["worker_peaks"] == {}
    xml = (tmp_path / "j.xml").read_text()
    assert f'<property name="memline_process_peak" value="{summary["process_peak"]}"' in xml


def test_each_xdist_worker_reports_its_own_peak(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    (tmp_path / "test_p.py").write_text(SUITE)
    status, _, out = pytest_with_rusage(tmp_path, "--memline", "-n", "2", "--memline-json=r.json")
    assert status == 0, out
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert sorted(summary["worker_peaks"]) == ["gw0", "gw1"]
    # one worker ran the 300 MiB fixture, the other the 200 MiB line (or one ran both)
    assert max(summary["worker_peaks"].values()) > 300 * MIB
    assert summary["process_peak"] == max(summary["worker_peaks"].values())
    assert "memline: real peak RSS of the workers: gw0 " in out
