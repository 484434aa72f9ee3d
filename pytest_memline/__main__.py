"""``python -m pytest_memline script.py [args]``: run a script with ``profile`` as a builtin.

Like ``python -m memory_profiler``: the script runs as ``__main__`` with ``sys.argv`` set to
``[script, *args]``; every function it decorates with ``@profile`` (no import needed) is traced,
and when the script ends (also when it raises or calls ``sys.exit``) one table per profiled
function is printed to stdout, covering all its calls.
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys
import traceback
import types
from collections.abc import Sequence

from pytest_memline import _api

PROG = "python -m pytest_memline"
DESCRIPTION = (
    "Run a Python script and print the line-by-line memory table of each function it "
    "decorates with @profile (available as a builtin, as under python -m memory_profiler), "
    "once the script ends."
)
EPILOG = (
    "The tables have the columns of pytest --memline (Mem usage, Increment, Peak, Occurrences), "
    "sizes in MiB of resident memory. One table per function, summed over its calls; "
    "a function decorated with @profile(stream=...) prints each call to that stream instead."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("script", help="the Python script to run (as __main__)")
    parser.add_argument("args", nargs="*", help="arguments passed to the script (sys.argv[1:])")
    return parser


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options and the script, then the script's own arguments (never parsed by us)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return list(argv[: i + 2]), list(argv[i + 2 :])
        if not arg.startswith("-"):
            return list(argv[: i + 1]), list(argv[i + 1 :])
    return list(argv), []


def _print_tables(collector: _api._Collector, script: str) -> None:
    tables = collector.results()
    sys.stdout.flush()
    if not tables:
        sys.stderr.write(f"pytest-memline: no @profile function ran in {script}\n")
        return
    for table in tables:
        sys.stdout.write(table.render() + "\n\n")
    sys.stdout.flush()


def _script_traceback(exc: BaseException, script: str) -> None:
    """The traceback from the script's first frame on (our runner's frames left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def main(argv: Sequence[str] | None = None) -> int:
    ours, script_args = _split(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    options = parser.parse_args(ours)
    script = os.path.abspath(options.script)
    if not os.path.exists(script):
        parser.error(f"cannot run {options.script!r}: no such file")
    if os.path.isdir(script):
        parser.error(f"cannot run {options.script!r}: a directory, not a script")

    try:
        with open(script, "rb") as f:  # bytes: compile() honours the coding cookie
            code = compile(f.read(), script, "exec", dont_inherit=True)
    except OSError as exc:
        parser.error(f"cannot run {options.script!r}: {exc.strerror or exc}")

    # As `python script.py` would: argv[0] as given, __file__ and sys.path[0] absolute.
    sys.argv = [options.script, *options.args, *script_args]
    sys.path[0] = os.path.dirname(script)
    module = types.ModuleType("__main__")
    module.__file__ = script
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module  # pickle and multiprocessing find the script's functions
    had_profile = hasattr(builtins, "profile")
    previous = getattr(builtins, "profile", None)
    builtins.profile = _api.profile  # type: ignore[attr-defined]
    try:
        with _api._collecting() as collector:
            try:
                exec(code, module.__dict__)
            except SystemExit:
                _print_tables(collector, options.script)
                raise
            except BaseException as exc:
                _print_tables(collector, options.script)
                _script_traceback(exc, script)
                return 130 if isinstance(exc, KeyboardInterrupt) else 1
            _print_tables(collector, options.script)
            return 0
    finally:
        if had_profile:
            builtins.profile = previous  # type: ignore[attr-defined]
        else:
            del builtins.profile  # type: ignore[attr-defined]
        if saved_main is not None:
            sys.modules["__main__"] = saved_main

if __name__ == "__main__":
    sys.exit(main())
