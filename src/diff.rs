//! Comparing two memory tables: rows aligned by their contents (not their line numbers), a
//! tolerant regression check, and a unified diff of the rendered rows.

use serde::{Deserialize, Serialize};
use similar::{capture_diff_slices, Algorithm, DiffOp};

const MIB: f64 = 1024.0 * 1024.0;
/// Contents longer than this are cut when rendered (the data keeps them whole).
pub const MAX_CONTENTS: usize = 200;

/// One row of a memory table. The numbers are `None` for lines that did not run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub line: u32,
    pub contents: String,
    pub increment: Option<i64>,
    pub peak: Option<i64>,
    #[serde(default)]
    pub occurrences: u64,
    pub mem_usage: Option<i64>,
}

impl Row {
    fn ran(&self) -> bool {
        self.occurrences > 0
    }

    fn key(&self) -> &str {
        self.contents.trim()
    }

    /// The row as the table shows it (memory_profiler's layout plus Peak). Tabs become four
    /// spaces; contents longer than `MAX_CONTENTS` characters are cut with an ellipsis.
    pub fn render(&self) -> String {
        let mut contents = self.contents.replace('\t', "    ");
        if contents.chars().count() > MAX_CONTENTS {
            contents = contents.chars().take(MAX_CONTENTS - 1).collect::<String>() + "…";
        }
        let (mem, inc, peak, occ) = if self.ran() {
            (
                mib(self.mem_usage.unwrap_or(0)),
                mib(self.increment.unwrap_or(0)),
                mib(self.peak.unwrap_or(0)),
                self.occurrences.to_string(),
            )
        } else {
            Default::default()
        };
        let text = format!(
            "{:>6} {mem:>12} {inc:>12} {peak:>12}  {occ:>11}   {contents}",
            self.line
        );
        text.trim_end().to_string()
    }

    /// Unchanged as the gate sees it, whatever the line number: ran as often, and Increment and
    /// Peak moved (either way) by no more than the thresholds. Rows that moved by RSS noise
    /// (a page-table page, a counter batched per CPU) are context, not a `-`/`+` pair that
    /// would hide the row that matters. Mem usage is left out: it is the whole process's RSS,
    /// which moves with whatever ran before the test.
    fn unchanged(&self, other: &Row, t: Thresholds) -> bool {
        let within = |a: Option<i64>, b: Option<i64>| {
            let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
            !t.exceeded(a, b) && !t.exceeded(b, a)
        };
        self.ran() == other.ran()
            && self.occurrences == other.occurrences
            && within(self.increment, other.increment)
            && within(self.peak, other.peak)
    }
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// When growth counts as a regression: above the noise floor AND above `tolerance` x |old|.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub tolerance: f64,
    pub noise_floor: u64,
}

impl Thresholds {
    pub fn exceeded(&self, old: i64, new: i64) -> bool {
        let growth = new.saturating_sub(old);
        growth > 0
            && growth as u64 > self.noise_floor
            && growth as f64 > self.tolerance * (old.unsigned_abs() as f64)
    }
}

/// One value that grew past the thresholds. `line` is `None` for the test's peak growth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub line: Option<u32>,
    pub old_line: Option<u32>,
    pub contents: String,
    pub what: &'static str,
    pub old: i64,
    pub new: i64,
}

/// How the rows of two tables line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// Same contents (maybe at another line number).
    Same(usize, usize),
    /// Edited: different contents at the same place of a changed block.
    Edited(usize, usize),
    Removed(usize),
    Added(usize),
}

/// Aligns rows by contents (patience diff, as `git diff --patience` would on the source).
pub fn align(old: &[Row], new: &[Row]) -> Vec<Pair> {
    let old_keys: Vec<&str> = old.iter().map(Row::key).collect();
    let new_keys: Vec<&str> = new.iter().map(Row::key).collect();
    let mut pairs = Vec::with_capacity(old.len().max(new.len()));
    for op in capture_diff_slices(Algorithm::Patience, &old_keys, &new_keys) {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => pairs.extend((0..len).map(|i| Pair::Same(old_index + i, new_index + i))),
            DiffOp::Delete {
                old_index, old_len, ..
            } => pairs.extend((old_index..old_index + old_len).map(Pair::Removed)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => pairs.extend((new_index..new_index + new_len).map(Pair::Added)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let both = old_len.min(new_len);
                pairs.extend((0..both).map(|i| Pair::Edited(old_index + i, new_index + i)));
                pairs.extend((old_index + both..old_index + old_len).map(Pair::Removed));
                pairs.extend((new_index + both..new_index + new_len).map(Pair::Added));
            }
        }
    }
    pairs
}

/// Lines whose increment or peak grew past the thresholds, in the new table's order.
pub fn regressed_lines(old: &[Row], new: &[Row], pairs: &[Pair], t: Thresholds) -> Vec<Change> {
    let mut changes = Vec::new();
    for pair in pairs {
        let (o, n) = match *pair {
            Pair::Same(o, n) | Pair::Edited(o, n) => (Some(&old[o]), &new[n]),
            Pair::Added(n) => (None, &new[n]),
            Pair::Removed(_) => continue,
        };
        if !n.ran() {
            continue;
        }
        for (what, old_v, new_v) in [
            ("increment", o.and_then(|r| r.increment), n.increment),
            ("peak", o.and_then(|r| r.peak), n.peak),
        ] {
            let (old_v, new_v) = (old_v.unwrap_or(0), new_v.unwrap_or(0));
            if t.exceeded(old_v, new_v) {
                changes.push(Change {
                    line: Some(n.line),
                    old_line: o.map(|r| r.line),
                    contents: n.contents.trim().to_string(),
                    what,
                    old: old_v,
                    new: new_v,
                });
            }
        }
    }
    changes
}

/// One line of a rendered diff: `tag` is ' ', '-', '+' or '@' (a hunk header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    pub tag: char,
    pub text: String,
    pub regressed: bool,
}

/// A unified diff of two tables' rows, aligned by contents, with `context` unchanged rows
/// around each change. Rows whose line numbers alone moved, or whose numbers moved within the
/// thresholds `t`, count as unchanged (shown once, with the current numbers). Rows in
/// `regressed` (new line numbers) are marked with `>`.
pub fn unified(
    old: &[Row],
    new: &[Row],
    pairs: &[Pair],
    regressed: &[u32],
    t: Thresholds,
    context: usize,
) -> Vec<DiffLine> {
    let mark = |text: String, line: u32| -> (String, bool) {
        if regressed.contains(&line) {
            (format!(">{}", &text[1.min(text.len())..]), true)
        } else {
            (text, false)
        }
    };
    // Full diff first: (tag, text, regressed, is_change, old line, new line)
    let mut full: Vec<(char, String, bool, bool)> = Vec::new();
    for pair in pairs {
        match *pair {
            Pair::Same(o, n) if old[o].unchanged(&new[n], t) => {
                full.push((' ', new[n].render(), false, false));
            }
            Pair::Same(o, n) | Pair::Edited(o, n) => {
                full.push(('-', old[o].render(), false, true));
                let (text, r) = mark(new[n].render(), new[n].line);
                full.push(('+', text, r, true));
            }
            Pair::Removed(o) => full.push(('-', old[o].render(), false, true)),
            Pair::Added(n) => {
                let (text, r) = mark(new[n].render(), new[n].line);
                full.push(('+', text, r, true));
            }
        }
    }
    let changed: Vec<usize> = (0..full.len()).filter(|&i| full[i].3).collect();
    let mut keep = vec![false; full.len()];
    for &i in &changed {
        let lo = i.saturating_sub(context);
        let hi = (i + context + 1).min(full.len());
        keep[lo..hi].iter_mut().for_each(|k| *k = true);
    }
    let mut out = Vec::new();
    let mut previous_kept = true;
    for (i, (tag, text, regressed, _)) in full.into_iter().enumerate() {
        if !keep[i] {
            previous_kept = false;
            continue;
        }
        if !previous_kept || (i > 0 && out.is_empty()) {
            out.push(DiffLine {
                tag: '@',
                text: "@@ ... @@".into(),
                regressed: false,
            });
        }
        previous_kept = true;
        out.push(DiffLine {
            tag,
            text,
            regressed,
        });
    }
    out
}

/// The outcome of comparing a test with its baseline entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// "regressed", "improved" or "unchanged".
    pub status: &'static str,
    /// What grew past the thresholds: the test's peak growth first, then lines.
    pub changes: Vec<Change>,
    pub diff: Vec<DiffLine>,
}

/// Compares a test's table (`new`) with its baseline (`old`).
pub fn compare(
    old: &[Row],
    old_peak_growth: i64,
    new: &[Row],
    new_peak_growth: i64,
    t: Thresholds,
    context: usize,
) -> Comparison {
    let pairs = align(old, new);
    let mut changes = Vec::new();
    if t.exceeded(old_peak_growth, new_peak_growth) {
        changes.push(Change {
            line: None,
            old_line: None,
            contents: String::new(),
            what: "peak growth",
            old: old_peak_growth,
            new: new_peak_growth,
        });
    }
    changes.extend(regressed_lines(old, new, &pairs, t));
    let status = if !changes.is_empty() {
        "regressed"
    } else if t.exceeded(new_peak_growth, old_peak_growth) {
        "improved"
    } else {
        "unchanged"
    };
    let marked: Vec<u32> = changes.iter().filter_map(|c| c.line).collect();
    let diff = unified(old, new, &pairs, &marked, t, context);
    Comparison {
        status,
        changes,
        diff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 1 << 20;

    fn row(line: u32, contents: &str, inc: i64, peak: i64) -> Row {
        Row {
            line,
            contents: contents.into(),
            increment: Some(inc),
            peak: Some(peak),
            occurrences: 1,
            mem_usage: Some(100 * M),
        }
    }

    fn idle(line: u32, contents: &str) -> Row {
        Row {
            line,
            contents: contents.into(),
            increment: None,
            peak: None,
            occurrences: 0,
            mem_usage: None,
        }
    }

    fn t() -> Thresholds {
        Thresholds {
            tolerance: 0.10,
            noise_floor: M as u64,
        }
    }

    #[test]
    fn thresholds() {
        let t = t();
        assert!(!t.exceeded(100 * M, 109 * M), "within 10%");
        assert!(t.exceeded(100 * M, 111 * M));
        assert!(!t.exceeded(0, M), "at the noise floor");
        assert!(t.exceeded(0, M + 1));
        assert!(!t.exceeded(50 * M, 10 * M), "shrinking never regresses");
        assert!(t.exceeded(-152 * M, -100 * M), "freeing less counts");
        let zero = Thresholds {
            tolerance: 0.0,
            noise_floor: 0,
        };
        assert!(zero.exceeded(5, 6));
        assert!(!zero.exceeded(5, 5));
    }

    #[test]
    fn shifted_lines_align_by_contents() {
        let old = vec![
            idle(1, "def test():"),
            row(2, "a = alloc(10)", 10 * M, 10 * M),
            row(3, "b = alloc(20)", 20 * M, 20 * M),
        ];
        let new = vec![
            idle(1, "# a comment added on top"),
            idle(2, "def test():"),
            row(3, "a = alloc(10)", 10 * M, 10 * M),
            row(4, "b = alloc(20)", 20 * M, 20 * M),
        ];
        let pairs = align(&old, &new);
        assert_eq!(
            pairs,
            vec![
                Pair::Added(0),
                Pair::Same(0, 1),
                Pair::Same(1, 2),
                Pair::Same(2, 3)
            ]
        );
        assert!(regressed_lines(&old, &new, &pairs, t()).is_empty());
        let diff = unified(&old, &new, &pairs, &[], t(), 3);
        let changed: Vec<_> = diff.iter().filter(|d| d.tag != ' ').collect();
        assert_eq!(changed.len(), 1, "{diff:?}");
        assert_eq!(changed[0].tag, '+');
        assert!(changed[0].text.contains("# a comment added on top"));
    }

    #[test]
    fn an_edited_line_that_grew_regresses() {
        let old = vec![
            idle(1, "def test():"),
            row(2, "a = bytearray(10 * MiB)", 10 * M, 10 * M),
            row(3, "assert a", 0, 0),
        ];
        let new = vec![
            idle(1, "def test():"),
            row(2, "a = bytearray(30 * MiB)", 30 * M, 30 * M),
            row(3, "assert a", 0, 0),
        ];
        let pairs = align(&old, &new);
        assert_eq!(pairs[1], Pair::Edited(1, 1));
        let changes = regressed_lines(&old, &new, &pairs, t());
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].what, "increment");
        assert_eq!(changes[0].line, Some(2));
        assert_eq!((changes[0].old, changes[0].new), (10 * M, 30 * M));
        let diff = unified(&old, &new, &pairs, &[2], t(), 3);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, " -+ ");
        assert!(diff[2].regressed);
        assert!(diff[2].text.starts_with('>'), "{:?}", diff[2].text);
        assert!(diff[1].text.contains("10.0 MiB"));
        assert!(diff[2].text.contains("30.0 MiB"));
    }

    #[test]
    fn added_lines_compare_with_zero() {
        let old = vec![row(1, "x = 1", 0, 0)];
        let new = vec![row(1, "x = 1", 0, 0), row(2, "y = big()", 20 * M, 25 * M)];
        let pairs = align(&old, &new);
        let changes = regressed_lines(&old, &new, &pairs, t());
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].what, "peak");
        assert_eq!(changes[1].old_line, None);
    }

    #[test]
    fn rss_noise_is_context_and_a_shrink_past_the_thresholds_is_a_change() {
        let old = vec![
            idle(1, "def test():"),
            row(2, "a = alloc(4)", 4 * M, 4 * M),
            row(3, "b = alloc(5)", 5 * M, 5 * M),
            row(4, "c = alloc(8)", 8 * M, 8 * M),
            row(5, "assert a", 0, 0),
        ];
        let new = vec![
            idle(1, "def test():"),
            // 0.1 MiB more on the peak, a page-table page on the increment: noise
            row(2, "a = alloc(4)", 4 * M + 4096, 4 * M + 100 * 1024),
            row(3, "b = alloc(5)", 5 * M - 60 * 1024, 5 * M + 60 * 1024),
            // halved: improved, shown as a change although it did not regress
            row(4, "c = alloc(8)", 4 * M, 4 * M),
            row(5, "assert a", 4096, 100 * 1024),
        ];
        let pairs = align(&old, &new);
        let diff = unified(&old, &new, &pairs, &[], t(), 3);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, "   -+ ", "{diff:?}");
        assert!(diff[3].text.contains("c = alloc(8)") && diff[4].text.contains("4.0 MiB"));
        // the context rows show the current numbers
        assert!(diff[1].text.contains("4.1 MiB"), "{:?}", diff[1].text);
    }

    #[test]
    fn context_and_hunks() {
        let mut old = Vec::new();
        let mut new = Vec::new();
        for i in 0..20 {
            old.push(row(i, &format!("line{i}"), 0, 0));
            new.push(row(
                i,
                &format!("line{i}"),
                if i == 10 { 5 * M } else { 0 },
                0,
            ));
        }
        let pairs = align(&old, &new);
        let diff = unified(&old, &new, &pairs, &[], t(), 2);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, "@  -+  ");
    }

    #[test]
    fn compare_sets_the_status() {
        let old = vec![row(1, "a = f()", 10 * M, 10 * M)];
        let same = compare(&old, 10 * M, &old, 10 * M, t(), 3);
        assert_eq!(same.status, "unchanged");
        assert!(same.diff.is_empty());
        let less = vec![row(1, "a = f()", 2 * M, 2 * M)];
        assert_eq!(
            compare(&old, 10 * M, &less, 2 * M, t(), 3).status,
            "improved"
        );
        let more = vec![row(1, "a = f()", 30 * M, 30 * M)];
        let c = compare(&old, 10 * M, &more, 30 * M, t(), 3);
        assert_eq!(c.status, "regressed");
        assert_eq!(c.changes[0].what, "peak growth");
        assert_eq!(c.changes.len(), 3);
    }

    #[test]
    fn render_matches_the_table_layout() {
        let r = row(12, "    b = [2] * (2 * 10 ** 7)", 160_000_000, 160_000_000);
        assert_eq!(
            r.render(),
            "    12    100.0 MiB    152.6 MiB    152.6 MiB            1       b = [2] * (2 * 10 ** 7)"
        );
        assert_eq!(
            idle(3, "def f():").render(),
            "     3                                                       def f():"
        );
    }
}
