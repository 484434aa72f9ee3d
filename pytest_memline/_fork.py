"""Running a piece of a test in a forked child and getting its result back as JSON.

Used to re-measure a test that looks regressed (the child starts from the parent's state after
the test ran once, so caches built on first use are warm, and whatever the child does stays in
the child) and to run test bodies in isolation (``isolate = "fork"``). The child never returns
into pytest: it writes one JSON document to a pipe and leaves with ``os._exit``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any


class ForkError(Exception):
    """The child could not give an answer (it crashed, timed out, or could not start)."""


def available() -> bool:
    return hasattr(os, "fork")


def run_in_child(work: Callable[[], Any], timeout: float, *, quiet: bool = True) -> Any:
    """Runs ``work()`` in a forked child and returns what it returned (JSON-serialisable).

    ``quiet``: the child's stdout and stderr go to /dev/null (its output would otherwise land
    in the test's captured output). Raises ``ForkError`` when the child dies, does not answer
    within ``timeout`` seconds (it is then killed), or raises: the message says which."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks; the child only measures and
        # leaves through os._exit, never touching what another thread may have held
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            raise ForkError(f"fork failed ({exc})") from None
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        _child(work, read_fd, write_fd, quiet)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, pid, timeout)
    except ForkError:
        raise
    except BaseException:
        kill(pid)  # interrupted (Ctrl-C, a timeout's signal): the child goes too
        raise
    finally:
        os.close(read_fd)
    status = reap(pid)
    if not data:
        raise ForkError(f"the child process {describe(status)} without an answer")
    answer = json.loads(data.decode("utf-8"))
    if "error" in answer:
        raise ForkError(answer["error"])
    return answer["result"]


def _child(work: Callable[[], Any], read_fd: int, write_fd: int, quiet: bool) -> None:  # pragma: no cover
    code = 0
    try:
        os.close(read_fd)
        if quiet:
            import sys

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sink = open(os.devnull, "w")  # noqa: SIM115 - the child never closes it
            sys.stdout = sys.stderr = sink
        try:
            answer = {"result": work()}
        except BaseException as exc:  # the parent decides what a failed re-run means
            answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        data = json.dumps(answer).encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(write_fd, view)
            view = view[n:]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _read_all(fd: int, pid: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            kill(pid)
            raise ForkError(f"the child process did not answer within {timeout:.0f} s (killed)")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reap(pid)


def reap(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
