"""Reports for CI: a JSON file (every test's table and comparison) and a Markdown summary
(for a pull-request comment or ``$GITHUB_STEP_SUMMARY``).

JSON schema (``format`` = ``"pytest-memline-report"``, ``version`` = 1)::

    {
      "format": "pytest-memline-report", "version": 1,
      "metric": "rss", "python": "3.11.7", "platform": "linux-x86_64",
      "baseline": "/abs/path/baseline.json" | null,
      "summary": {"traced": 20, "over_budget": 1, "regressed": 1, "improved": 0,
                  "unchanged": 18, "new": 0, "gone": ["tests/test_old.py::test_x"],
                  "process_peak": 366075904 | null,   # the real peak RSS (bytes), see README
                  "worker_peaks": {"gw0": ..., "gw1": ...}},  # under xdist, else {}
      "tests": {
        "<node id>": {
          "outcome": "passed" | "failed" | "skipped",
          "peak_growth": 83886080,                 # bytes
          "violations": ["memline: line 12 ..."],  # budget failures, one line each
          "table": {... MemoryTable.to_dict() ...},
          "comparison": null | {"status": "regressed" | "improved" | "unchanged" | "new",
                                "old_peak_growth": int | null,
                                "changes": [{"line", "old_line", "contents", "what", "old", "new"}],
                                "diff": [[tag, text, regressed], ...]}
        }
      }
    }

Both files are written atomically (a temp file, then a rename) by ``_memline.write_file``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_memline._results import RunResults

from pytest_memline._gate import describe_group
from pytest_memline._preflight import count
from pytest_memline._units import md_code, md_text, mib, signed_mib

JSON_FORMAT = "pytest-memline-report"
JSON_VERSION = 1


def write_atomic(path: str, text: str) -> str:
    """Writes a report under the rules of every file memline writes (``src/files.rs``: atomic,
    never over a directory, device or FIFO, through symlinks). OSError naming the file."""
    from pytest_memline import _memline

    return _memline.write_file(path, text)


def json_report(results: RunResults) -> str:
    """Every test's table and comparison, and the run's figures."""
    from pytest_memline._gate import platform_tag, python_version

    s = results.settings
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "metric": s.metric,
        "python": python_version(),
        "platform": platform_tag(),
        "baseline": s.compare,
        "summary": dict(results.figures()),
        "tests": {nodeid: t.to_json() for nodeid, t in sorted(results.tests.items())},
        # the process's memory at each test's boundaries, in the order the tests reported
        "session": results.timeline,
        "top_retainers": [{"test": n, "left": left} for left, n in results.top_retainers()],
        # each fixture traced at setup, with its largest setup (every setup's table is in its
        # test's "table" -> "around" -> "fixtures")
        "fixtures": [
            {"fixture": f.name, "scope": f.scope, "setups": setups, "test": nodeid,
             "peak_growth": growth, "table": f.table.to_dict()}
            for setups, growth, nodeid, f in sorted(
                results.fixtures.values(), key=lambda e: (-e[1], e[3].name)
            )
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


#: GitHub takes 65,536 characters in a comment (and 1 MiB in a step summary): the report stays
#: under this, cutting its last sections with a note when a huge run would pass it.
MAX_MARKDOWN = 60_000
#: rows of the top-lines table at most (the terminal shows --memline-top of them)
MAX_TOP_ROWS = 50


def markdown_report(results: RunResults) -> str:
    """A compact summary: counts, regressions and improvements, budget failures, top lines.
    Everything that comes from the tests (ids, source lines, messages) is escaped: nothing in
    a test id or a line can add HTML, a link, a mention or a table cell to a pull request."""
    from pytest_memline._preflight import display
    from pytest_memline._results import LIST_LIMIT, counts_line

    summary = results.figures()
    changes = results.gate.biggest(10)
    top_lines = results.top_lines()[:MAX_TOP_ROWS]
    over_budget = results.over_budget
    baseline = display(results.settings.compare) if results.settings.compare else None
    full = "the JSON report (--memline-json) has them all"
    out = []
    gone = summary.get("gone") or []
    icon = ":x:" if summary.get("regressed") or summary.get("over_budget") else ":white_check_mark:"
    out.append(f"## {icon} pytest-memline")
    out.append("")
    out.append(f"{count(summary.get('traced', 0), 'test')} traced, {summary.get('over_budget', 0)} over budget.")
    if baseline is not None:
        out.append(f"Against {md_code(baseline)}: {counts_line(summary)}.")
    out.append("")
    if over_budget:
        out.append("### Over budget")
        out.append("")
        for nodeid, message in over_budget[:LIST_LIMIT]:
            out.append(f"- {md_code(nodeid)}: {md_text(message.removeprefix('memline: '))}")
        if len(over_budget) > LIST_LIMIT:
            out.append(f"- and {len(over_budget) - LIST_LIMIT} more ({full})")
        out.append("")
    if changes:
        out.append("### Biggest changes against the baseline")
        out.append("")
        out.append("| change | test | what |")
        out.append("| ---: | --- | --- |")
        for delta, nodeid, group in changes:
            what = describe_group(group, code=md_code)
            out.append(f"| {signed_mib(delta)} | {md_code(nodeid)} | {what} |")
        out.append("")
    if gone:
        shown = ", ".join(md_code(g) for g in gone[:LIST_LIMIT])
        more = f", and {len(gone) - LIST_LIMIT} more ({full})" if len(gone) > LIST_LIMIT else ""
        out.append(f"Gone from the suite: {shown}{more}")
        out.append("")
    if top_lines:
        out.append("### Top lines by increment")
        out.append("")
        out.append("| increment | test | line |")
        out.append("| ---: | --- | --- |")
        for inc, nodeid, lineno, contents in top_lines:
            out.append(f"| {mib(inc)} | {md_code(nodeid)} | {lineno}: {md_code(contents.strip()[:80])} |")
        out.append("")
    return _bounded("\n".join(out))


def _bounded(text: str) -> str:
    """``text`` cut at a line boundary under ``MAX_MARKDOWN`` characters, with a note."""
    if len(text) <= MAX_MARKDOWN:
        return text
    note = (
        f"\n\n*Cut at {MAX_MARKDOWN:,} characters to fit a pull-request comment: the JSON "
        "report (--memline-json) has the whole run.*\n"
    )
    cut = text.rfind("\n", 0, MAX_MARKDOWN - len(note))
    return text[: max(cut, 0)] + note
