"""The Markdown report cannot be turned against the pull request it is posted to, and stays
under GitHub's comment limit; the terminal summary cannot be driven by what a test contains.

The report is rendered with markdown-it-py (CommonMark plus GFM tables and strikethrough, the
parts of GitHub's renderer that matter here): hostile test ids and source lines must come out
as text inside code, in the right table cell, with no HTML element of their own. GitHub links
``@name`` mentions in rendered text but not inside code, so every ``@`` must land in ``<code>``.
"""

from __future__ import annotations

import json
import re

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is in the test extra")

from pytest_memline._report import MAX_MARKDOWN, _bounded  # noqa: E402
from pytest_memline._units import md_code, md_text, printable  # noqa: E402

HOSTILE = [
    "a|b",
    "x` <img src=x onerror=alert(1)> `y",
    "``double`` and `single`",
    "@octocat please look",
    "[link](https://example.com) **bold** _it_ ~~gone~~ &amp;",
    "`",
    " ",
    "tab\there\x1b[31mred\rback",
]


def render(text: str) -> str:
    md = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    return md.render(text)


def outside_code(html: str) -> str:
    return re.sub(r"<code>.*?</code>", "", html, flags=re.S)


@pytest.mark.parametrize("text", HOSTILE)
def test_a_code_span_holds_anything_in_one_table_cell(text: str) -> None:
    html = render(f"| a | b |\n| --- | --- |\n| {md_code(text)} | after |\n")
    cells = re.findall(r"<td>(.*?)</td>", html, re.S)
    assert len(cells) == 2 and cells[1] == "after", html
    assert cells[0].startswith("<code>") and cells[0].endswith("</code>"), html
    assert "<img" not in html and "<a " not in html and "<strong>" not in html
    # what the reader sees is the text, control characters shown as escapes
    code = cells[0].removeprefix("<code>").removesuffix("</code>")
    unescaped = code.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    unescaped = unescaped.replace("&amp;", "&")
    assert unescaped.strip() == printable(text).strip() or not text.strip()


@pytest.mark.parametrize("text", HOSTILE)
def test_plain_text_is_inert_and_mentions_are_in_code(text: str) -> None:
    html = render(f"- item: {md_text(text)}\n")
    assert html.count("<li>") == 1
    rest = outside_code(html)
    assert "@" not in rest, html
    for tag in ("<img", "<a ", "<strong>", "<em>", "<s>", "<del>"):
        assert tag not in html, html
    assert "\x1b" not in html and "\r" not in html


def test_printable_shows_control_characters() -> None:
    assert printable("a\x1b[2Jb\rc\nd\te") == "a\\x1b[2Jb\\rc\\nd    e"
    assert printable("plain (x) = 1") == "plain (x) = 1"


def test_the_report_is_cut_under_the_comment_limit() -> None:
    short = "## report\n\nfine"
    assert _bounded(short) == short
    huge = "\n".join(f"| row {i} | `{'x' * 50}` |" for i in range(5000))
    cut = _bounded(huge)
    assert len(cut) <= MAX_MARKDOWN
    assert cut.endswith("the JSON report (--memline-json) has the whole run.*\n")
    body = cut.rsplit("\n\n*Cut at", 1)[0]
    assert body.splitlines()[-1].endswith("` |"), "cut at a line boundary"


HOSTILE_SUITE = '''
import pytest

IDS = ["pipe|id", "tick`<img src=x>`", "at@octocat", "amp&lt;[x](y)"]


@pytest.mark.parametrize("n", [1, 2, 3, 4], ids=IDS)
def test_hostile(n):
    data = bytearray(n * 2**20)  # `</code><img src=x>` | @octocat
    assert data
'''


def test_a_session_with_hostile_ids_writes_a_safe_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_h=HOSTILE_SUITE)
    pytester.makepyprojecttoml('[tool.memline]\nline_limit = "1.5MiB"\n')
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--memline", "--memline-markdown=r.md", "--memline-json=r.json"
    )
    result.assert_outcomes(passed=1, failed=3)  # 2, 3 and 4 MiB lines over a 1.5 MiB line limit
    text = (pytester.path / "r.md").read_text()
    html = render(text)
    assert "<img" not in html and "<a " not in html
    assert "@" not in outside_code(html), html
    # one row per top line, three cells each, whatever the ids contain
    rows = re.findall(r"<tr>\s*<td.*?</tr>", html, re.S)
    assert len(rows) == 4, html
    assert all(len(re.findall(r"<td", row)) == 3 for row in rows), html
    over = re.findall(r"<li>(.*?)</li>", html, re.S)
    assert len(over) == 3, html
    ids = json.loads((pytester.path / "r.json").read_text())["tests"]
    assert len(ids) == 4


def test_long_lists_are_summarised(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_many="""
        import pytest

        @pytest.mark.parametrize("i", range(45))
        def test_one(i):
            assert i >= 0
        """
    )
    pytester.runpytest_subprocess("-p", "no:randomly", "--memline", "--memline-save").assert_outcomes(
        passed=45
    )
    pytester.makepyfile(test_many="def test_left():\n    assert True\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--memline", "--memline-compare", "--memline-markdown=r.md"
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert out.count("  gone: ") == 20
    result.stdout.fnmatch_lines(["  ... and 25 more gone (--memline-json lists them all)"])
    md = (pytester.path / "r.md").read_text()
    gone_line = next(line for line in md.splitlines() if line.startswith("Gone from the suite:"))
    assert gone_line.count("test_many.py::test_one") == 20
    assert gone_line.endswith(", and 25 more (the JSON report (--memline-json) has them all)")


def test_control_characters_in_source_lines_do_not_reach_the_terminal(
    pytester: pytest.Pytester,
) -> None:
    # a literal ESC (clear the screen) and a backspace in a comment of the traced line
    pytester.makepyfile(
        test_esc="def test_esc():\n    data = bytearray(2**20)  # \x1b[2J\x08gone\n    assert data\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--memline", "--memline-tables=all")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "\x1b[2J" not in out and "\x08" not in out
    result.stdout.fnmatch_lines(["*data = bytearray(2?*?*20)  # ?x1b?2J?x08gone"])
