"""The IPython magic ``%memline`` (``%load_ext pytest_memline``), like memory_profiler's ``%mprun``.

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


def load(ipython: Any) -> None:
    ipython.register_magics(MemlineMagics)
