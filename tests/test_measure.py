"""End-to-end: real allocations of known size, measured by a traced pytest run in a subprocess.

Tolerances: RSS is the whole process's resident memory, counted in 4 KiB pages. Around a
line's own allocation the interpreter also allocates small things (frames, ints, a new 1 MiB
pymalloc arena now and then), malloc adds chunk headers, and the table prints one decimal.
That noise stays well under 1 MiB per line here; ±3 MiB on the large numbers (80-200 MiB)
leaves room for it without letting a wrong measurement through (a missed or doubled
allocation is off by tens of MiB). The seed example's 7.6 MiB line gets ±1 MiB.

The order of the inner tests matters and is fixed: glibc keeps some freed heap memory resident
and hands it out again, so a small allocation made after another test freed memory can show
less growth than it really allocated. Each session starts with the examples that are sensitive
to that (the seed example, the loop of 100 KiB blocks); the 80-200 MiB blocks are always fresh
mmaps.
"""

import sys

import pytest
from memtables import table_of

from pytest_memline.table import PER_RUN_NOTE

MIB = 2**20

MEASURED = """
def build_and_discard(mib):
    # allocates, touches (bytearray zero-fills its buffer) and frees `mib` MiB, then returns
    scratch = bytearray(mib * 2**20)
    return len(scratch)


def test_seed():
    a = [1] * (10 ** 6)
    b = [2] * (2 * 10 ** 7)
    del b
    assert len(a) == 10 ** 6


def test_peak_in_callee():
    n = build_and_discard(200)
    assert n == 200 * 2**20


def test_loop():
    keep = []
    for _ in range(1000):
        keep.append(bytearray(100 * 1024))
    assert len(keep) == 1000


def test_80mib():
    data = bytearray(80 * 2**20)
    del data
"""


#: One traced session per backend, shared by the tests below (each reads its own table).
_sessions: dict[str, str] = {}


@pytest.fixture
def measured(pytester: pytest.Pytester, backend: str) -> str:
    """The output of `pytest --memline --memline-tables=all` over MEASURED."""
    if backend not in _sessions:
        pytester.makepyfile(test_measured=MEASURED)
        result = pytester.runpytest_subprocess(
            "--memline", "--memline-tables=all", f"--memline-backend={backend}"
        )
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines(
            [f"memline: on (backend {backend}, RSS via procfs, exact in-line peak)"]
        )
        _sessions[backend] = result.stdout.str()
    return _sessions[backend]


def test_seed_example(measured: str) -> None:
    t = table_of(measured, "test_seed")
    assert t.label == "RSS of the whole process, exact in-line peak"
    a = t.row("a = [1] * (10 ** 6)")
    b = t.row("b = [2] * (2 * 10 ** 7)")
    del_b = t.row("del b")
    # 10**6 and 2*10**7 pointers of 8 bytes: 7.63 MiB and 152.59 MiB (memory_profiler agrees)
    assert a.increment == pytest.approx(8e6 / MIB, abs=1)
    assert b.increment == pytest.approx(160e6 / MIB, abs=3)
    assert b.peak == pytest.approx(160e6 / MIB, abs=3)
    assert del_b.increment == pytest.approx(-160e6 / MIB, abs=3)
    assert del_b.peak == pytest.approx(0, abs=1)
    last = t.row("assert len(a) == 10 ** 6")
    assert (last.increment, last.peak) == (pytest.approx(0, abs=1), pytest.approx(0, abs=1))
    assert [r.occurrences for r in (a, b, del_b)] == [1, 1, 1]
    # Mem usage: RSS when the line finished; b's line ends 152.6 MiB above a's
    assert a.mem_usage is not None and b.mem_usage is not None
    assert b.mem_usage - a.mem_usage == pytest.approx(160e6 / MIB, abs=3)
    assert t.peak_growth == pytest.approx((8e6 + 160e6) / MIB, abs=3)
    # every line of the source is shown, the def line blank (it does not run in the body)
    assert t.rows[0].contents == "def test_seed():" and t.rows[0].occurrences == 0


def test_peak_inside_a_callee(measured: str) -> None:
    t = table_of(measured, "test_peak_in_callee")
    line = t.row("n = build_and_discard(200)")
    # the callee's 200 MiB came and went within the line: no increment, a 200 MiB peak
    assert line.increment == pytest.approx(0, abs=3)
    assert line.peak == pytest.approx(200, abs=3)
    assert line.occurrences == 1
    assert t.peak_growth == pytest.approx(200, abs=3)
    # lines of the callee are charged to the test's line: the table has the test's lines only
    assert [r.lineno for r in t.rows] == list(range(t.rows[0].lineno, t.rows[0].lineno + 3))


def test_loop_increment_and_occurrences(measured: str) -> None:
    t = table_of(measured, "test_loop")
    body = t.row("keep.append(bytearray(100 * 1024))")
    # 1000 blocks of 100 KiB kept: 97.66 MiB summed over the iterations
    assert body.occurrences == 1000
    assert body.increment == pytest.approx(1000 * 100 * 1024 / MIB, abs=3)
    # one iteration's own growth: 100 KiB, printed as 0.1 MiB
    assert body.peak == pytest.approx(0.1, abs=0.5)
    # ... which the table explains, since 97.7 beside 0.1 looks wrong otherwise
    assert PER_RUN_NOTE in t.notes
    one_run = table_of(measured, "test_peak_in_callee")
    assert PER_RUN_NOTE not in one_run.notes
    assert t.row("keep = []").peak == pytest.approx(0, abs=1)
    loop = t.row("for _ in range(1000):")
    assert loop.occurrences == 1001
    assert loop.increment == pytest.approx(0, abs=1)


def test_80mib_line(measured: str) -> None:
    t = table_of(measured, "test_80mib")
    alloc = t.row("data = bytearray(80 * 2**20)")
    assert alloc.increment == pytest.approx(80, abs=3)
    assert alloc.peak == pytest.approx(80, abs=3)
    assert t.row("del data").increment == pytest.approx(-80, abs=3)
    assert t.peak_growth == pytest.approx(80, abs=3)
    assert t.end == pytest.approx(0, abs=3)


def test_exact_peak_when_the_parent_process_was_bigger(pytester: pytest.Pytester) -> None:
    # getrusage's ru_maxrss never drops below the peak RSS of the process image before exec
    # (the kernel keeps it in signal->maxrss; clear_refs does not reset it): a pytest started
    # by a bigger process (tox, an IDE, xdist's controller, this test) must still get exact
    # in-line peaks, not the parent's size minus its own.
    ballast = bytearray(300 * MIB)  # raises this process's RSS high-water mark by 300 MiB
    pytester.makepyfile(
        """
        def test_small_lines():
            x = 1
            data = bytearray(80 * 2**20)
            del data
        """
    )
    result = pytester.runpytest_subprocess("--memline", "--memline-tables=all")
    del ballast
    result.assert_outcomes(passed=1)
    t = table_of(result.stdout.str(), "test_small_lines")
    assert t.label == "RSS of the whole process, exact in-line peak"
    assert t.row("x = 1").peak == pytest.approx(0, abs=1)
    assert t.row("data = bytearray(80 * 2**20)").peak == pytest.approx(80, abs=3)
    assert t.row("del data").peak == pytest.approx(0, abs=1)
    assert t.peak_growth == pytest.approx(80, abs=3)


def test_portable_reader(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_80mib():
            data = bytearray(80 * 2**20)
            del data
        """
    )
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-tables=all", "--memline-reader=portable"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["memline: on (backend *, RSS via portable, no exact peak: *)"])
    t = table_of(result.stdout.str(), "test_80mib")
    assert t.label == "RSS of the whole process, peak sampled at line boundaries"
    assert t.notes == ["exact in-line peak needs Linux procfs; Peak falls back to Increment"]
    alloc = t.row("data = bytearray(80 * 2**20)")
    # sysinfo reads the same kernel counter, through a slower path: the same tolerance
    assert alloc.increment == pytest.approx(80, abs=3)
    assert alloc.peak == pytest.approx(alloc.increment, abs=0.1)


def test_auto_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--memline")
    result.assert_outcomes(passed=1)
    expected = "monitoring" if sys.version_info >= (3, 12) else "settrace"
    result.stdout.fnmatch_lines([f"memline: on (backend {expected}, *"])
