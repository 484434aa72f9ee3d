"""Stub of the native module ``pytest_memline._memline`` (Rust, PyO3)."""

from types import CodeType
from typing import Any, Literal, TypedDict, final, type_check_only

__all__ = [
    "__version__",
    "TraceHandle",
    "LineRow",
    "FunctionTrace",
    "TraceResult",
    "start",
    "stop",
    "is_tracing",
    "abandon",
    "_callees_untraced",
    "_mon_line",
    "_mon_start",
    "_mon_resume",
    "_mon_return",
    "_mon_yield",
    "_mon_use_tool_id",
    "hold_tool_id",
    "thread_starts",
    "table_rows",
    "probe_reader",
    "parse_size",
    "parse_percent",
    "parse_pyproject",
    "SIZE_FORMS",
    "Baseline",
    "save_baseline",
    "trim_malloc",
    "write_file",
    "ballast",
    "process_peak",
    "rss_now",
    "check_write_path",
    "check_read_path",
    "pin_malloc",
    "_bench_floor",
    "_prefault_like_parent",
    "BASELINE_FORMAT",
    "BASELINE_VERSION",
    "BASELINE_KEEP",
    "METRICS",
]

__version__: str
SIZE_FORMS: str
BASELINE_FORMAT: str
BASELINE_VERSION: int
BASELINE_KEEP: int
METRICS: list[str]

@final
class TraceHandle:
    def __call__(self, *args: object) -> None: ...

@final
class FunctionTrace:
    @property
    def code(self) -> CodeType: ...
    @property
    def lines(self) -> list[LineRow]:
        """A row per line that ran, without its contents (they come from the source)."""

@final
class LineRow:
    """One source line of a memory table. The numbers are ``None`` for lines that did not run;
    sizes are bytes."""

    def __new__(
        cls,
        lineno: int,
        contents: str,
        mem_usage: int | None = None,
        increment: int | None = None,
        peak: int | None = None,
        occurrences: int = 0,
    ) -> LineRow: ...
    @property
    def lineno(self) -> int: ...
    @property
    def contents(self) -> str: ...
    @property
    def mem_usage(self) -> int | None: ...
    @property
    def increment(self) -> int | None: ...
    @property
    def peak(self) -> int | None: ...
    @property
    def occurrences(self) -> int: ...
    @property
    def ran(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def from_dict(d: Any) -> LineRow: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class TraceResult:
    @property
    def start_rss(self) -> int: ...
    @property
    def end_rss(self) -> int: ...
    @property
    def peak_growth(self) -> int: ...
    @property
    def exact_peak(self) -> bool: ...
    @property
    def reader(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def peak_note(self) -> str | None: ...
    @property
    def interrupted(self) -> str | None: ...
    @property
    def interrupted_line(self) -> int | None: ...
    @property
    def chain_note(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def samples(self) -> int: ...
    @property
    def functions(self) -> list[FunctionTrace]: ...

@type_check_only
class ReaderProbe(TypedDict):
    reader: str
    exact_peak: bool
    note: str | None

def start(
    codes: list[CodeType],
    *,
    peak: bool = True,
    reader: str = "auto",
    backend: str = "auto",
    metric: str = "rss",
    include: list[str] = ...,
) -> None:
    """Traces ``codes``; with ``include``, also every function whose ``co_filename`` is one of
    those entries (ending in ``/``: under that folder; ending in ``*``: starting with the rest)."""

def stop() -> TraceResult: ...
def is_tracing() -> bool: ...
def abandon() -> None: ...
def _mon_use_tool_id(tool_id: object, name: object, /) -> Any:
    """Stands in for ``sys.monitoring.use_tool_id`` while memline holds an id."""

def hold_tool_id(keep: bool) -> None:
    """True: the sys.monitoring tool id stays held between traces (only PY_UNWIND on); False:
    free it (now, or when the running trace stops) and take it per trace again."""
def _callees_untraced() -> bool:
    """Whether the running trace's callees run untraced (3.11, settrace, memline alone)."""
def probe_reader(reader: str = "auto", peak: bool = True) -> ReaderProbe: ...
def trim_malloc() -> bool: ...
def thread_starts() -> int:
    """Threads started in this process since the first call (a C audit hook counts them)."""
def table_rows(first: int, source: list[str], measured: list[LineRow]) -> tuple[LineRow, ...]:
    """A row per source line (the first numbered ``first``), with the numbers of the measured
    row of its line, if any."""
def write_file(path: str, text: str) -> str: ...
def process_peak() -> int | None: ...
def rss_now(reader: str = "auto") -> int: ...
def ballast() -> int: ...
def check_write_path(path: str) -> None: ...
def check_read_path(path: str) -> None: ...
def pin_malloc(bytes: int) -> bool: ...
def parse_size(value: str | int) -> int: ...
def parse_percent(value: str) -> float: ...
def parse_pyproject(
    text: str,
    file: str,
    keys: list[tuple[str, str, Any]],
    rule_keys: list[tuple[str, str, Any]],
) -> dict[str, Any] | None: ...
def _mon_line(code: CodeType, line_number: int, /) -> None: ...
def _mon_start(code: CodeType, _offset: int) -> None: ...
def _mon_resume(code: CodeType, _offset: int) -> None: ...
def _mon_return(code: CodeType, _offset: int, _value: object) -> None: ...
def _mon_yield(code: CodeType, _offset: int, _value: object) -> None: ...

@type_check_only
class Change(TypedDict):
    line: int | None
    old_line: int | None
    contents: str
    what: str
    old: int  # the baseline's highest sample
    new: int
    lo: int  # its lowest sample
    samples: int
    allowed: int

@type_check_only
class ComparisonDict(TypedDict):
    status: Literal["regressed", "improved", "unchanged"]
    old_peak_growth: int
    samples: int
    changes: list[Change]
    diff: list[tuple[str, LineRow | None, bool]]

@type_check_only
class SaveReport(TypedDict):
    written: int
    kept: int
    pruned: int
    backup: str | None
    backup_reason: str | None
    migrated_from: int | None

@final
class Baseline:
    @staticmethod
    def load(path: str) -> Baseline: ...
    @property
    def path(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def python(self) -> str: ...
    @property
    def platform(self) -> str: ...
    @property
    def version(self) -> int: ...
    def test_ids(self) -> list[str]: ...
    def samples(self, nodeid: str) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: str, /) -> bool: ...
    def entry_json(self, nodeid: str) -> str | None: ...
    def compare(
        self,
        nodeid: str,
        current: str,
        *,
        tolerance: float,
        noise_floor: int,
        metric: str = "rss",
        context: int = 3,
    ) -> ComparisonDict | None: ...

def save_baseline(
    path: str,
    metric: str,
    python: str,
    platform: str,
    entries: str,
    *,
    keep: int = ...,
    prune: list[str] = ...,
) -> SaveReport: ...

@type_check_only
class _BenchFloor(TypedDict):
    reader: str
    statm_read: float
    peak_reset: float | None
    clear_refs: float | None
    getrusage: float | None
    note: str | None

def _prefault_like_parent() -> int | None:
    """In a forked child: maps the file-backed pages the parent has mapped; how many."""

def _bench_floor(n: int = 20000, rounds: int = 5) -> _BenchFloor:
    """Private, for bench/run.py: CPU ns per statm read and per peak reset."""
