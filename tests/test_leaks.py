"""What a test leaves behind: the memory around its body (fixtures at setup, what the teardown
released, what stayed after it), the leak limit, the leak check that runs the body again, and
the session's view (top retainers, the timeline in the JSON report).

Real sessions with real memory: bytearrays of known size kept in a module list, filled into an
lru_cache, held by fixtures of each scope. RSS moves by a few pages around a test (pytest's own
reports, malloc's bookkeeping), so sizes are checked within 2 MiB unless said otherwise.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from memtables import parse_tables, report_of

MIB = 2**20

SUITE = """
import functools
import pytest

KEEP = []


@functools.lru_cache(maxsize=None)
def table():
    return bytearray(30 * 2**20)


@pytest.fixture(scope="session")
def shared():
    return bytearray(40 * 2**20)


@pytest.fixture
def frame():
    b = bytearray(80 * 2**20)
    yield b
    del b


def test_appends():
    KEEP.append(bytearray(10 * 2**20))


def test_fixture(frame):
    assert len(frame) == 80 * 2**20


def test_clean():
    data = bytearray(20 * 2**20)
    del data


def test_shared_first(shared):
    assert len(shared) == 40 * 2**20


def test_shared_again(shared):
    assert len(shared) == 40 * 2**20

"""


def tables_of(result: pytest.RunResult) -> dict[str, object]:
    return {t.nodeid.split("::")[-1]: t for t in parse_tables(result.stdout.str())}


def test_fixtures_teardown_and_retained_memory_in_the_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--memline", "--memline-tables=all", "-p", "no:xdist")
    result.assert_outcomes(passed=5)
    t = tables_of(result)

    # a test that keeps 10 MiB in a module list: retained ~10 MiB
    assert t["test_appends"].retained == pytest.approx(10, abs=2)
    assert t["test_appends"].fixtures == pytest.approx(0, abs=2)

    # an 80 MiB fixture: at setup, released by the teardown, nothing left; the body's own
    # table does not count it
    f = t["test_fixture"]
    assert f.fixtures == pytest.approx(80, abs=3)
    assert f.teardown == pytest.approx(-80, abs=3)
    assert f.retained == pytest.approx(0, abs=2)
    assert f.peak_growth == pytest.approx(0, abs=2)

    # a session fixture: charged once, to the test that set it up, and named there
    first, again = t["test_shared_first"], t["test_shared_again"]
    assert first.fixtures == pytest.approx(40, abs=3)
    assert first.retained == pytest.approx(40, abs=3)
    assert any(n.startswith("wider-scoped fixtures set up for this test") and "shared (session, +40" in n for n in first.notes), first.notes
    assert again.fixtures == pytest.approx(0, abs=2)
    assert not any(n.startswith("wider-scoped fixtures set up") for n in again.notes)
    # the last test: the session's fixtures are torn down after it, after its own reading:
    # not counted in its teardown or retained figures, and its header says what they released
    assert again.teardown == pytest.approx(0, abs=2)
    assert again.retained == pytest.approx(0, abs=2)
    assert any(n.startswith("wider-scoped fixtures torn down after this test: -40") for n in again.notes), again.notes

    # freed within the body: nothing left
    assert t["test_clean"].retained == pytest.approx(0, abs=2)

    # the top retainers: the module list's test, not the session fixture's (charged, not left)
    out = result.stdout.str().splitlines()
    start = next(i for i, line in enumerate(out) if "by memory left after teardown" in line)
    listed = [line.split()[-1] for line in out[start + 1 :] if line.startswith(" ") and "MiB" in line]
    assert listed[0] == "test_suite.py::test_appends"
    assert "test_suite.py::test_shared_first" not in listed


LIMITED = """
import functools
import pytest

KEEP = []


@functools.lru_cache(maxsize=None)
def table():
    return bytearray(30 * 2**20)


def test_first():
    # the first test of a process pays one-time costs (up to a few MiB seen here): the
    # measured tests come after it
    pass


@pytest.mark.mem_limit(leak="5MiB")
def test_keeps_ten():
    KEEP.append(bytearray(10 * 2**20))


@pytest.mark.mem_limit(leak="5MiB")
def test_keeps_one():
    KEEP.append(bytearray(1 * 2**20))


def test_ruled():
    KEEP.append(bytearray(10 * 2**20))


def test_cache_once():
    assert len(table()) == 30 * 2**20
"""


def test_the_leak_limit_both_ways_from_a_marker_and_the_config(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.memline]\nleak_limit = "50MiB"\n\n'
        '[[tool.memline.limits]]\nmatch = "*::test_ruled"\nleak_limit = "4MiB"\n\n'
        '[[tool.memline.limits]]\nmatch = "*::test_cache_once"\nleak_limit = "8MiB"\n'
    )
    pytester.makepyfile(test_limited=LIMITED)
    result = pytester.runpytest_subprocess("--memline", "-p", "no:xdist")
    # over: an error at teardown (the test's own outcome stands), with the limit's origin
    result.assert_outcomes(passed=5, errors=3)
    out = result.stdout.str()
    (line,) = [l for l in report_of(out, "ERROR at teardown of test_keeps_ten") if l.startswith("memline:")]
    assert line.startswith("memline: test left 1") and line.endswith(
        " MiB resident after teardown, over the leak limit of 5 MiB (@pytest.mark.mem_limit)"
    )
    assert float(line.split()[3]) == pytest.approx(10, abs=2)
    (line,) = [l for l in report_of(out, "ERROR at teardown of test_ruled") if l.startswith("memline:")]
    assert "over the leak limit of 4 MiB (pyproject.toml [[tool.memline.limits]] #1 (match = '*::test_ruled'))" in line
    # a cache filled once is what the one figure sees: the leak check (below) tells them apart
    assert "ERROR at teardown of test_cache_once" in out
    # under the limit: passes
    assert "test_keeps_one" not in out.split("short test summary info")[-1]
    assert "memline: 5 tests traced, 3 over budget" in out


CHECKED = """
import functools
import pytest

KEEP = []


@functools.lru_cache(maxsize=None)
def table():
    return bytearray(30 * 2**20)


@pytest.mark.mem_limit(leak="5MiB", leak_runs=3)
def test_appends_every_call():
    KEEP.append(bytearray(10 * 2**20))


@pytest.mark.mem_limit(leak="5MiB", leak_runs=3)
def test_fills_a_cache_once():
    assert len(table()) == 30 * 2**20


def test_after():
    # the leak check's repetitions ran in a fork: this process kept only the first run's
    assert len(KEEP) == 1
"""


def test_the_leak_check_confirms_a_leak_and_clears_a_cache(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checked=CHECKED)
    result = pytester.runpytest_subprocess("--memline", "--memline-tables=all", "-p", "no:xdist")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    report = report_of(out, "test_appends_every_call")
    assert report[0].startswith("memline: the test body retained at least ")
    assert report[0].endswith(" in each of 3 more runs, over the leak limit of 5 MiB (@pytest.mark.mem_limit)") or (
        "in each of 3 more runs (" in report[0] and report[0].endswith("over the leak limit of 5 MiB (@pytest.mark.mem_limit)")
    )
    # the failure section's table, made at the call, has the teardown's figures too
    (section,) = parse_tables("\n".join(report))
    assert section.retained == pytest.approx(10, abs=2) and len(section.leak_runs) == 3
    t = tables_of(result)
    leak = t["test_appends_every_call"].leak_runs
    assert len(leak) == 3 and all(v == pytest.approx(10, abs=1.5) for v in leak), leak
    cache = t["test_fills_a_cache_once"]
    assert len(cache.leak_runs) == 3 and all(abs(v) <= 1 for v in cache.leak_runs), cache.leak_runs
    # the first run filled the cache: its one figure shows it, the check does not fail it
    assert cache.retained == pytest.approx(30, abs=2)


LAST_OF_ITS_MODULE = """
import pytest

KEEP = []


@pytest.fixture(scope="module")
def table():
    return bytearray(40 * 2**20)


def test_reads(table):
    assert len(table) == 40 * 2**20


@pytest.mark.mem_limit(leak="5MiB")
def test_leaks_last(table):
    KEEP.append(bytearray(10 * 2**20))
"""


def test_the_last_test_of_a_module_is_judged_without_the_module_fixtures_teardown(
    pytester: pytest.Pytester,
) -> None:
    """The module's 40 MiB fixture is torn down in the teardown of its last test: that test's
    10 MiB leak must still show (and fail its leak limit), not come out as -30 MiB."""
    pytester.makepyfile(test_last=LAST_OF_ITS_MODULE)
    for args in ([], ["-n", "2"]):
        result = pytester.runpytest_subprocess(
            "--memline", "--memline-tables=all", "-p", "no:randomly", "--memline-json=out.json", *args
        )
        # over the leak limit: an error at its teardown (see the test above)
        result.assert_outcomes(passed=2, errors=1)
        result.stdout.fnmatch_lines(["*test left 1*.* MiB resident after teardown, over the leak limit of 5 MiB*"])
        doc = json.loads((pytester.path / "out.json").read_text())
        last = doc["tests"]["test_last.py::test_leaks_last"]
        around = last["table"]["around"]
        # (under xdist it may have set up the module fixture itself: charged to it, not left)
        assert around["left"] / MIB == pytest.approx(10, abs=2), args
        if not args:  # (under xdist the two tests may run on different workers)
            assert around["released"] / MIB == pytest.approx(-40, abs=3)
            by_test = {e["test"]: e for e in doc["session"]}
            entry = by_test["test_last.py::test_leaks_last"]
            # the timeline keeps the process's RSS: the module fixture is gone from it
            assert (entry["after_teardown"] - entry["before_setup"]) / MIB == pytest.approx(-30, abs=3)


def test_json_junit_timeline_and_xdist_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "--memline", "-n", "2", "--memline-json=out.json", "--junitxml=junit.xml"
    )
    result.assert_outcomes(passed=5)
    doc = json.loads((pytester.path / "out.json").read_text())
    session = doc["session"]
    assert sorted(e["test"].split("::")[-1] for e in session) == sorted(
        ["test_appends", "test_fixture", "test_shared_first", "test_shared_again", "test_clean"]
    )
    assert {e["worker"] for e in session} <= {"gw0", "gw1"} and all(e["worker"] for e in session)
    by_test = {e["test"].split("::")[-1]: e for e in session}
    fx = by_test["test_fixture"]
    assert (fx["after_call"] - fx["before_setup"]) / MIB == pytest.approx(80, abs=3)
    assert (fx["after_teardown"] - fx["before_setup"]) / MIB == pytest.approx(0, abs=2)
    test = doc["tests"]["test_suite.py::test_appends"]
    assert test["retained"] / MIB == pytest.approx(10, abs=2)
    around = test["table"]["around"]
    assert around["retained"] == test["retained"] and around["left"] == test["retained"]
    shared = doc["tests"]["test_suite.py::test_shared_first"]["table"]["around"]
    assert [w["fixture"] for w in shared["wider"] if w["growth"] > MIB] == ["shared"]
    assert doc["top_retainers"][0]["test"] == "test_suite.py::test_appends"

    props = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
    }
    assert int(props["test_appends"]["memline_retained"]) / MIB == pytest.approx(10, abs=2)


def test_the_baseline_keeps_the_retained_memory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    for _ in range(2):
        pytester.runpytest_subprocess("--memline", "--memline-save", "-p", "no:xdist").assert_outcomes(passed=5)
    entry = json.loads((pytester.path / ".memline" / "baseline.json").read_text())["tests"]["test_suite.py::test_appends"]
    assert len(entry["retained"]) == 2
    assert all(r / MIB == pytest.approx(10, abs=2) for r in entry["retained"])


def test_heap_metric_retained_bytes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_heap="""
        KEEP = []

        def test_keeps():
            KEEP.append(b"x" * (10 * 2**20))

        def test_frees():
            data = b"x" * (10 * 2**20)
            del data
        """
    )
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-metric=heap", "--memline-tables=all", "-p", "no:xdist"
    )
    result.assert_outcomes(passed=2)
    t = tables_of(result)
    # the heap is exact: 10 MiB plus the list's slot, within 0.1 MiB
    assert t["test_keeps"].retained == pytest.approx(10, abs=0.1)
    assert t["test_frees"].retained == pytest.approx(0, abs=0.1)


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ('leak="-1MiB"', "(leak='-1MiB'): "),
        ('leak="lots"', "(leak='lots'): \"lots\": not a size"),
        ("leak_runs=0", "(leak_runs=0): expected a whole number from 1 to 20"),
        ("leak_runs=21", "(leak_runs=21): expected a whole number from 1 to 20"),
        ('leak_runs="3"', "(leak_runs='3'): expected a whole number from 1 to 20"),
    ],
)
def test_bad_leak_markers(pytester: pytest.Pytester, marker: str, error: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.mem_limit({marker})
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--memline", "-p", "no:xdist")
    result.assert_outcomes(errors=1)  # at setup, where the marker is read
    assert f"test_x: @pytest.mark.mem_limit{error}" in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "pyproject", "error"),
    [
        (["--memline-leak-runs=0"], "", "argument --memline-leak-runs: '0' is out of range; expected 1 to 20"),
        (["--memline-leak-runs=99"], "", "argument --memline-leak-runs: '99' is out of range; expected 1 to 20"),
        ([], "[tool.memline]\nleak_runs = 0\n", "[tool.memline] leak_runs = 0: expected a whole number from 1 to 20"),
        ([], '[tool.memline]\nleak_limit = "-2MiB"\n', '[tool.memline] leak_limit = "-2MiB": a size cannot be negative'),
        (
            [],
            '[[tool.memline.limits]]\nmatch = "*"\nleak_runs = 50\n',
            "[[tool.memline.limits]] #1 leak_runs = 50: expected a whole number from 1 to 20",
        ),
    ],
)
def test_bad_leak_settings(pytester: pytest.Pytester, args: list[str], pyproject: str, error: str) -> None:
    if pyproject:
        pytester.makepyprojecttoml(pyproject)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--memline", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert error in result.stderr.str(), result.stderr.str()


def test_isolated_bodies_keep_what_they_leave_and_the_check_still_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checked=CHECKED.replace("assert len(KEEP) == 1", "assert len(KEEP) == 0"))
    result = pytester.runpytest_subprocess(
        "--memline", "--memline-isolate=fork", "--memline-tables=all", "-p", "no:xdist"
    )
    result.assert_outcomes(passed=2, failed=1)
    t = tables_of(result)
    appends = t["test_appends_every_call"]
    # the body ran in a fork: this process kept nothing of it
    assert appends.retained == pytest.approx(0, abs=2) and appends.teardown is None
    assert any(n.startswith("the body ran in a fork") for n in appends.notes)
    assert len(appends.leak_runs) == 3 and all(v == pytest.approx(10, abs=1.5) for v in appends.leak_runs)
