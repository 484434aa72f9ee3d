"""Around the body: what a test's fixtures added, what its teardown released, and what the test
left behind (retained memory), measured for every traced test; and the leak check, which runs
the body again in a forked process and reports what each repetition retained.

A test's figures, in the metric's unit (RSS bytes, or heap bytes under ``metric = "heap"``):

- ``before``: read before its setup (right after the previous test's teardown, whose garbage
  was collected and malloc trimmed then);
- ``body_start`` / ``body_end``: the start and end of its traced body (the table's);
- ``after``: after its teardown, once cyclic garbage is collected and malloc trimmed.

``retained = after - before``, less ``own``: memory memline itself made resident in that window
(the ballast an xdist worker's first trace may keep so that the exact peak works there, see
``RssReader::lift_above_floor``), which is the plugin's, not the test's. Fixtures of a wider scope (module, class, package, session)
that were set up for this test stay alive after it: their growth is charged here, once, where
they were set up (``wider``), and ``left = retained - charged`` is what the leak limit judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memline._results import SHOWN_AS_NONZERO
from pytest_memline._units import format_size, mib, signed_mib

if TYPE_CHECKING:
    from pytest_memline._settings import Limit

#: On the item: the test's figures from setup to the end of its body (see ``Around``).
AROUND_KEY = pytest.StashKey["Around"]()


@dataclass(slots=True)
class Around:
    """A test's memory around its body (see the module's docstring). Filled in as the test
    runs (setup, body, teardown) by its one owner, the tracker: updated in place, not copied
    (a copy per step cost more than the measurement, bench/fixedcost.py)."""

    metric: str
    before: int
    body_start: int | None = None
    body_end: int | None = None
    after: int | None = None
    #: fixtures of a wider scope set up for this test: (name, scope, growth while set up)
    wider: tuple[tuple[str, str, int], ...] = ()
    #: the leak check: what each repetition of the body retained
    repetitions: tuple[int, ...] = ()
    #: why the leak check stopped early (a repetition failed, the fork died)
    repeat_error: str | None = None
    #: the xdist worker that ran the test
    worker: str | None = None
    #: the body ran in a forked child (``isolate = "fork"``): its end is the child's, and what
    #: it kept stayed there
    isolated: bool = False
    #: the tables of the fixtures traced at its setup (``_fixtures``: those that allocated or
    #: have a budget)
    fixtures: tuple[Any, ...] = ()
    #: memline's own memory held resident at ``before`` (``_memline.ballast``), and what it
    #: added since: taken out of ``setup`` and ``retained``
    ballast: int = 0
    own: int = 0
    #: what fixtures of a wider scope released when they were torn down after this test (the
    #: last of their module, class or session); ``after`` is read before they were
    released: int = 0

    @property
    def setup(self) -> int | None:
        """What the fixtures added (before setup to the start of the body)."""
        return None if self.body_start is None else self.body_start - self.before - self.own

    @property
    def teardown(self) -> int | None:
        """What the teardown (and the collection after it) released: negative when it freed."""
        if self.after is None or self.body_end is None or self.isolated:
            return None
        return self.after - self.body_end

    @property
    def retained(self) -> int | None:
        return None if self.after is None else self.after - self.before - self.own

    @property
    def charged(self) -> int:
        """The growth of the wider-scoped fixtures set up for this test."""
        return sum(max(0, growth) for _, _, growth in self.wider)

    @property
    def left(self) -> int | None:
        """Retained, less the wider-scoped fixtures that are meant to stay alive."""
        r = self.retained
        return None if r is None else r - self.charged

    @property
    def slope(self) -> float | None:
        """The least-squares slope of the memory after each repetition of the body (bytes a
        run): what each more call keeps, with one odd repetition weighing little."""
        reps = self.repetitions
        if len(reps) < 2:
            return float(reps[0]) if reps else None
        ys = [0]
        for r in reps:
            ys.append(ys[-1] + r)
        n = len(ys)
        mean_x = (n - 1) / 2
        mean_y = sum(ys) / n
        num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys))
        den = sum((x - mean_x) ** 2 for x in range(n))
        return num / den

    def header_lines(self, precision: int = 1) -> list[str]:
        """What the table's header says about it."""
        p = precision
        parts = []
        if self.setup is not None:
            parts.append(f"fixtures {signed_mib(self.setup, p)} at setup")
        if self.teardown is not None:
            parts.append(f"teardown {signed_mib(self.teardown, p)}")
        if self.retained is not None:
            parts.append(f"retained {signed_mib(self.retained, p)} after teardown")
        lines = [f"around the body: {', '.join(parts)}"] if parts else []
        if self.isolated:
            lines.append("note: the body ran in a fork (isolate = \"fork\"): what it kept stayed there")
        shown = [(n, s, g) for n, s, g in self.wider if abs(g) >= SHOWN_AS_NONZERO]
        if shown:
            names = ", ".join(f"{name} ({scope}, {signed_mib(g, p)})" for name, scope, g in shown)
            lines.append(
                f"note: wider-scoped fixtures set up for this test, charged here once and not "
                f"counted as left behind: {names}"
            )
        if abs(self.released) >= SHOWN_AS_NONZERO:
            lines.append(
                f"note: wider-scoped fixtures torn down after this test: {signed_mib(self.released, p)}"
                " (read before them: not counted as this test's)"
            )
        if self.repetitions:
            each = ", ".join(signed_mib(r, p) for r in self.repetitions)
            slope = self.slope or 0.0
            lines.append(
                f"leak check: {len(self.repetitions)} more runs of the body retained {each} "
                f"(slope {signed_mib(round(slope), p)} a run)"
            )
        if self.repeat_error:
            lines.append(f"note: the leak check stopped: {self.repeat_error}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "before": self.before,
            "body_start": self.body_start,
            "body_end": self.body_end,
            "after": self.after,
            "setup": self.setup,
            "teardown": self.teardown,
            "retained": self.retained,
            "left": self.left,
            "wider": [{"fixture": n, "scope": s, "growth": g} for n, s, g in self.wider],
            "repetitions": list(self.repetitions),
            "slope": None if self.slope is None else round(self.slope),
            "repeat_error": self.repeat_error,
            "worker": self.worker,
            "isolated": self.isolated,
            "fixtures": [f.to_dict() for f in self.fixtures],
            "own": self.own,
            "released": self.released,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Around:
        from pytest_memline._fixtures import FixtureTable

        def opt(key: str) -> int | None:
            v = d.get(key)
            return None if v is None else int(v)

        return cls(
            metric=str(d.get("metric", "rss")),
            before=int(d["before"]),
            body_start=opt("body_start"),
            body_end=opt("body_end"),
            after=opt("after"),
            wider=tuple((str(w["fixture"]), str(w["scope"]), int(w["growth"])) for w in d.get("wider", ())),
            repetitions=tuple(int(r) for r in d.get("repetitions", ())),
            repeat_error=d.get("repeat_error"),
            worker=d.get("worker"),
            isolated=bool(d.get("isolated", False)),
            fixtures=tuple(FixtureTable.from_dict(f) for f in d.get("fixtures", ())),
            own=int(d.get("own", 0)),
            released=int(d.get("released", 0)),
        )


def leak_message(value: int, limit: Limit, metric: str, repetitions: Sequence[int] = ()) -> str:
    """The leak limit's failure message."""
    where = f"{format_size(limit.value)} ({limit.source})"
    if repetitions:
        each = ", ".join(mib(r) for r in repetitions)
        return (
            f"memline: the test body retained at least {mib(value)} in each of "
            f"{len(repetitions)} more runs ({each}), over the leak limit of {where}"
        )
    what = "resident" if metric == "rss" else "allocated on the Python heap"
    return f"memline: test left {mib(value)} {what} after teardown, over the leak limit of {where}"


def read(metric: str, reader: str) -> int:
    """The metric's value now (outside a trace)."""
    if metric == "heap":
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]
    from pytest_memline import _memline

    return _memline.rss_now(reader)


class AroundTracker:
    """The manager's part that measures around each traced test's body (its hooks call it)."""

    def __init__(self, measurer: Any, reader: str, worker: str | None, pluginmanager: Any) -> None:
        self.measure = measurer
        self.pluginmanager = pluginmanager
        #: registered only while a test sets up fixtures of a wider scope (a hook wrapper on
        #: every fixture of every test would cost more than the rest of this measurement)
        self.fixture_hooks = WiderFixtures(self)
        self.hooks_registered = False
        self.reader = reader
        self.worker = worker
        #: the item between its setup and the end of its teardown, with its metric
        self.current: pytest.Item | None = None
        self.metric = "rss"
        #: what the fixtures of a wider scope grew while set up for the current item
        self.wider: list[tuple[str, str, int]] = []
        #: the last reading was taken after a teardown's collection: no other needed
        self.settled = False
        #: tracemalloc started for this test (metric "heap"), stopped after its teardown
        self.started_tracemalloc = False
        #: the reading taken once the test's own finalizers ran, before those of wider scopes
        #: (see ``teardown_begins``), and where its marker was put
        self.own_done: int | None = None
        self.marker: tuple[list[Any], Any] | None = None

    def begin(self, item: pytest.Item, metric: str) -> None:
        """Before the test's setup."""
        if metric == "heap":
            import tracemalloc

            if not tracemalloc.is_tracing():
                tracemalloc.start()
                self.started_tracemalloc = True
        elif not self.settled:
            # the first test, or one after an untraced test: nothing collected its garbage yet
            self.measure.settle(metric)
        self.settled = False
        self.current = item
        self.metric = metric
        self.wider = []
        if wider_pending(item):
            self.pluginmanager.register(self.fixture_hooks, "memline-wider-fixtures")
            self.hooks_registered = True
        item.stash[AROUND_KEY] = Around(
            metric, read(metric, self.reader), worker=self.worker, ballast=self._ballast(metric)
        )

    def fixture_setup(self, scope: str) -> int | None:
        """Before a fixture's setup: the reading, when it is a wider-scoped fixture of the
        current test (the growth of those is charged to the test that set them up)."""
        if self.current is None or scope == "function":
            return None
        return read(self.metric, self.reader)

    def fixture_done(self, name: str, scope: str, start: int) -> None:
        self.wider.append((name, scope, read(self.metric, self.reader) - start))

    def body(
        self,
        item: pytest.Item,
        start: int | None = None,
        end: int | None = None,
        *,
        repetitions: Sequence[int] = (),
        error: str | None = None,
        isolated: bool = False,
    ) -> None:
        """After the body: its raw start and end (the table's, before the heap metric makes
        them relative); after the leak check, its repetitions (or why it stopped)."""
        around = item.stash.get(AROUND_KEY, None)
        if around is None:
            return
        if start is not None and end is not None:
            around.body_start, around.body_end = start, end
            around.own = self._ballast(around.metric) - around.ballast
        if repetitions or error:
            around.repetitions, around.repeat_error = tuple(repetitions), error
        if isolated:
            around.isolated = True

    def teardown_begins(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Before the test's teardown. When it may tear down fixtures of a wider scope too
        (the last test of its class, module or session), a marker goes last among the
        finalizers of the test's parent node: pytest runs the test's own finalizers first, then
        the marker (the reading that ends the test), then the wider fixtures' (what they
        release is not the test's). A private structure of pytest (``SetupState.stack``, the
        same since pytest 7): where it is not there, the reading is taken after all of them."""
        if item is not self.current or (nextitem is not None and nextitem.parent is item.parent):
            return
        around = item.stash.get(AROUND_KEY, None)
        if around is None or around.body_start is None:
            return  # skipped or failed at setup: no figures to read
        stack = getattr(getattr(item.session, "_setupstate", None), "stack", None)
        entry = stack.get(item.parent) if isinstance(stack, dict) else None
        if not entry or not isinstance(entry[0], list):
            return
        finalizers = entry[0]

        def marker() -> None:
            if self.current is item:
                self.own_done = self._settled_reading(item)

        finalizers.append(marker)
        self.marker = (finalizers, marker)

    def _settled_reading(self, item: pytest.Item) -> int:
        if getattr(item, "funcargs", None):
            # the fixtures' values: pytest lets go of them right after the teardown's report;
            # let go now, or every function-scoped fixture would count as left behind
            item.funcargs = {}  # type: ignore[attr-defined]
        metric = self.metric
        self.measure.settle(metric)
        return read(metric, self.reader)

    def end(self, item: pytest.Item) -> Around | None:
        """After the test's teardown: its figures, complete (None for an untraced test)."""
        around = item.stash.get(AROUND_KEY, None)
        own_done, self.own_done = self.own_done, None
        if self.marker is not None:
            finalizers, marker = self.marker
            self.marker = None
            if marker in finalizers:  # its parent stays (the next test shares it)
                finalizers.remove(marker)
        self.current = None
        if self.hooks_registered:
            self.pluginmanager.unregister(self.fixture_hooks)
            self.hooks_registered = False
        if around is None:
            return None
        if around.body_start is None:
            # skipped, or its setup failed: no body, no figures (and no collection to pay for)
            del item.stash[AROUND_KEY]
            self._stop_tracemalloc()
            return None
        after = self._settled_reading(item)
        self.settled = True
        self._stop_tracemalloc()
        if own_done is not None:
            around.released = after - own_done
            after = own_done
        around.after, around.wider = after, tuple(self.wider)
        around.own = self._ballast(around.metric) - around.ballast
        return around

    @staticmethod
    def _ballast(metric: str) -> int:
        """memline's own resident memory (it is not on the Python heap: 0 under "heap")."""
        if metric == "heap":
            return 0
        from pytest_memline import _memline

        return _memline.ballast()

    def _stop_tracemalloc(self) -> None:
        if self.started_tracemalloc:
            import tracemalloc

            tracemalloc.stop()
            self.started_tracemalloc = False


def wider_pending(item: pytest.Item) -> bool:
    """Whether the test's setup may set up a fixture of a wider scope than the function: one
    in its closure that has no cached value yet, or is parametrized (set up again when its
    parameter changes). Items without pytest's fixture info: assume so."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None)
    if defs is None:
        return True
    for chain in defs.values():
        for fd in chain[-1:]:
            if fd.scope != "function" and (fd.cached_result is None or fd.params is not None):
                return True
    return False


class WiderFixtures:
    """The fixture hook, registered while a test's setup may set up wider-scoped fixtures."""

    def __init__(self, tracker: AroundTracker) -> None:
        self.tracker = tracker

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        start = self.tracker.fixture_setup(fixturedef.scope)
        if start is None:
            return (yield)
        try:
            return (yield)
        finally:
            self.tracker.fixture_done(fixturedef.argname, fixturedef.scope, start)


def repeat_body(measurer: Any, item: pytest.Item, metric: str, reader: str, runs: int) -> list[int]:
    """Runs the body ``runs`` more times here and returns what each run retained (after a
    collection and a trim, as after a teardown)."""
    out = []
    for _ in range(runs):
        measurer.settle(metric)
        start = read(metric, reader)
        measurer.call_again(item)
        measurer.settle(metric)
        out.append(read(metric, reader) - start)
    return out
