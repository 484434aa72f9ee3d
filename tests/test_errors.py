"""Bad input gets a clear error and loses nothing else: a bad marker errors its own test only;
a bad [tool.memline] or command line stops the run before any test (pytest's usage error,
exit code 4) naming the file, the key and the value."""

import sys

import pytest
from memtables import report_of, summary_of

SIZE_FORMS = (
    "a number of bytes or a number with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, "
    "GiB, TiB (powers of 1024), e.g. '60MiB', '1.5 GiB', '512KiB'"
)
USAGE = (
    "mem_limit(test, *, line, tolerance, noise_floor, metric, trace, leak, leak_runs), e.g. "
    'mem_limit("60MiB"), mem_limit("60MiB", line="5MiB"), mem_limit(line="5MiB"), '
    'mem_limit(tolerance="20%"), mem_limit(leak="1MiB", leak_runs=3) or mem_limit(trace=False)'
)

BAD_MARKERS = """
import pytest


def test_before():
    pass


@pytest.mark.mem_limit("sixty")
def test_not_a_size():
    pass


@pytest.mark.mem_limit("-5MiB")
def test_negative():
    pass


@pytest.mark.mem_limit(lines="5MiB")
def test_wrong_keyword():
    pass


@pytest.mark.mem_limit("1MiB", "2MiB")
def test_two_positional():
    pass


@pytest.mark.mem_limit("60MiB", line="sixty")
def test_bad_line_limit():
    pass


@pytest.mark.mem_limit("60MiB")
def test_after():
    data = bytearray(10 * 2**20)
"""

EXPECTED = {
    "test_not_a_size": (
        "test_bad.py::test_not_a_size: @pytest.mark.mem_limit(test='sixty'): \"sixty\": not a "
        f"size; expected {SIZE_FORMS}"
    ),
    "test_negative": (
        "test_bad.py::test_negative: @pytest.mark.mem_limit(test='-5MiB'): \"-5MiB\": a size "
        f"cannot be negative; expected {SIZE_FORMS}"
    ),
    "test_wrong_keyword": (
        "test_bad.py::test_wrong_keyword: @pytest.mark.mem_limit got unknown keyword "
        f"lines='5MiB'; accepted: {USAGE}"
    ),
    "test_two_positional": (
        "test_bad.py::test_two_positional: @pytest.mark.mem_limit takes at most one positional "
        f"argument (the test limit), got 2: ('1MiB', '2MiB'); accepted: {USAGE}"
    ),
    "test_bad_line_limit": (
        "test_bad.py::test_bad_line_limit: @pytest.mark.mem_limit(line='sixty'): \"sixty\": not "
        f"a size; expected {SIZE_FORMS}"
    ),
}


def test_bad_markers_error_their_own_test_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=BAD_MARKERS)
    result = pytester.runpytest_subprocess("--memline")
    out = result.stdout.str()
    result.assert_outcomes(passed=2, errors=len(EXPECTED))
    assert summary_of(out, "ERROR") == set(EXPECTED)
    for test, message in EXPECTED.items():
        # the whole report is the one message, printed once
        assert report_of(out, f"ERROR at setup of {test}") == [message]
    # the good tests around them ran, traced
    assert "memline: 2 tests traced, 0 over budget" in out


def run_usage_error(pytester: pytest.Pytester, *args: str) -> str:
    """Runs pytest (in process: it stops before tracing anything), expects a usage error."""
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError('ran')\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    assert "test_never_runs" not in result.stdout.str()
    assert "collected" not in result.stdout.str()
    return result.stderr.str()


@pytest.mark.parametrize(
    ("pyproject", "message"),
    [
        pytest.param(
            '[tool.memline]\ntest_limt = "60MiB"\n',
            'ERROR: memline: pyproject.toml: [tool.memline]: unknown key "test_limt"; known keys: '
            "enabled, test_limit, line_limit, leak_limit, tables, top, peak, metric, baseline, noise_floor, "
            "tolerance, samples, confirm, leak_runs, accept, missing_baseline, isolate, include, fixtures, malloc, limits",
            id="unknown-key",
        ),
        pytest.param(
            '[tool.memline]\ntest_limit = "sixty"\n',
            f'ERROR: memline: pyproject.toml: [tool.memline] test_limit = "sixty": not a size; '
            f"expected {SIZE_FORMS}",
            id="bad-size",
        ),
        pytest.param(
            '[tool.memline]\ntest_limit = "9000000TiB"\n',
            'ERROR: memline: pyproject.toml: [tool.memline] test_limit = "9000000TiB": too large '
            f"(sizes are at most 2^63 - 1 bytes, 8 EiB); expected {SIZE_FORMS}",
            id="huge-size",
        ),
        pytest.param(
            '[tool.memline]\nline_limit = "1e3MiB"\n',
            'ERROR: memline: pyproject.toml: [tool.memline] line_limit = "1e3MiB": exponents are '
            f"not accepted: write the number out, e.g. '1000MiB'; expected {SIZE_FORMS}",
            id="exponent",
        ),
        pytest.param(
            "[tool.memline]\nline_limit = -3\n",
            "ERROR: memline: pyproject.toml: [tool.memline] line_limit = -3: expected a size that "
            "is not negative",
            id="negative-size",
        ),
        pytest.param(
            '[tool.memline]\nenabled = "yes"\n',
            'ERROR: memline: pyproject.toml: [tool.memline] enabled = "yes": expected true or '
            "false",
            id="bad-bool",
        ),
        pytest.param(
            '[tool.memline]\ntables = "some"\n',
            'ERROR: memline: pyproject.toml: [tool.memline] tables = "some": expected one of '
            '"failed", "all", "none"',
            id="bad-choice",
        ),
        pytest.param(
            '[[tool.memline.limits]]\nmatch = "*"\nline_limit = "-1MiB"\n',
            'ERROR: memline: pyproject.toml: [[tool.memline.limits]] #1 line_limit = "-1MiB": a '
            f"size cannot be negative; expected {SIZE_FORMS}",
            id="bad-rule-size",
        ),
        pytest.param(
            '[[tool.memline.limits]]\nline_limit = "1MiB"\n',
            'ERROR: memline: pyproject.toml: [[tool.memline.limits]] #1: missing key "match" (a '
            'glob over test node ids, e.g. "tests/test_etl.py::*") or "fixture" (a fixture\'s name)',
            id="rule-without-match",
        ),
    ],
)
@pytest.mark.parametrize("args", [[], ["--memline"]], ids=["off", "on"])
def test_bad_config_is_a_usage_error(
    pytester: pytest.Pytester, pyproject: str, message: str, args: list[str]
) -> None:
    pytester.makepyprojecttoml(pyproject)
    stderr = run_usage_error(pytester, *args)
    assert stderr.splitlines()[0] == message


def test_toml_syntax_error_names_line_and_column(pytester: pytest.Pytester) -> None:
    # pytest reads pyproject.toml itself (for [tool.pytest]) before any plugin: its message
    # already names the file, line and column
    pytester.makepyprojecttoml("[tool.memline]\ntest_limit = 60MiB\n")
    stderr = run_usage_error(pytester, "--memline")
    assert stderr.splitlines()[0] == (
        f"ERROR: {pytester.path / 'pyproject.toml'}: Expected newline or end of document after a "
        "statement (at line 2, column 16)"
    )


def test_toml_syntax_error_seen_by_memline(pytester: pytest.Pytester) -> None:
    # with its configuration elsewhere (-c), pytest never parses the rootdir's pyproject.toml:
    # memline's own message names the file, line and column
    pytester.makepyprojecttoml("[tool.memline]\ntest_limit = 60MiB\n")
    cfg = pytester.mkdir("cfg") / "pytest.ini"
    cfg.write_text("[pytest]\n")
    stderr = run_usage_error(pytester, "-c", str(cfg), f"--rootdir={pytester.path}", "--memline")
    assert stderr.splitlines()[0] == (
        "ERROR: memline: pyproject.toml:2:14: invalid TOML: string values must be quoted, "
        "expected literal string"
    )


@pytest.mark.parametrize(
    ("arg", "error"),
    [
        ("--memline-top=-1", "argument --memline-top: '-1' is negative; expected 0 or more"),
        ("--memline-top=ten", "argument --memline-top: 'ten' is not a whole number"),
        # sizes meet signed 64-bit byte counts: refused here, not an INTERNALERROR later
        (
            "--memline-noise-floor=18446744073709551615",
            'argument --memline-noise-floor: "18446744073709551615": too large (sizes are at '
            "most 2^63 - 1 bytes, 8 EiB)",
        ),
        # argparse's own message (how it quotes the choices varies across Python versions)
        (
            "--memline-tables=some",
            "argument --memline-tables: invalid choice: 'some' (choose from ",
        ),
    ],
)
def test_bad_command_line_values(pytester: pytest.Pytester, arg: str, error: str) -> None:
    stderr = run_usage_error(pytester, "--memline", arg)
    assert any(f"error: {error}" in line for line in stderr.splitlines()), stderr


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="sys.monitoring exists on 3.12+")
def test_monitoring_backend_before_3_12(pytester: pytest.Pytester) -> None:
    stderr = run_usage_error(pytester, "--memline", "--memline-backend=monitoring")
    assert stderr.splitlines()[0] == (
        "ERROR: memline: --memline-backend=monitoring needs Python 3.12 or later "
        f"(sys.monitoring); this is Python {'.'.join(map(str, sys.version_info[:3]))}: use "
        "settrace or auto"
    )
