"""Fixtures measured line by line: with ``--memline-fixtures`` (``[tool.memline] fixtures =
true``), each fixture's setup is traced like a test body and gets a memory table of its own
(memory_profiler's layout); a ``[[tool.memline.limits]]`` rule with ``fixture = "name"``
budgets that fixture's setup (its peak growth, ``test_limit``, and its lines, ``line_limit``),
and such a fixture is traced whether or not the option is on.

A fixture's setup runs up to its ``yield`` (or its ``return``); what its teardown releases is
the test's teardown figure (``_around``). A fixture of a wider scope is set up once, for the
first test that needs it: its table is that test's, and so is a budget it breaks. A fixture
that another fixture requests with ``request.getfixturevalue()`` while being traced is part of
that fixture's line. The hook is registered only when fixtures are traced.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline._results import SHOWN_AS_NONZERO
from pytest_memline.table import MemoryTable, build_table

if TYPE_CHECKING:
    from pytest_memline._settings import Settings

#: On the item: the budget failures of the fixtures set up for it (``Measurer.evaluate``
#: adds them to the test's own).
FIXTURE_FAILURES_KEY = pytest.StashKey["list[FixtureFailure]"]()


@dataclass(frozen=True)
class FixtureTable:
    """The table of one fixture's setup, for the test it was set up for."""

    name: str
    scope: str
    table: MemoryTable

    def to_dict(self) -> dict[str, Any]:
        return {"fixture": self.name, "scope": self.scope, "table": self.table.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixtureTable:
        return cls(str(d["fixture"]), str(d["scope"]), MemoryTable.from_dict(d["table"]))


@dataclass(frozen=True)
class FixtureFailure:
    """A fixture's setup over a limit of its rule: a budget failure of the test it was set up
    for (``lineno`` is the test's line it marks: none)."""

    text: str
    lineno: None = None
    what: str = "fixture"

    def message(self, table: MemoryTable | None = None) -> str:
        return self.text


def _own_folders() -> tuple[str, ...]:
    """Where pytest's, pluggy's and memline's own fixtures live (``tmp_path``, ``capsys``,
    ...): not traced unless a rule names them."""
    import _pytest
    import pluggy

    import pytest_memline

    return tuple(
        os.path.join(os.path.dirname(m.__file__ or ""), "") for m in (_pytest, pluggy, pytest_memline)
    )


def fixture_function(fixturedef: Any) -> Any:
    """The fixture's own function (unwrapped, unbound), or None."""
    func = getattr(fixturedef, "func", None)
    if func is None:
        return None
    try:
        func = inspect.unwrap(func)
    except ValueError:  # a cycle of __wrapped__
        return None
    func = getattr(func, "__func__", func)
    return func if hasattr(func, "__code__") else None


class FixtureTracer:
    """The fixture hook while fixtures are traced: it traces the setup of each fixture that
    ``--memline-fixtures`` or a fixture rule asks for, for the test being set up."""

    def __init__(self, settings: Settings, native: Any, tracker: Any) -> None:
        self.settings = settings
        self.native = native
        #: the around tracker: the current test and its metric
        self.tracker = tracker
        self.every = settings.fixtures
        self.named = frozenset(r.fixture for r in settings.fixture_rules)
        self.own = _own_folders()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        item = self.tracker.current
        name = fixturedef.argname
        if item is None or not (self.every or name in self.named) or self.native.is_tracing():
            return (yield)
        func = fixture_function(fixturedef)
        code = getattr(func, "__code__", None)
        if code is None or (name not in self.named and code.co_filename.startswith(self.own)):
            return (yield)
        s = self.settings
        try:
            self.native.start(
                [code], peak=s.peak, reader=s.reader, backend=s.backend, metric=self.tracker.metric
            )
        except RuntimeError:
            # the tracer cannot start here (no free tool id, RSS unreadable): the test's own
            # trace fails with the reason
            return (yield)
        try:
            return (yield)
        finally:
            self._record(item, name, fixturedef.scope, func, self.native.stop())

    def _record(self, item: pytest.Item, name: str, scope: str, func: Any, trace: Any) -> None:
        """The fixture's table, on the test's figures when it allocated or has a budget; its
        budget failures on the item."""
        from pytest_memline._around import AROUND_KEY
        from pytest_memline._budget import check

        code = func.__code__
        own = next((f for f in trace.functions if f.code is code), None)
        notes = [n for n in (trace.peak_note, trace.interrupted, trace.chain_note, trace.error) if n]
        if scope != "function":
            notes.append(
                f"a {scope}-scoped fixture: set up once, for this test, which is charged with it"
            )
        table = build_table(
            title=f"{item.nodeid} > fixture {name} ({scope} scope, its setup)",
            code=code,
            lines=own.lines if own is not None else [],
            start_rss=trace.start_rss,
            end_rss=trace.end_rss,
            peak_growth=trace.peak_growth,
            exact_peak=trace.exact_peak,
            metric=trace.metric,
            notes=notes,
            module_globals=getattr(func, "__globals__", None),
        )
        table = dataclasses.replace(table, role="fixture")
        limits = self.settings.fixture_limits(name, item.nodeid) if name in self.named else None
        if limits is not None:
            found = check(table, limits)
            if found:
                table = table.with_marks(v.lineno for v in found if v.lineno is not None)
                failures = item.stash.setdefault(FIXTURE_FAILURES_KEY, [])
                failures.extend(FixtureFailure(v.message(table, fixture=name)) for v in found)
        allocated = max(abs(table.peak_growth), abs(table.end_rss - table.start_rss)) >= SHOWN_AS_NONZERO
        around = item.stash.get(AROUND_KEY, None)
        if around is not None and (allocated or limits is not None):
            around.fixtures = (*around.fixtures, FixtureTable(name, scope, table))


def fixture_names(items: list[pytest.Item]) -> set[str]:
    """The fixtures the collected tests use (their fixture closures)."""
    names: set[str] = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        names.update(getattr(info, "names_closure", ()))
    return names
