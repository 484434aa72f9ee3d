"""The README stays true to the code: every option it names exists and every option exists in
it, its `[tool.memline]` examples are accepted by the real config parser, and the demo's
pyproject.toml too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_memline import _keys, _memline

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
OPTION = re.compile(r"--(?:no-)?memline(?:-[a-z]+)*")


def registered_options() -> set[str]:
    """The options in the memline group of a real `pytest --help` (a subprocess: the help text
    is what a user reads)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:randomly"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT / "examples",
    ).stdout
    group = out.split("(pytest-memline):", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^  (--[a-z-]+)", group, re.M))


def test_readme_names_exactly_the_registered_options() -> None:
    registered = registered_options()
    assert {"--memline", "--no-memline", "--memline-save", "--memline-compare"} <= registered
    documented = set(OPTION.findall(README))
    assert documented - registered == set(), "the README names options that do not exist"
    assert registered - documented == set(), "options missing from the README"


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def known_keys(table_header: str) -> set[str]:
    """The keys the real parser knows in a table, from its error for an unknown one."""
    with pytest.raises(ValueError, match="unknown key") as info:
        parse(f"{table_header}\nmatch = 'x'\nno_such_key = 1\n", "pyproject.toml")
    return set(str(info.value).split("known keys: ", 1)[1].split(", "))


def parse(text: str, file: str) -> dict | None:
    return _memline.parse_pyproject(text, file, *_keys.schema())


def test_the_parser_knows_the_keys_of_the_table() -> None:
    assert known_keys("[tool.memline]") == {k.name for k in _keys.CONFIG_KEYS} | {"limits"}
    assert known_keys("[[tool.memline.limits]]") == {k.name for k in _keys.RULE_KEYS} | {"match", "fixture"}


def test_readme_config_examples_are_accepted_and_complete() -> None:
    blocks = [b for b in toml_blocks(README) if "[tool.memline" in b]
    assert blocks, "the README has no [tool.memline] example"
    for block in blocks:
        assert parse(block, "README.md"), block
    # the reference block (under "Configuration") shows every key the parser knows
    reference = next(b for b in blocks if "[[tool.memline.limits]]" in b)
    parsed = parse(reference, "README.md") or {}
    assert set(parsed) == known_keys("[tool.memline]")
    # a test's rule and a fixture's: between them every key of an entry
    assert set().union(*parsed["limits"]) == known_keys("[[tool.memline.limits]]")


def test_demo_pyproject_is_valid() -> None:
    text = (ROOT / "examples" / "pyproject.toml").read_text(encoding="utf-8")
    assert parse(text, "examples/pyproject.toml")
