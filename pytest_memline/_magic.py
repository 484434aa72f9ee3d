"""The IPython magics ``%memline`` (``%load_ext pytest_memline``), like memory_profiler's ``%mprun``,
and ``%memit``, like its ``%memit``.

Imported only by ``pytest_memline.load_ipython_extension``: the package itself does not need
IPython.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from pytest_memline._api import Trace, _describe, _function_of, tracing

USAGE = "%memline [-r] -f FUNC [-f FUNC ...] STATEMENT"
MEMIT_USAGE = "%memit [-r N] STATEMENT"
MIB = 1024 * 1024


def parse_memit(line: str) -> tuple[int, str]:
    """``(repeats, statement)`` from ``%memit``'s line: ``-r N`` (or ``-rN``), then the
    statement, kept verbatim."""
    rest = line.lstrip()
    repeat = 1
    if rest.startswith("-r"):
        word, after = _first_word(rest)
        value, rest = (word[2:], after) if len(word) > 2 else _first_word(after.lstrip())
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"-r needs a whole number of runs, 1 or more\nusage: {MEMIT_USAGE}")
        repeat = int(value)
    elif rest.startswith("-") and not rest.startswith("--"):
        raise UsageError(f"unknown option {_first_word(rest)[0]}\nusage: {MEMIT_USAGE}")
    return repeat, rest.removeprefix("--").strip()


def parse(line: str) -> tuple[list[str], bool, str]:
    """``(function expressions, -r given, statement)`` from the magic's line.

    Options come first: ``-f NAME`` (or ``-fNAME``), ``-r``, then ``--`` or the statement,
    which is kept verbatim (quotes, spacing).
    """
    names: list[str] = []
    ret = False
    rest = line
    while True:
        rest = rest.lstrip()
        if not rest.startswith("-"):
            break
        word, after = _first_word(rest)
        if word == "--":
            rest = after
            break
        if word == "-r":
            ret = True
            rest = after
        elif word.startswith("-f"):
            name, rest = (word[2:], after) if len(word) > 2 else _first_word(after.lstrip())
            if not name:
                raise UsageError(f"-f needs a function name\nusage: {USAGE}")
            names.append(name)
        else:
            raise UsageError(f"unknown option {word}\nusage: {USAGE}")
    return names, ret, rest.strip()


def _first_word(text: str) -> tuple[str, str]:
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


@magics_class
class MemlineMagics(Magics):
    @line_cell_magic
    def memline(self, line: str, cell: str | None = None) -> Trace | None:
        """Run a statement and print the line-by-line memory table of the given functions.

        Usage::

          %memline [-r] -f FUNC [-f FUNC ...] STATEMENT
          %%memline [-r] -f FUNC [-f FUNC ...]
          STATEMENTS

        Each ``-f FUNC`` (evaluated in the user namespace: a function or method defined in
        Python, in a file or in a notebook cell) gets one table covering all its calls during
        the statement, with the columns of ``pytest --memline``: Mem usage, Increment, Peak
        (the highest RSS while the line ran, above its start), Occurrences. Sizes are the RSS
        of the whole process, in MiB. The statement's own lines are not traced, only the
        functions'.

        Options:
          -f FUNC  a function to trace (repeat for several: they are traced together)
          -r       return the result (a pytest_memline.Trace: .tables, .table, .render(),
                   .to_dict()) instead of printing it

        If the statement raises, the tables are printed, then the exception propagates.
        """
        names, ret, statement = parse(line)
        if cell is not None:
            statement = f"{statement}\n{cell}" if statement else cell
        if not names:
            raise UsageError(
                "%memline needs at least one -f FUNC, the function(s) to trace, "
                f"e.g. %memline -f my_func my_func()\nusage: {USAGE}"
            )
        if not statement.strip():
            raise UsageError(f"%memline needs a statement to run\nusage: {USAGE}")
        shell: Any = self.shell
        namespace = shell.user_ns
        funcs = []
        for name in names:
            try:
                obj = eval(name, namespace)
            except Exception as exc:
                raise UsageError(f"-f {name}: {type(exc).__name__}: {exc}") from None
            if _function_of(obj) is None:
                raise UsageError(
                    f"-f {name}: cannot trace {obj!r}: it is {_describe(obj)}"
                )
            funcs.append(obj)
        source = shell.transform_cell(statement)
        # Cached like a cell, so a traceback through the statement shows its source.
        filename = shell.compile.cache(source, shell.execution_count, raw_code=statement)
        code = compile(source, filename, "exec")
        __tracebackhide__ = True  # noqa: F841 (IPython leaves this frame out of tracebacks)
        with ExitStack() as stack:
            try:
                result = stack.enter_context(tracing(*funcs))
            except RuntimeError as exc:  # a trace is running already
                raise UsageError(str(exc)) from None
            try:
                exec(code, namespace)
            except BaseException:
                stack.close()  # stops the trace: the tables are ready
                print(result.render())
                raise
        if ret:
            return result
        print(result.render())
        return None


    @line_cell_magic
    def memit(self, line: str, cell: str | None = None) -> None:
        """Run a statement and print its peak memory and increment, as memory_profiler's
        ``%memit`` does: ``peak memory: 180.45 MiB, increment: 152.59 MiB``.

        Usage::

          %memit [-r N] STATEMENT
          %%memit [-r N]
          STATEMENTS

        *peak memory* is the highest RSS of the process while the statement ran, exact (the
        kernel's peak, reset before the statement's lines); *increment* that peak minus the RSS
        before the statement. ``-r N``: run it N times and report the run with the highest
        peak (memory_profiler's ``-r``).
        """
        repeat, statement = parse_memit(line)
        if cell is not None:
            statement = f"{statement}\n{cell}" if statement else cell
        if not statement.strip():
            raise UsageError(f"%memit needs a statement to run\nusage: {MEMIT_USAGE}")
        shell: Any = self.shell
        source = shell.transform_cell(statement)
        filename = shell.compile.cache(source, shell.execution_count, raw_code=statement)
        code = compile(source, filename, "exec")
        __tracebackhide__ = True  # noqa: F841
        best = None
        for _ in range(repeat):
            with ExitStack() as stack:
                try:
                    result = stack.enter_context(tracing(code))
                except RuntimeError as exc:  # a trace is running already
                    raise UsageError(str(exc)) from None
                exec(code, shell.user_ns)
            table = result.table
            if best is None or table.peak_growth > best.peak_growth:
                best = table
        assert best is not None
        print(
            f"peak memory: {(best.start_rss + best.peak_growth) / MIB:.2f} MiB, "
            f"increment: {best.peak_growth / MIB:.2f} MiB"
        )


def load(ipython: Any) -> None:
    ipython.register_magics(MemlineMagics)
