"""Issue 5, point 9 and the hostile inputs: unreadable sources, odd sources, very long tests,
very many tests, no exact peak or no /proc at all, and a fuzz test of the Rust parsers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from compat_util import MIB, assert_mib, need, pytester, row, run, traced  # noqa: F401
from memtables import table_of

NO_VIEW = "no per-line view: "


def test_unreadable_sources_are_budget_checked_on_totals(pytester: pytest.Pytester) -> None:
    # code from exec, a test made by a factory with exec
    pytester.makepyfile(
        test_exec='''
        import pytest

        exec(compile("def test_from_exec():\\n    a = bytearray(6 * 2**20)\\n", "<generated>", "exec"))


        def make(n):
            ns = {}
            exec(f"def test_made():\\n    a = bytearray({n} * 2**20)\\n", ns)
            return ns["test_made"]


        test_factory = pytest.mark.mem_limit("2MiB")(make(7))
        test_factory_lines = pytest.mark.mem_limit(line="3MiB")(make(4))
        '''
    )
    # a .pyc-only module
    src = pytester.path / "compiled" / "mod_pyc.py"
    src.parent.mkdir()
    src.write_text("import pytest\n\n\n@pytest.mark.mem_limit('1MiB')\ndef test_compiled():\n    a = bytearray(5 * 2**20)\n")
    subprocess.run([sys.executable, "-m", "compileall", "-b", "-q", str(src)], check=True)
    src.unlink()
    # a module imported from a zip file: its loader has the source
    with zipfile.ZipFile(pytester.path / "zipped.zip", "w") as z:
        z.writestr("zipped_mod.py", "def test_zipped():\n    a = bytearray(3 * 2**20)\n    assert a\n")
    pytester.makepyfile(
        test_imported="""
        import os
        import sys

        here = os.path.dirname(__file__)
        sys.path[:0] = [os.path.join(here, "compiled"), os.path.join(here, "zipped.zip")]

        from mod_pyc import test_compiled
        from zipped_mod import test_zipped
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_factory _*",
            "memline: test peak RSS growth of * MiB is over the test limit of 2 MiB (@pytest.mark.mem_limit)",
            "*_ test_factory_lines _*",
            # the lines were measured, only their text is missing: the line budget holds
            "memline: line 2 grew RSS by * MiB, over the line limit of 3 MiB (@pytest.mark.mem_limit)",
            "*_ test_compiled _*",
            "memline: test peak RSS growth of * MiB is over the test limit of 1 MiB (@pytest.mark.mem_limit)",
        ]
    )
    tests = traced(pytester)
    cases = {
        "test_exec.py::test_from_exec": ("the source of <generated> is not available", 6),
        "test_exec.py::test_factory": ("the source of <string> is not available", 7),
        "test_exec.py::test_factory_lines": ("the source of <string> is not available", 4),
        "test_imported.py::test_compiled": ("/compiled/mod_pyc.py is not available", 5),
    }
    for nodeid, (why, mib) in cases.items():
        test = tests[nodeid]
        assert test["table"]["lines"] == []
        [note] = test["table"]["notes"]
        assert note.startswith(NO_VIEW + "the source of ") and note.endswith(why), note
        assert_mib(test["peak_growth"], mib)
    result.stdout.fnmatch_lines(["test_exec.py::test_factory  (test_made in <string>)", "*", f"note: {NO_VIEW}the source of <string> is not available"])
    # the zipped module's source comes from its loader: a full table
    assert_mib(row(tests["test_imported.py::test_zipped"], "a = bytearray(3 * 2**20)")["increment"], 3)


def test_odd_sources(pytester: pytest.Pytester) -> None:
    (pytester.path / "test_latin.py").write_bytes(
        b'# -*- coding: latin-1 -*-\ndef test_latin():\n    s = "caf\xe9"\n    a = bytearray(5 * 2**20)\n    assert len(s) == 4\n'
    )
    (pytester.path / "test_tabs.py").write_text("def test_tabs():\n\tx = 1\n\tif x:\n\t\ta = bytearray(4 * 2**20)\n\tassert a\n")
    (pytester.path / "test_oneline.py").write_text("def test_one(): x = [0] * 10**6\n")
    long_tail = "x" * 20_000
    (pytester.path / "test_long.py").write_text(f'def test_long_line():\n    a = bytearray(3 * 2**20); b = "{long_tail}"\n    assert a\n')
    result = run(pytester, "--memline-tables=all")
    result.assert_outcomes(passed=4)
    tests = traced(pytester)
    assert_mib(row(tests["test_latin.py::test_latin"], "a = bytearray(5 * 2**20)")["increment"], 5)
    assert row(tests["test_latin.py::test_latin"], 's = "café"')["occurrences"] == 1  # decoded as latin-1
    assert_mib(row(tests["test_tabs.py::test_tabs"], "a = bytearray(4 * 2**20)")["increment"], 4)
    one = tests["test_oneline.py::test_one"]
    assert_mib(row(one, "def test_one(): x = [0] * 10**6")["increment"], 8 * 10**6 / MIB)
    long = tests["test_long.py::test_long_line"]["table"]["lines"][1]
    assert long["contents"].endswith(long_tail + '"')  # kept whole in the data
    assert_mib(long["increment"], 3)
    out = result.stdout.str()
    assert "café" in out
    assert max(len(line) for line in out.splitlines()) < 400  # cut on the terminal


def test_ten_million_line_events(pytester: pytest.Pytester) -> None:
    """A test that runs 10^7 lines finishes and the trace costs no memory per event."""
    pytester.makepyfile(
        test_long="""
        def test_many_lines():
            total = 0
            for i in range(5_000_000):
                total += i
            assert total
        """
    )
    result = run(pytester, "--memline-peak=off")  # the peak costs a syscall more per line
    result.assert_outcomes(passed=1)
    test = traced(pytester)["test_long.py::test_many_lines"]
    assert row(test, "for i in range(5_000_000):")["occurrences"] == 5_000_001
    assert row(test, "total += i")["occurrences"] == 5_000_000
    assert abs(test["peak_growth"]) < MIB  # flat: nothing is kept per line event


def test_ten_thousand_tests_keep_the_plugin_flat(pytester: pytest.Pytester) -> None:
    """RSS growth between the 1,000th and the 10,000th test, with and without memline: pytest
    itself keeps every report (about 2.7 KiB a test here); memline adds about 0.3 KiB a test
    (measured: 289 bytes on 3.12 without --junitxml, 417 with the JUnit property it then
    keeps on every report; the rest was not traced to its source: memline keeps no object
    per test after its report, and CPython's per-code-object instrumentation on 3.12 is one
    candidate). The bound is 1 KiB a test."""
    pytester.makeconftest(
        """
        import ctypes
        import gc
        import os

        COUNT = [0]
        MARKS = {}


        def rss():
            # what is kept, not garbage awaiting a collection or free memory malloc holds (memline
            # trims malloc before each test; plain pytest does not)
            gc.collect()
            ctypes.CDLL(None).malloc_trim(0)
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


        def pytest_runtest_logfinish(nodeid, location):
            COUNT[0] += 1
            if COUNT[0] in (1000, 10000):
                MARKS[COUNT[0]] = rss()


        def pytest_terminal_summary(terminalreporter):
            terminalreporter.write_line(f"GROWTH {MARKS[10000] - MARKS[1000]}")
        """
    )
    pytester.makepyfile(test_many="".join(f"def test_{i}():\n    pass\n\n\n" for i in range(10_000)))

    def growth(*args: str) -> int:
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=10_000)
        return int(next(line for line in result.stdout.lines if line.startswith("GROWTH")).split()[1])

    plain = growth()
    traced_growth = growth("--memline")
    assert traced_growth - plain < 9_000 * 1024, (plain, traced_growth)


def test_portable_reader_has_no_exact_peak(pytester: pytest.Pytester) -> None:
    """The non-Linux path (sysinfo) forced on Linux: no exact peak, said once in the header;
    Peak falls back to what the line boundaries show."""
    pytester.makepyfile(
        test_p="""
        def transient():
            x = bytearray(40 * 2**20)
            return len(x)


        def test_portable():
            a = bytearray(8 * 2**20)
            n = transient()
            assert a and n
        """
    )
    result = run(pytester, "--memline-reader=portable")
    result.assert_outcomes(passed=1)
    note = "exact in-line peak needs Linux procfs; Peak falls back to Increment"
    result.stdout.fnmatch_lines([f"memline: on (backend *, RSS via portable, no exact peak: {note})"])
    test = traced(pytester)["test_p.py::test_portable"]
    assert test["table"]["exact_peak"] is False
    assert test["table"]["notes"] == [note]
    a = row(test, "a = bytearray(8 * 2**20)")
    assert_mib(a["increment"], 8)
    assert a["peak"] == a["increment"]
    n = row(test, "n = transient()")
    assert_mib(n["peak"], 0)  # the 40 MiB inside the call is invisible without the kernel's peak
    assert_mib(test["peak_growth"], 8)


def test_peak_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_off():\n    a = bytearray(6 * 2**20)\n")
    result = run(pytester, "--memline-peak=off")
    result.stdout.fnmatch_lines(["memline: on (backend *, RSS via procfs, no exact peak: in-line peak turned off*"])
    test = traced(pytester)["test_off.py::test_off"]
    assert_mib(row(test, "a = bytearray(6 * 2**20)")["peak"], 6)


def _can_unshare() -> bool:
    """Root, unshare, and a system where a private mount namespace can be made (not inside a
    chroot, where `unshare -m` fails)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


NEEDS_ROOT = pytest.mark.skipif(
    not _can_unshare(),
    reason="simulating a container needs root and a private mount namespace (unshare -m)",
)


def in_namespace(pytester: pytest.Pytester, setup: str, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest with memline in a private mount namespace, after `setup` (sh, $$ is pytest's pid)."""
    cmd = " ".join([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "--memline", *args])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{setup} && exec {cmd}"],
        capture_output=True, text=True, timeout=120, cwd=pytester.path,
    )


TRANSIENT = """
def transient():
    x = bytearray(40 * 2**20)
    return len(x)


def test_transient():
    a = bytearray(5 * 2**20)
    n = transient()
    assert a and n
"""


@NEEDS_ROOT
@pytest.mark.parametrize(
    ("mask", "why"),
    [
        ("mount --bind -o ro {file} /proc/$$/clear_refs", "/proc/self/clear_refs is not writable*"),
        # masked with /dev/null: writes succeed and reset nothing
        ("mount --bind /dev/null /proc/$$/clear_refs", "writing to /proc/self/clear_refs does not reset the peak here*"),
    ],
    ids=["read-only", "dev-null"],
)
def test_clear_refs_unusable_falls_back(pytester: pytest.Pytester, mask: str, why: str) -> None:
    pytester.makepyfile(test_t=TRANSIENT)
    (pytester.path / "ro").write_text("")
    proc = in_namespace(pytester, mask.format(file=pytester.path / "ro"), "--memline-tables=all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("memline: on") for line in lines) == 1
    header = next(line for line in lines if line.startswith("memline: on"))
    from fnmatch import fnmatch

    assert fnmatch(header, f"memline: on (backend *, RSS via procfs, no exact peak: {why}; Peak falls back to Increment)"), header
    assert "exact in-line peak:" not in proc.stdout
    assert "RSS of the whole process, peak sampled at line boundaries" in proc.stdout
    # no false peak from before the test: the transient 40 MiB is simply not seen
    transient = table_of(proc.stdout, "test_transient").row("n = transient()")
    assert transient.peak is not None and transient.peak < 2, transient


@NEEDS_ROOT
def test_no_proc_at_all_runs_the_tests_untraced(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_t=TRANSIENT)
    proc = in_namespace(pytester, "mount -t tmpfs none /proc")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert (
        "memline: off: could not read the resident set size of this process (is /proc mounted?); "
        "tests run untraced, no budgets or baselines checked"
    ) in proc.stdout.splitlines()
    assert "1 passed" in proc.stdout


# -- fuzzing the Rust parsers: an error is a ValueError (or its kin), never a Rust panic ------

ALLOWED = (ValueError, OverflowError, FileNotFoundError)


def _no_panic(call: object, *args: object) -> None:
    try:
        call(*args)  # type: ignore[operator]
    except ALLOWED:
        pass
    except BaseException as exc:  # pyo3_runtime.PanicException derives from BaseException
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc} for {args!r}") from exc


def test_fuzz_sizes_config_and_baselines(tmp_path: Path) -> None:
    hypothesis = need("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pytest_memline import _keys, _memline

    fuzz = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    units = st.sampled_from(["", "B", "b", "KB", "KiB", "MiB", "mib", "GB", "GiB", "TiB", "TB", "%", "PiB", "iB", " MiB"])
    numbers = st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(alphabet="0123456789.-+eE_ ", max_size=30),
    )
    sizes = st.one_of(st.text(max_size=40), st.builds(lambda n, u: n + u, numbers, units))

    @fuzz
    @given(st.one_of(sizes, st.integers(min_value=-(2**80), max_value=2**80), st.floats(), st.none(), st.booleans()))
    def sizes_parse_or_refuse(value: object) -> None:
        _no_panic(_memline.parse_size, value)
        if isinstance(value, str):
            _no_panic(_memline.parse_percent, value)

    toml_values = st.recursive(
        st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20), sizes),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=8,
    )
    keys = st.sampled_from(
        ["enabled", "test_limit", "line_limit", "tables", "top", "peak", "metric", "baseline", "tolerance", "noise_floor", "include", "limits", "match", "unknown"]
    )

    def toml_of(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value) if not isinstance(value, float) or value == value else "nan"
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, list):
            return "[" + ", ".join(toml_of(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {toml_of(v)}" for k, v in value.items()) + "}"
        raise TypeError(value)

    @fuzz
    @given(st.dictionaries(keys, toml_values, max_size=6), st.lists(st.dictionaries(keys, toml_values, max_size=4), max_size=2), st.text(max_size=200))
    def config_parses_or_refuses(table: dict, rules: list, junk: str) -> None:
        text = "[tool.memline]\n" + "".join(f"{k} = {toml_of(v)}\n" for k, v in table.items())
        for rule in rules:
            text += "\n[[tool.memline.limits]]\n" + "".join(f"{k} = {toml_of(v)}\n" for k, v in rule.items())
        _no_panic(_memline.parse_pyproject, text, "pyproject.toml", *_keys.schema())
        _no_panic(_memline.parse_pyproject, junk, "pyproject.toml", *_keys.schema())
        _no_panic(_memline.parse_pyproject, text + junk, "pyproject.toml", *_keys.schema())

    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False), st.text(max_size=10)),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
        max_leaves=20,
    )
    row_json = st.fixed_dictionaries(
        {"line": json_values, "contents": json_values, "increment": json_values, "peak": json_values, "occurrences": json_values, "mem_usage": json_values}
    )
    entry_json = st.fixed_dictionaries(
        {"outcome": json_values, "function": json_values, "filename": json_values, "peak_growth": json_values, "lines": st.lists(row_json, max_size=3)}
    )
    baseline_json = st.fixed_dictionaries(
        {
            "format": st.sampled_from(["pytest-memline-baseline", "x"]),
            "version": st.one_of(st.just(1), json_values),
            "metric": st.one_of(st.just("rss"), json_values),
            "python": json_values,
            "platform": json_values,
            "tests": st.one_of(st.dictionaries(st.text(max_size=10), entry_json, max_size=3), json_values),
        }
    )
    path = tmp_path / "baseline.json"

    def load(data: bytes) -> None:
        path.write_bytes(data)
        try:
            base = _memline.Baseline.load(str(path))
        except ALLOWED:
            return
        for nodeid in base.test_ids():
            entry = base.entry_json(nodeid)
            assert entry is not None
            _no_panic(base.compare, nodeid, entry, tolerance=0.1, noise_floor=2**20)

    @fuzz
    @given(st.one_of(st.binary(max_size=300), baseline_json.map(lambda d: json.dumps(d).encode()), json_values.map(lambda d: json.dumps(d).encode())))
    def baselines_load_or_refuse(data: bytes) -> None:
        _no_panic(load, data)

    sizes_parse_or_refuse()
    config_parses_or_refuses()
    baselines_load_or_refuse()
    _no_panic(_memline.Baseline.load, str(tmp_path / "missing.json"))
    assert hypothesis.__version__


def test_started_by_a_bigger_process_keeps_the_exact_peak(pytester: pytest.Pytester) -> None:
    """ru_maxrss of a process never drops below the RSS of the image it was exec'd from, and
    clear_refs does not reset that part: pytest started by a bigger process (tox, an IDE, an
    xdist controller) must still see each line's own peak, not the parent's size."""
    pytester.makepyfile(test_t=TRANSIENT)
    launcher = (
        "import subprocess, sys\n"
        "ballast = bytearray(400 * 2**20)\n"
        "sys.exit(subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:randomly', '-p', 'no:cacheprovider',"
        " '--memline', '--memline-json=memline.json']).returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=120, cwd=pytester.path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RSS via procfs, exact in-line peak)" in proc.stdout
    test = traced(pytester)["test_t.py::test_transient"]
    assert_mib(row(test, "a = bytearray(5 * 2**20)")["peak"], 5)
    assert_mib(row(test, "n = transient()")["peak"], 40)
    assert_mib(row(test, "assert a and n")["peak"], 0)
    assert_mib(test["peak_growth"], 45)
