"""The Python API: the ``profile`` decorator, ``trace()`` and the ``tracing()`` context manager.

All three use the engine of the pytest plugin and give the same :class:`MemoryTable`.

Nesting rule. The native tracer runs one trace at a time per interpreter. While a trace started
through this module runs on a thread, every function decorated with :func:`profile` that is
called on that thread is traced as part of it (its code object was passed to the tracer when the
trace started) and gets its own table when that trace stops. A profiled function called while
any other trace runs (``pytest --memline`` tracing the calling test, a trace on another thread, a
trace that started before the function was decorated) runs untraced, and says so once on stderr.

Importing this module does not load the native module; the first trace does.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import sys
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from pytest_memline.table import LineRow, MemoryTable, build_table

__all__ = ["Profiled", "Trace", "Traced", "Writer", "profile", "trace", "tracing"]

P = ParamSpec("P")
R = TypeVar("R")

#: How many tables ``profile`` keeps per function by default (the most recent calls).
DEFAULT_KEEP = 10


class Writer(Protocol):
    """Where ``profile`` prints: anything with ``write(str)`` (a text file, ``sys.stderr``)."""

    def write(self, text: str, /) -> object: ...


class _CurrentStdout:
    """The default stream: ``sys.stdout`` as it is when a table is printed, not at import
    (so ``contextlib.redirect_stdout``, pytest's capture and notebooks see the tables)."""

    def write(self, text: str, /) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def __repr__(self) -> str:
        return "<sys.stdout>"


STDOUT: Writer = _CurrentStdout()


# -- results -------------------------------------------------------------------------------------


class Trace:
    """The tables of one trace: one :class:`MemoryTable` per function asked for, in order.

    Returned by :func:`tracing` (filled when the ``with`` block exits, also when it raises) and
    by ``%memline -r``. ``str(trace)`` and IPython's display show the rendered tables.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._tables: tuple[MemoryTable, ...] | None = None

    @property
    def finished(self) -> bool:
        """Whether the trace has stopped (the tables are ready)."""
        return self._tables is not None

    @property
    def tables(self) -> tuple[MemoryTable, ...]:
        """One table per function, in the order they were given."""
        if self._tables is None:
            raise RuntimeError(
                "memline: the trace is still running; "
                "its tables are ready when the with block exits"
            )
        return self._tables

    @property
    def table(self) -> MemoryTable:
        """The table of the first function."""
        return self.tables[0]

    def render(self) -> str:
        """All tables as text, separated by a blank line (the layout of ``pytest --memline``)."""
        return "\n\n".join(t.render() for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        """``{"tables": [MemoryTable.to_dict(), ...]}``: plain data, JSON-ready."""
        return {"tables": [t.to_dict() for t in self.tables]}

    def __str__(self) -> str:
        return self.render() if self.finished else repr(self)

    def __repr__(self) -> str:
        state = f"{len(self.tables)} tables" if self.finished else "running"
        return f"<{type(self).__name__} of {', '.join(self.names)}: {state}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython's display hook
        p.text(str(self))


class Traced(Trace, Generic[R]):
    """What :func:`trace` returns: the function's return value and its table."""

    def __init__(self, names: tuple[str, ...], tables: tuple[MemoryTable, ...], value: R) -> None:
        super().__init__(names)
        self._tables = tables
        self.value: R = value


# -- resolving functions -------------------------------------------------------------------------


def _function_of(obj: object) -> tuple[types.CodeType, str] | None:
    """The code object and display name of a Python function, method or decorated function
    (unwrapped through ``__wrapped__``, so a ``profile``-decorated function gives the original
    body); ``None`` for anything else."""
    if isinstance(obj, types.CodeType):
        return obj, obj.co_qualname
    func: Any = getattr(obj, "__func__", obj)  # bound methods, staticmethod, classmethod
    try:
        func = inspect.unwrap(func)
    except ValueError:  # a __wrapped__ cycle
        return None
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if not isinstance(code, types.CodeType):
        return None
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", code.co_qualname)
    return code, f"{module}.{qualname}" if module else qualname


def _describe(obj: object) -> str:
    kind = type(obj).__name__
    if isinstance(obj, type):
        name = obj.__qualname__
        return f"a class ({name}); pass one of its methods, e.g. {name}.__init__"
    a = "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"
    if callable(obj):
        return f"{a} {kind} with no Python code (built-in or C extension)"
    return f"{a} {kind}, not a function"


# -- the one running trace -----------------------------------------------------------------------


class _State:
    """One ``profile``-decorated function: its code, where it prints, the tables it keeps."""

    def __init__(
        self, code: types.CodeType, name: str, stream: Writer | None, keep: int, precision: int = 1
    ) -> None:
        self.code = code
        self.precision = precision
        self.name = name
        self.stream = stream
        self.tables: deque[MemoryTable] = deque(maxlen=keep)
        self.said_untraced = False
        self.calls = 0  # traced calls since the last table

    def say_untraced(self, why: str) -> None:
        if self.said_untraced:
            return
        self.said_untraced = True
        sys.stderr.write(
            f"pytest-memline: profile({self.name}) runs untraced: {why} "
            "(said once per function)\n"
        )

    def deliver(self, table: MemoryTable, *, show: bool) -> None:
        calls, self.calls = max(self.calls, 1), 0
        if self.precision != table.precision:
            table = dataclasses.replace(table, precision=self.precision)
        titled = _with_calls(table, calls)
        self.tables.append(titled)
        if not show:
            return
        collector = _collector
        if collector is not None and self.stream is STDOUT:
            collector.add(self.code, table, calls)
        elif self.stream is not None:
            _write(self.stream, titled.render() + "\n\n")


def _with_calls(table: MemoryTable, calls: int) -> MemoryTable:
    if calls == 1:
        return table
    return dataclasses.replace(table, title=f"{table.title}, {calls} calls")


def _write(stream: Writer, text: str) -> None:
    stream.write(text)
    flush = getattr(stream, "flush", None)
    if callable(flush):
        flush()


#: Live ``profile`` states, in decoration order (an entry goes when its function is collected).
_registry: weakref.WeakValueDictionary[int, _State] = weakref.WeakValueDictionary()
_ids = itertools.count()
_lock = threading.Lock()


@dataclasses.dataclass
class _Session:
    codes: list[types.CodeType]
    names: list[str]
    requested: int  # the first `requested` codes were asked for by whoever started the trace
    profiled: list[_State]
    thread: int

    def has(self, code: types.CodeType) -> bool:
        return any(c is code for c in self.codes)


_active: _Session | None = None


class _Busy(RuntimeError):
    """A trace is already running."""


def _busy_reason(native: Any) -> str | None:
    if _active is not None:
        if _active.thread != threading.get_ident():
            return (
                "a memline trace is running on another thread "
                "(one trace at a time per interpreter)"
            )
        whose = _active.names[: _active.requested] or _active.names[:1]
        return f"a memline trace of {', '.join(whose)} is running"
    if native.is_tracing():
        return "another memline trace is running (pytest --memline traces the calling test)"
    return None


def _begin(
    requested: list[tuple[types.CodeType, str]],
    starter: _State | None,
    *,
    peak: bool = True,
    reader: str = "auto",
    backend: str = "auto",
) -> _Session:
    """Starts the native trace of ``requested`` plus every live ``profile`` function."""
    global _active
    from pytest_memline import _memline

    with _lock:
        why = _busy_reason(_memline)
        if why is not None:
            raise _Busy(why)
        codes = [c for c, _ in requested]
        names = [n for _, n in requested]
        states = list(_registry.values())
        if starter is not None:
            states.remove(starter)
            states.insert(0, starter)
        for state in states:
            if not any(c is state.code for c in codes):
                codes.append(state.code)
                names.append(state.name)
        try:
            _memline.start(codes, peak=peak, reader=reader, backend=backend)
        except RuntimeError as exc:
            if _memline.is_tracing():
                raise _Busy(str(exc)) from None
            raise
        _active = _Session(codes, names, len(requested), states, threading.get_ident())
        return _active


def _end(session: _Session) -> list[MemoryTable | None]:
    """Stops the trace; delivers the tables of profiled functions that ran; returns the table
    of every code object of the session (``None`` for the unrequested ones that did not run)."""
    global _active
    from pytest_memline import _memline

    try:
        result = _memline.stop()
    finally:
        _active = None
    notes = [
        n for n in (result.peak_note, result.interrupted, result.chain_note, result.error) if n
    ]
    ran = [bool(f.lines) for f in result.functions]
    together = [n for n, r in zip(session.names, ran) if r]
    tables: list[MemoryTable | None] = []
    for i, (code, name, func) in enumerate(zip(session.codes, session.names, result.functions)):
        if not ran[i] and i >= session.requested:
            tables.append(None)
            continue
        extra = list(notes)
        if not ran[i]:
            extra.append(f"{name} did not run during the trace")
        elif len(together) > 1:
            others = ", ".join(n for n in together if n != name)
            extra.append(f"traced together with {others}: the summary line is the whole trace's")
        tables.append(
            build_table(
                title=name,
                code=code,
                lines=func.lines,
                start_rss=result.start_rss,
                end_rss=result.end_rss,
                peak_growth=result.peak_growth,
                exact_peak=result.exact_peak,
                notes=extra,
            )
        )
    for state in session.profiled:
        i = next(i for i, c in enumerate(session.codes) if c is state.code)
        table = tables[i]
        if table is not None and ran[i]:
            # A function the starter asked for is reported by the starter, not printed twice.
            state.deliver(table, show=i >= session.requested)
    return tables


# -- tracing() and trace() -----------------------------------------------------------------------


@contextmanager
def tracing(
    *funcs: Callable[..., object] | types.CodeType,
    peak: bool = True,
    reader: str = "auto",
    backend: str = "auto",
) -> Iterator[Trace]:
    """Trace ``funcs`` line by line while the ``with`` block runs::

        with pytest_memline.tracing(load, parse) as t:
            load("data.csv")
        print(t.render())          # t.tables[0] is load's table, t.tables[1] parse's

    Each function gets one table covering all its calls inside the block (Occurrences counts
    them). The tables are ready when the block exits, also when it raises. ``funcs`` are Python
    functions or methods (decorated ones are unwrapped through ``__wrapped__``) or code
    objects. ``peak``, ``reader`` and ``backend`` are those of ``--memline-peak``,
    ``--memline-reader`` and ``--memline-backend``.

    Raises ``RuntimeError`` if a memline trace is already running on this interpreter (one at
    a time: ``pytest --memline``, a ``profile``-decorated call, another ``tracing``), and
    ``TypeError`` for an argument that is not a Python function.
    """
    if not funcs:
        raise TypeError("tracing() needs at least one function to trace")
    requested: list[tuple[types.CodeType, str]] = []
    for obj in funcs:
        found = _function_of(obj)
        if found is None:
            raise TypeError(f"tracing(): cannot trace {obj!r}: it is {_describe(obj)}")
        requested.append(found)
    names = tuple(n for _, n in requested)
    try:
        session = _begin(requested, None, peak=peak, reader=reader, backend=backend)
    except _Busy as exc:
        raise RuntimeError(f"memline: cannot trace {', '.join(names)}: {exc}") from None
    result = Trace(names)
    try:
        yield result
    finally:
        result._tables = tuple(t for t in _end(session)[: len(requested)] if t is not None)


def trace(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Traced[R]:
    """Call ``func(*args, **kwargs)`` and trace it::

        t = pytest_memline.trace(build_index, "corpus.txt")
        t.value            # what build_index returned
        t.table.lines      # LineRow per line that ran (increment, peak, mem_usage in bytes)
        print(t.render())

    If ``func`` raises, the exception propagates and the table is lost: use :func:`tracing`
    to keep it. Raises ``RuntimeError`` if a memline trace is already running.
    """
    with tracing(func) as t:
        value = func(*args, **kwargs)
    return Traced(t.names, t.tables, value)


# -- profile -------------------------------------------------------------------------------------


class Profiled(Protocol[P, R]):
    """A ``profile``-decorated function: call it as the original.

    ``memline_tables`` holds the tables of its most recent traced calls, newest last
    (``f.memline_tables[-1]``); ``__wrapped__`` is the original function.
    """

    @property
    def memline_tables(self) -> deque[MemoryTable]: ...

    @property
    def __wrapped__(self) -> Callable[P, R]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    # Accessed on an instance, a decorated method is bound: the arguments are not checked
    # then (typing cannot drop `self` from P), the return type is kept.
    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None, /) -> Profiled[P, R]: ...
    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None, /) -> Callable[..., R]: ...


@overload
def profile(
    func: Callable[P, R],
    /,
    stream: Writer | None = STDOUT,
    precision: int = 1,
    backend: str | None = None,
    *,
    keep: int = DEFAULT_KEEP,
) -> Profiled[P, R]: ...
@overload
def profile(
    func: None = None,
    /,
    stream: Writer | None = STDOUT,
    precision: int = 1,
    backend: str | None = None,
    *,
    keep: int = DEFAULT_KEEP,
) -> Callable[[Callable[P, R]], Profiled[P, R]]: ...
def profile(
    func: Callable[P, R] | None = None,
    /,
    stream: Writer | None = STDOUT,
    precision: int = 1,
    backend: str | None = None,
    *,
    keep: int = DEFAULT_KEEP,
) -> Profiled[P, R] | Callable[[Callable[P, R]], Profiled[P, R]]:
    """Trace every call of the decorated function and print its memory table when it returns
    (also when it raises), like memory_profiler's ``@profile``::

        @profile                      # prints to sys.stdout (as it is at that moment)
        def build(): ...

        @profile(stream=sys.stderr)   # or any object with write(str)
        def load(): ...

        @profile(stream=None)         # print nothing, only keep the tables
        def parse(): ...
        parse(); parse.memline_tables[-1].lines

    ``keep``: how many tables (of the most recent calls) ``func.memline_tables`` holds.

    memory_profiler's arguments are accepted, so that its scripts run unchanged:
    ``@profile(precision=4)`` prints the sizes with 4 decimals (0 to 6); ``stream`` may be
    given by position too (``profile(f, stream)``); ``backend`` may be memory_profiler's
    ``"psutil"`` or ``"posix"`` (both RSS, which memline measures); its other backends
    (``"tracemalloc"``, ``"psutil_pss"``, ``"psutil_uss"``) raise ``ValueError``, since the
    table would not be what they promise.

    Nesting: profiled functions called while a profiled call runs are traced with it, and
    each prints its own table when the outermost profiled call returns. A call made while
    another memline trace runs (``pytest --memline`` tracing the calling test, say) runs
    untraced, and a note says so once on stderr. Under ``python -m pytest_memline``, the tables
    of functions printing to the default stream are gathered and printed at the end of the
    script instead, one per function.

    Plain functions and methods only: generator and ``async`` functions raise ``TypeError``
    (trace their consumer instead, or use :func:`tracing` around the loop).
    """
    if keep < 1:
        raise ValueError(f"profile(keep={keep!r}): keep at least 1 table")
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 <= precision <= 6:
        raise ValueError(f"profile(precision={precision!r}): a whole number of decimals, 0 to 6")
    if backend not in (None, "psutil", "posix"):
        raise ValueError(
            f"profile(backend={backend!r}): memline measures RSS (memory_profiler's 'psutil' or "
            "'posix'); for Python's own allocations run pytest --memline --memline-metric=heap"
        )

    def decorate(f: Callable[P, R]) -> Profiled[P, R]:
        found = _function_of(f)
        if found is None:
            raise TypeError(f"profile: cannot trace {f!r}: it is {_describe(f)}")
        code, name = found
        if code.co_flags & (
            inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
        ):
            raise TypeError(
                f"profile: {name} is a generator or async function, which runs after the call "
                "returns; profile the function that consumes it, or use tracing() around the loop"
            )
        state = _State(code, name, stream, keep, precision)
        _registry[next(_ids)] = state

        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            active = _active
            if active is not None and active.thread == threading.get_ident() and active.has(code):
                state.calls += 1
                return f(*args, **kwargs)  # nested: the running trace covers this call
            try:
                session = _begin([], state)
            except _Busy as exc:
                why = str(exc)
                if active is not None and active.thread == threading.get_ident():
                    why += ", which started before this function was decorated"
                state.say_untraced(why)
                return f(*args, **kwargs)
            state.calls += 1
            try:
                return f(*args, **kwargs)
            finally:
                _end(session)

        w: Any = wrapper
        w.memline_tables = state.tables
        w._memline_state = state  # keeps the registry entry alive as long as the function
        return w  # type: ignore[no-any-return]

    if func is None:
        return decorate
    return decorate(func)


# -- gathering tables for `python -m pytest_memline` ---------------------------------------------


class _Collector:
    """One table per profiled function over all its calls, in order of first table."""

    def __init__(self) -> None:
        # id(code) -> (code, table, calls, traces)
        self.tables: dict[int, tuple[types.CodeType, MemoryTable, int, int]] = {}

    def add(self, code: types.CodeType, table: MemoryTable, calls: int) -> None:
        seen = self.tables.get(id(code))
        if seen is None:
            self.tables[id(code)] = (code, table, calls, 1)
        else:
            _, before, n, traces = seen
            self.tables[id(code)] = (code, _merge(before, table), n + calls, traces + 1)

    def results(self) -> list[MemoryTable]:
        out = []
        for _, table, calls, traces in self.tables.values():
            table = _with_calls(table, calls)
            if traces > 1:
                note = (
                    f"{traces} traces merged: Increment and Occurrences add up, Mem usage is "
                    "the last trace's, Peak the largest; the summary's start is the first "
                    "trace's, end the last's, peak growth the largest of one trace"
                )
                table = dataclasses.replace(table, notes=(note, *table.notes))
            out.append(table)
        return out


def _merge(a: MemoryTable, b: MemoryTable) -> MemoryTable:
    """The table of two calls of one function (``b`` the later one)."""
    rows_b = {r.lineno: r for r in b.rows}
    rows = []
    for ra in a.rows:
        rb = rows_b.get(ra.lineno)
        if rb is None or not rb.ran:
            rows.append(ra)
        elif not ra.ran:
            rows.append(rb)
        else:
            assert ra.increment is not None and rb.increment is not None
            assert ra.peak is not None and rb.peak is not None
            rows.append(
                LineRow(
                    ra.lineno,
                    ra.contents,
                    mem_usage=rb.mem_usage,
                    increment=ra.increment + rb.increment,
                    peak=max(ra.peak, rb.peak),
                    occurrences=ra.occurrences + rb.occurrences,
                )
            )
    return dataclasses.replace(
        a,
        rows=tuple(rows),
        end_rss=b.end_rss,
        peak_growth=max(a.peak_growth, b.peak_growth),
        exact_peak=a.exact_peak and b.exact_peak,
        notes=tuple(dict.fromkeys(a.notes + b.notes)),
    )


_collector: _Collector | None = None


@contextmanager
def _collecting() -> Iterator[_Collector]:
    """While active, profiled functions on the default stream report to the collector."""
    global _collector
    previous, _collector = _collector, _Collector()
    try:
        yield _collector
    finally:
        _collector = previous
