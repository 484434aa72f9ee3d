"""Parse the memory tables pytest-memline prints, for assertions on the measured numbers.

The rendered table is what users read, so the tests check that and nothing private. Sizes are
printed in MiB with one decimal; the parsed values keep that unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: a test's table; an included function's or a fixture's has " > included f" or " > fixture f
#: (scope ...)" after the test's id, kept in ``nodeid``
TITLE = re.compile(r"^(?P<nodeid>\S+::\S+(?: > .+?)?)  \((?P<function>\S+) in (?P<filename>.+)\)$")
SUMMARY = re.compile(
    r"^(?P<label>.+): start (?P<start>[\d.]+) MiB, peak growth (?P<growth>[+-][\d.]+) MiB, "
    r"end (?P<end>[+-][\d.]+) MiB$"
)
AROUND = re.compile(
    r"^around the body: (?:fixtures (?P<fixtures>[-+]\d+\.\d+) MiB at setup)?(?:, )?"
    r"(?:teardown (?P<teardown>[-+]\d+\.\d+) MiB)?(?:, )?"
    r"(?:retained (?P<retained>[-+]\d+\.\d+) MiB after teardown)?$"
)
LEAK_RUN = re.compile(r"([-+]\d+\.\d+) MiB")
HEADER = re.compile(r"^Line #\s+Mem usage\s+Increment\s+Peak\s+Occurrences\s+Line Contents$")
RAN = re.compile(
    r"^(?P<mark>[> ])\s*(?P<lineno>\d+)\s+(?P<mem>-?[\d.]+) MiB\s+(?P<inc>-?[\d.]+) MiB"
    r"\s+(?P<peak>-?[\d.]+) MiB\s+(?P<occ>\d+)(?:   (?P<contents>.*))?$"
)
NOT_RAN = re.compile(r"^(?P<mark>[> ])\s*(?P<lineno>\d+)(?: {55}(?P<contents>.*))?$")


@dataclass(frozen=True)
class Row:
    lineno: int
    contents: str  # stripped of indentation
    marked: bool
    mem_usage: float | None = None  # MiB, None when the line did not run
    increment: float | None = None
    peak: float | None = None
    occurrences: int = 0


@dataclass
class Table:
    nodeid: str
    function: str
    label: str  # "RSS of the whole process, exact in-line peak", ...
    start: float
    peak_growth: float
    end: float
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    #: "around the body: fixtures +X MiB at setup, teardown +Y MiB, retained +Z MiB after
    #: teardown" (MiB), when the table says it
    fixtures: float | None = None
    teardown: float | None = None
    retained: float | None = None
    #: "leak check: N more runs of the body retained +A MiB, +B MiB (slope ...)" (MiB)
    leak_runs: list[float] = field(default_factory=list)

    def row(self, contents: str) -> Row:
        """The row whose source line is `contents` (indentation ignored); exactly one."""
        found = [r for r in self.rows if r.contents == contents.strip()]
        assert len(found) == 1, f"{len(found)} rows with {contents!r} in {self.nodeid}"
        return found[0]

    @property
    def marked(self) -> list[str]:
        return [r.contents for r in self.rows if r.marked]


def parse_tables(output: str) -> list[Table]:
    """Every memory table in `output`, in order of appearance."""
    lines = output.splitlines()
    tables: list[Table] = []
    i = 0
    while i + 1 < len(lines):
        title, summary = TITLE.match(lines[i]), SUMMARY.match(lines[i + 1])
        if not (title and summary):
            i += 1
            continue
        table = Table(
            nodeid=title["nodeid"],
            function=title["function"],
            label=summary["label"],
            start=float(summary["start"]),
            peak_growth=float(summary["growth"]),
            end=float(summary["end"]),
        )
        i += 2
        if i < len(lines) and (m := AROUND.match(lines[i])):
            table.fixtures = float(m["fixtures"]) if m["fixtures"] else None
            table.teardown = float(m["teardown"]) if m["teardown"] else None
            table.retained = float(m["retained"]) if m["retained"] else None
            i += 1
        while i < len(lines) and (lines[i].startswith("note: ") or lines[i].startswith("leak check: ")):
            if lines[i].startswith("leak check: "):
                table.leak_runs = [float(v) for v in LEAK_RUN.findall(lines[i].split("(slope")[0])]
                i += 1
                continue
            table.notes.append(lines[i].removeprefix("note: "))
            i += 1
        if i + 2 < len(lines) and lines[i] == "" and HEADER.match(lines[i + 1]):
            i += 3  # blank, header, ====
            while i < len(lines):
                m = RAN.match(lines[i])
                if m:
                    table.rows.append(
                        Row(
                            lineno=int(m["lineno"]),
                            contents=(m["contents"] or "").strip(),
                            marked=m["mark"] == ">",
                            mem_usage=float(m["mem"]),
                            increment=float(m["inc"]),
                            peak=float(m["peak"]),
                            occurrences=int(m["occ"]),
                        )
                    )
                elif m := NOT_RAN.match(lines[i]):
                    table.rows.append(
                        Row(int(m["lineno"]), (m["contents"] or "").strip(), m["mark"] == ">")
                    )
                else:
                    break
                i += 1
        tables.append(table)
    return tables


def table_of(output: str, test_name: str) -> Table:
    """The first table of the test whose node id ends with `::test_name`."""
    for t in parse_tables(output):
        if t.nodeid.endswith("::" + test_name):
            return t
    raise AssertionError(f"no memory table for {test_name} in the output:\n{output}")


def report_of(output: str, title: str) -> list[str]:
    """The lines pytest prints under `____ title ____` in its FAILURES or ERRORS section
    (title: a test name, or "ERROR at setup of test_x"), up to the next such header."""
    header = re.compile(r"^_+ (?P<title>.+) _+$")
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = header.match(line)
        if m and m["title"] == title:
            body = []
            for follow in lines[i + 1 :]:
                if header.match(follow) or re.match(r"^=+ .* =+$", follow):
                    break
                body.append(follow)
            return body
    raise AssertionError(f"no report for {title!r} in the output:\n{output}")


def summary_of(output: str, outcome: str = "FAILED") -> set[str]:
    """Test names in the short test summary with the given outcome (FAILED, ERROR)."""
    return set(re.findall(rf"^{outcome} \S+::(\w+)", output, flags=re.MULTILINE))


def lineno(path: object, text: str) -> int:
    """The 1-based number of the only line of file `path` whose stripped text is `text`."""
    from pathlib import Path

    lines = [ln.strip() for ln in Path(str(path)).read_text().splitlines()]
    assert lines.count(text) == 1, f"{lines.count(text)} lines {text!r} in {path}"
    return lines.index(text) + 1
