//! Comparing two memory tables: rows aligned by their contents (not their line numbers), a
//! tolerant regression check, and a unified diff of the rows (rendered by the table's renderer,
//! `pytest_memline/table.py`).

use serde::{Deserialize, Serialize};
use similar::{capture_diff_slices, Algorithm, DiffOp};

pub use crate::row::Row;

/// What a baseline knows about one value (a row's Increment or Peak, a test's peak growth):
/// the lowest and highest of its samples, one per saved run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    pub lo: i64,
    pub hi: i64,
    /// How many samples.
    pub n: usize,
}

impl Band {
    /// The band of `samples`; `None` when there are none.
    pub fn of(samples: &[i64]) -> Option<Band> {
        let lo = *samples.iter().min()?;
        let hi = *samples.iter().max()?;
        Some(Band {
            lo,
            hi,
            n: samples.len(),
        })
    }

    /// One sample.
    pub fn single(v: i64) -> Band {
        Band { lo: v, hi: v, n: 1 }
    }

    /// Highest minus lowest sample: how much the value moved between saved runs.
    pub fn spread(&self) -> i64 {
        self.hi.saturating_sub(self.lo)
    }
}

/// When a value counts as grown or shrunk against its baseline band.
///
/// The margin is the largest of: the noise floor, the band's spread (what the saved runs
/// showed this value to move by), and `tolerance` x |highest sample| (relative; 0 by default).
/// A value regresses when it exceeds the highest sample by more than the margin, and improves
/// when it is below the lowest by more than the margin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub tolerance: f64,
    pub noise_floor: u64,
}

impl Thresholds {
    pub fn margin(&self, band: Band) -> i64 {
        let floor = i64::try_from(self.noise_floor).unwrap_or(i64::MAX);
        let relative = (self.tolerance * band.hi.unsigned_abs() as f64).min(i64::MAX as f64) as i64;
        floor.max(band.spread()).max(relative)
    }

    /// The highest value that does not regress.
    pub fn allowed(&self, band: Band) -> i64 {
        band.hi.saturating_add(self.margin(band))
    }

    pub fn above(&self, band: Band, v: i64) -> bool {
        v > self.allowed(band)
    }

    pub fn below(&self, band: Band, v: i64) -> bool {
        v < band.lo.saturating_sub(self.margin(band))
    }

    /// `new` grew past the thresholds against a single sample `old`.
    #[cfg(test)]
    pub fn exceeded(&self, old: i64, new: i64) -> bool {
        self.above(Band::single(old), new)
    }
}

/// One value that grew past the thresholds. `line` is `None` for the test's peak growth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub line: Option<u32>,
    pub old_line: Option<u32>,
    pub contents: String,
    pub what: &'static str,
    /// The baseline's highest sample (what the value is compared with).
    pub old: i64,
    pub new: i64,
    /// The baseline's lowest sample, and how many samples it has.
    pub lo: i64,
    pub samples: usize,
    /// The highest value that would not have regressed.
    pub allowed: i64,
}

impl Change {
    fn new(
        line: Option<u32>,
        old_line: Option<u32>,
        contents: &str,
        what: &'static str,
        band: Band,
        new: i64,
        t: Thresholds,
    ) -> Change {
        Change {
            line,
            old_line,
            contents: contents.trim().to_string(),
            what,
            old: band.hi,
            new,
            lo: band.lo,
            samples: band.n,
            allowed: t.allowed(band),
        }
    }
}

/// A baseline's row: the row's numbers in each saved run (oldest first). Rows that never ran
/// have no samples.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistRow {
    pub line: u32,
    pub contents: String,
    /// In the latest run that ran the line.
    #[serde(default)]
    pub occurrences: u64,
    /// In the latest run that ran the line (shown, never compared).
    #[serde(default)]
    pub mem_usage: Option<i64>,
    #[serde(default)]
    pub increment: Vec<i64>,
    #[serde(default)]
    pub peak: Vec<i64>,
}

impl HistRow {
    /// A row of one run.
    pub fn from_row(r: &Row) -> HistRow {
        HistRow {
            line: r.line,
            contents: r.contents.clone(),
            occurrences: r.occurrences,
            mem_usage: r.mem_usage.filter(|_| r.ran()),
            increment: r.increment.filter(|_| r.ran()).into_iter().collect(),
            peak: r.peak.filter(|_| r.ran()).into_iter().collect(),
        }
    }

    pub fn ran(&self) -> bool {
        self.occurrences > 0 && !(self.increment.is_empty() && self.peak.is_empty())
    }

    pub fn key(&self) -> &str {
        self.contents.trim()
    }

    pub fn increment_band(&self) -> Option<Band> {
        Band::of(&self.increment)
    }

    pub fn peak_band(&self) -> Option<Band> {
        Band::of(&self.peak)
    }

    /// The row as the diff shows the baseline: the highest of each value.
    pub fn envelope(&self) -> Row {
        let ran = self.ran();
        Row {
            line: self.line,
            contents: self.contents.clone(),
            increment: self.increment_band().map(|b| b.hi).filter(|_| ran),
            peak: self.peak_band().map(|b| b.hi).filter(|_| ran),
            occurrences: if ran { self.occurrences } else { 0 },
            mem_usage: self.mem_usage.filter(|_| ran),
        }
    }

    /// Unchanged as the gate sees it: ran as often, and Increment and Peak within their
    /// bands' margins (either way). Rows that moved by RSS noise are context, not a `-`/`+`
    /// pair that would hide the row that matters. Mem usage is left out: it is the whole
    /// process's RSS, which moves with whatever ran before the test.
    fn unchanged(&self, new: &Row, t: Thresholds) -> bool {
        let within = |band: Option<Band>, v: Option<i64>| {
            let band = band.unwrap_or(Band::single(0));
            let v = v.unwrap_or(0);
            !t.above(band, v) && !t.below(band, v)
        };
        self.ran() == new.ran()
            && (!new.ran() || self.occurrences == new.occurrences)
            && within(self.increment_band(), new.increment)
            && within(self.peak_band(), new.peak)
    }
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

/// Aligns rows by their contents (patience diff, as `git diff --patience` would on the source).
pub fn align_keys(old_keys: &[&str], new_keys: &[&str]) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(old_keys.len().max(new_keys.len()));
    for op in capture_diff_slices(Algorithm::Patience, old_keys, new_keys) {
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

/// Aligns a baseline's rows with a run's rows by contents.
pub fn align(old: &[HistRow], new: &[Row]) -> Vec<Pair> {
    let old_keys: Vec<&str> = old.iter().map(HistRow::key).collect();
    let new_keys: Vec<&str> = new.iter().map(Row::key).collect();
    align_keys(&old_keys, &new_keys)
}

/// Lines whose increment or peak grew past the thresholds, in the new table's order.
pub fn regressed_lines(old: &[HistRow], new: &[Row], pairs: &[Pair], t: Thresholds) -> Vec<Change> {
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
        let zero = Band::single(0);
        for (what, band, new_v) in [
            (
                "increment",
                o.and_then(HistRow::increment_band).unwrap_or(zero),
                n.increment,
            ),
            (
                "peak",
                o.and_then(HistRow::peak_band).unwrap_or(zero),
                n.peak,
            ),
        ] {
            let new_v = new_v.unwrap_or(0);
            if t.above(band, new_v) {
                changes.push(Change::new(
                    Some(n.line),
                    o.map(|r| r.line),
                    &n.contents,
                    what,
                    band,
                    new_v,
                    t,
                ));
            }
        }
    }
    changes
}

/// One line of a diff: `tag` is ' ', '-', '+' or '@' (a hunk header, which has no row).
/// `regressed`: a `+` row the gate counts as regressed (shown marked `>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    pub tag: char,
    pub row: Option<Row>,
    pub regressed: bool,
}

/// A unified diff of a baseline's rows (shown by their highest samples) and a run's rows,
/// aligned by contents, with `context` unchanged rows around each change. Rows whose line
/// numbers alone moved, or whose numbers stayed within the thresholds `t`, count as unchanged
/// (shown once, with the current numbers). Rows in `regressed` (new line numbers) are marked
/// with `>`.
pub fn unified(
    old: &[HistRow],
    new: &[Row],
    pairs: &[Pair],
    regressed: &[u32],
    t: Thresholds,
    context: usize,
) -> Vec<DiffLine> {
    let marked = |row: &Row| regressed.contains(&row.line);
    // the full diff first: (tag, row, regressed, is a change)
    let mut full: Vec<(char, Row, bool, bool)> = Vec::new();
    for pair in pairs {
        match *pair {
            Pair::Same(o, n) if old[o].unchanged(&new[n], t) => {
                full.push((' ', new[n].clone(), false, false));
            }
            Pair::Same(o, n) | Pair::Edited(o, n) => {
                full.push(('-', old[o].envelope(), false, true));
                full.push(('+', new[n].clone(), marked(&new[n]), true));
            }
            Pair::Removed(o) => full.push(('-', old[o].envelope(), false, true)),
            Pair::Added(n) => full.push(('+', new[n].clone(), marked(&new[n]), true)),
        }
    }
    let mut keep = vec![false; full.len()];
    for i in (0..full.len()).filter(|&i| full[i].3) {
        let lo = i.saturating_sub(context);
        let hi = (i + context + 1).min(full.len());
        keep[lo..hi].iter_mut().for_each(|k| *k = true);
    }
    let mut out = Vec::new();
    let mut previous_kept = true;
    for (i, (tag, row, regressed, _)) in full.into_iter().enumerate() {
        if !keep[i] {
            previous_kept = false;
            continue;
        }
        if !previous_kept || (i > 0 && out.is_empty()) {
            out.push(DiffLine {
                tag: '@',
                row: None,
                regressed: false,
            });
        }
        previous_kept = true;
        out.push(DiffLine {
            tag,
            row: Some(row),
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
    /// The band of the test's peak growth in the baseline.
    pub peak_growth: Band,
}

/// Compares a run's table (`new`, `new_peak_growth`) with a baseline's (`old` rows and the
/// samples of its peak growth, which must not be empty).
pub fn compare(
    old: &[HistRow],
    old_peak_growth: &[i64],
    new: &[Row],
    new_peak_growth: i64,
    t: Thresholds,
    context: usize,
) -> Comparison {
    let band = Band::of(old_peak_growth).unwrap_or(Band::single(0));
    let pairs = align(old, new);
    let mut changes = Vec::new();
    if t.above(band, new_peak_growth) {
        changes.push(Change::new(
            None,
            None,
            "",
            "peak growth",
            band,
            new_peak_growth,
            t,
        ));
    }
    changes.extend(regressed_lines(old, new, &pairs, t));
    let status = if !changes.is_empty() {
        "regressed"
    } else if t.below(band, new_peak_growth) {
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
        peak_growth: band,
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

    fn h(rows: &[Row]) -> Vec<HistRow> {
        rows.iter().map(HistRow::from_row).collect()
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
        let pairs = align(&h(&old), &new);
        assert_eq!(
            pairs,
            vec![
                Pair::Added(0),
                Pair::Same(0, 1),
                Pair::Same(1, 2),
                Pair::Same(2, 3)
            ]
        );
        assert!(regressed_lines(&h(&old), &new, &pairs, t()).is_empty());
        let diff = unified(&h(&old), &new, &pairs, &[], t(), 3);
        let changed: Vec<_> = diff.iter().filter(|d| d.tag != ' ').collect();
        assert_eq!(changed.len(), 1, "{diff:?}");
        assert_eq!(changed[0].tag, '+');
        assert_eq!(
            rows_of(&changed[0].row).contents,
            "# a comment added on top"
        );
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
        let pairs = align(&h(&old), &new);
        assert_eq!(pairs[1], Pair::Edited(1, 1));
        let changes = regressed_lines(&h(&old), &new, &pairs, t());
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].what, "increment");
        assert_eq!(changes[0].line, Some(2));
        assert_eq!((changes[0].old, changes[0].new), (10 * M, 30 * M));
        let diff = unified(&h(&old), &new, &pairs, &[2], t(), 3);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, " -+ ");
        assert!(diff[2].regressed && !diff[1].regressed);
        assert_eq!(rows_of(&diff[1].row).increment, Some(10 * M));
        assert_eq!(rows_of(&diff[2].row).increment, Some(30 * M));
    }

    #[test]
    fn added_lines_compare_with_zero() {
        let old = vec![row(1, "x = 1", 0, 0)];
        let new = vec![row(1, "x = 1", 0, 0), row(2, "y = big()", 20 * M, 25 * M)];
        let pairs = align(&h(&old), &new);
        let changes = regressed_lines(&h(&old), &new, &pairs, t());
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
        let pairs = align(&h(&old), &new);
        let diff = unified(&h(&old), &new, &pairs, &[], t(), 3);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, "   -+ ", "{diff:?}");
        assert_eq!(rows_of(&diff[3].row).contents, "c = alloc(8)");
        assert_eq!(rows_of(&diff[4].row).increment, Some(4 * M));
        // the context rows show the current numbers
        assert_eq!(rows_of(&diff[1].row).peak, Some(4 * M + 100 * 1024));
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
        let pairs = align(&h(&old), &new);
        let diff = unified(&h(&old), &new, &pairs, &[], t(), 2);
        let tags: String = diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, "@  -+  ");
    }

    #[test]
    fn compare_sets_the_status() {
        let old = vec![row(1, "a = f()", 10 * M, 10 * M)];
        let same = compare(&h(&old), &[10 * M], &old, 10 * M, t(), 3);
        assert_eq!(same.status, "unchanged");
        assert!(same.diff.is_empty());
        let less = vec![row(1, "a = f()", 2 * M, 2 * M)];
        assert_eq!(
            compare(&h(&old), &[10 * M], &less, 2 * M, t(), 3).status,
            "improved"
        );
        let more = vec![row(1, "a = f()", 30 * M, 30 * M)];
        let c = compare(&h(&old), &[10 * M], &more, 30 * M, t(), 3);
        assert_eq!(c.status, "regressed");
        assert_eq!(c.changes[0].what, "peak growth");
        assert_eq!(c.changes.len(), 3);
    }

    fn rows_of(row: &Option<Row>) -> &Row {
        row.as_ref().expect("a row")
    }

    fn samples(line: u32, contents: &str, inc: &[i64], peak: &[i64]) -> HistRow {
        HistRow {
            line,
            contents: contents.into(),
            occurrences: 1,
            mem_usage: Some(100 * M),
            increment: inc.to_vec(),
            peak: peak.to_vec(),
        }
    }

    #[test]
    fn the_margin_is_the_largest_of_floor_spread_and_tolerance() {
        let none = Thresholds {
            tolerance: 0.0,
            noise_floor: M as u64,
        };
        // one sample: the noise floor
        let one = Band::single(275 * M);
        assert_eq!(none.margin(one), M);
        assert!(
            none.above(one, 280 * M),
            "5 MiB more on a 275 MiB line regresses"
        );
        assert!(!none.above(one, 275 * M + M));
        // a value that moved by 2 MiB between saved runs may move by 2 MiB more
        let moving = Band::of(&[3 * M, 5 * M, 4 * M]).unwrap();
        assert_eq!(
            (moving.lo, moving.hi, moving.n, moving.spread()),
            (3 * M, 5 * M, 3, 2 * M)
        );
        assert_eq!(none.allowed(moving), 7 * M);
        assert!(!none.above(moving, 7 * M) && none.above(moving, 7 * M + 1));
        assert!(none.below(moving, M - 1) && !none.below(moving, M));
        // a relative tolerance still works, on the highest sample
        let ten = Thresholds {
            tolerance: 0.1,
            noise_floor: 0,
        };
        assert_eq!(ten.margin(Band::single(100 * M)), 10 * M);
        assert_eq!(Band::of(&[]), None);
    }

    #[test]
    fn a_baseline_with_samples_compares_with_its_highest_and_learns_its_spread() {
        let t = Thresholds {
            tolerance: 0.0,
            noise_floor: M as u64,
        };
        let old = vec![
            samples(
                1,
                "payload = small_objects()",
                &[3 * M, 5 * M, 4 * M],
                &[3 * M, 6 * M, 4 * M],
            ),
            samples(2, "grid = np.ones(n)", &[275 * M; 3], &[275 * M; 3]),
        ];
        // the noisy row at its highest plus its spread: not a change; the grid 5 MiB up: is
        let new = vec![
            row(1, "payload = small_objects()", 7 * M, 9 * M),
            row(2, "grid = np.ones(n)", 280 * M, 280 * M),
        ];
        let c = compare(&old, &[300 * M, 301 * M], &new, 301 * M, t, 3);
        assert_eq!(c.status, "regressed");
        let lines: Vec<_> = c.changes.iter().map(|c| (c.line, c.what)).collect();
        assert_eq!(lines, vec![(Some(2), "increment"), (Some(2), "peak")]);
        let ch = &c.changes[0];
        assert_eq!(
            (ch.old, ch.lo, ch.samples, ch.allowed),
            (275 * M, 275 * M, 3, 276 * M)
        );
        assert_eq!(c.peak_growth, Band::of(&[300 * M, 301 * M]).unwrap());
        // the diff shows the baseline's highest samples, and the noisy row as context
        let tags: String = c.diff.iter().map(|d| d.tag).collect();
        assert_eq!(tags, " -+", "{:?}", c.diff);
        assert_eq!(rows_of(&c.diff[1].row).increment, Some(275 * M));
        assert!(c.diff[2].regressed);
        // a row with no samples (it did not run in the saved runs) compares with zero
        let idle_old = vec![HistRow::from_row(&idle(1, "payload = small_objects()"))];
        assert!(!idle_old[0].ran());
        let c = compare(&idle_old, &[0], &new[..1], 0, t, 3);
        assert_eq!(c.changes.len(), 2);
        assert_eq!(c.changes[0].samples, 1);
    }
}
