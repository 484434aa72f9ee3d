"""One description per metric, read by the table's header, the budget messages, the run's
header and the measurement (the native side of a metric is in ``src/meter/``). A new metric is
one entry here and one file there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    #: what the budget messages call it ("grew RSS by", "the Python heap")
    noun: str
    #: the short name in "test peak RSS growth", "test peak heap growth"
    short: str
    #: the table's header, given whether the in-line peak is exact
    exact_label: str
    sampled_label: str
    #: the run's header, given where the numbers come from and the peak's note
    header: str
    #: Mem usage relative to the start of the body (a count that starts with the trace)
    relative: bool
    #: numbers that repeat exactly: a full garbage collection before each test keeps the
    #: collector's schedule the same, and a regression needs no second look
    deterministic: bool
    #: RSS depends on the tests that ran before (see README "Test order")
    order_dependent: bool


METRICS = {
    "rss": Metric(
        name="rss",
        noun="RSS",
        short="RSS",
        exact_label="RSS of the whole process, exact in-line peak",
        sampled_label="RSS of the whole process, peak sampled at line boundaries",
        header="RSS via {source}, {peak}",
        relative=False,
        deterministic=False,
        order_dependent=True,
    ),
    "heap": Metric(
        name="heap",
        noun="the Python heap",
        short="heap",
        exact_label="Python heap (tracemalloc: allocated bytes, the same on every run)",
        sampled_label="Python heap (tracemalloc: allocated bytes, the same on every run)",
        header="metric heap: Python allocations via tracemalloc",
        relative=True,
        deterministic=True,
        order_dependent=False,
    ),
}


def metric(name: str) -> Metric:
    return METRICS[name]
