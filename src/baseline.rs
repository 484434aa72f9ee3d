//! Baseline files: a documented JSON format, validated on load, merged test by test and written
//! atomically under a lock, so that concurrent savers never corrupt or drop each other's entries.
//!
//! A baseline keeps, per test and per value, the samples of the last few saved runs (`keep`,
//! 5 by default), so that the gate learns how much each value moves by itself:
//!
//! ```json
//! {
//!   "format": "pytest-memline-baseline",
//!   "version": 2,
//!   "metric": "rss",
//!   "python": "3.12.1",
//!   "platform": "linux-x86_64",
//!   "tests": {
//!     "tests/test_x.py::test_y": {
//!       "outcome": "passed",
//!       "function": "test_y",
//!       "filename": "tests/test_x.py",
//!       "peak_growth": [83886080, 83890176],
//!       "lines": [
//!         {"line":3,"contents":"def test_y():","occurrences":0,"mem_usage":null,"increment":[],"peak":[]},
//!         {"line":4,"contents":"    a = bytearray(80 * 2**20)","occurrences":1,"mem_usage":125829120,"increment":[83886080,83886080],"peak":[83886080,83890176]}
//!       ]
//!     }
//!   }
//! }
//! ```
//! Samples are oldest first. Keys come in this order, tests sorted by node id, one line per
//! row: the file diffs well. Version 1 files (one run per test, plain numbers) load as one
//! sample each and are rewritten as version 2 by the next save; nothing in them is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diff::{self, Band, HistRow, Pair, Row, Thresholds};
use crate::files;

pub const FORMAT: &str = "pytest-memline-baseline";
pub const VERSION: u32 = 2;
/// How many saved runs a baseline keeps per test unless told otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// One test's entry: its rows with their samples.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Set when this test was measured with another metric than the file's (a marker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub outcome: String,
    pub function: String,
    pub filename: String,
    /// The test's peak growth in each saved run, oldest first (never empty).
    pub peak_growth: Vec<i64>,
    /// What the test left behind after its teardown in each saved run that measured it,
    /// oldest first (informational: not gated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<i64>,
    pub lines: Vec<HistRow>,
}

/// One test as one run measured it (what Python hands over, and the version 1 entry).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub outcome: String,
    pub function: String,
    pub filename: String,
    pub peak_growth: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<i64>,
    pub lines: Vec<Row>,
}

/// The whole file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub format: String,
    pub version: u32,
    pub metric: String,
    pub python: String,
    pub platform: String,
    pub tests: BTreeMap<String, Entry>,
}

/// A version 1 file, read to be migrated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineV1 {
    format: String,
    metric: String,
    python: String,
    platform: String,
    tests: BTreeMap<String, Measured>,
    #[allow(dead_code)]
    version: u32,
}

/// Why a baseline could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Missing,
    /// Not a regular file, over the size cap, or an I/O error: left alone, never moved.
    Unreadable(String),
    /// Not JSON, wrong schema, newer format: the text says which.
    Corrupt(String),
}

impl Entry {
    /// An entry of one run.
    pub fn first(m: Measured) -> Entry {
        Entry {
            metric: m.metric,
            outcome: m.outcome,
            function: m.function,
            filename: m.filename,
            peak_growth: vec![m.peak_growth],
            retained: m.retained.into_iter().collect(),
            lines: m.lines.iter().map(HistRow::from_row).collect(),
        }
    }

    /// How many saved runs the entry holds.
    pub fn samples(&self) -> usize {
        self.peak_growth.len()
    }

    /// This entry with the run `m` added: rows are matched by their contents (a row whose
    /// contents changed starts again from this run), each value keeps its last `keep`
    /// samples, and a value whose last two samples both left the band of the samples before
    /// them on the same side (a step: the code changed what it needs) starts again from those
    /// two, so that an intended change is learnt in two saves instead of widening the band.
    pub fn record(&self, m: Measured, keep: usize, t: Thresholds) -> Entry {
        let keep = keep.max(1);
        let pairs = diff::align(&self.lines, &m.lines);
        let mut old_of: Vec<Option<usize>> = vec![None; m.lines.len()];
        for p in pairs {
            if let Pair::Same(o, n) = p {
                old_of[n] = Some(o);
            }
        }
        let lines = m
            .lines
            .iter()
            .zip(old_of)
            .map(|(row, old)| match old.map(|o| &self.lines[o]) {
                None => HistRow::from_row(row),
                Some(prev) if !row.ran() => HistRow {
                    line: row.line,
                    contents: row.contents.clone(),
                    ..prev.clone()
                },
                Some(prev) => HistRow {
                    line: row.line,
                    contents: row.contents.clone(),
                    occurrences: row.occurrences,
                    mem_usage: row.mem_usage,
                    increment: push(&prev.increment, row.increment.unwrap_or(0), keep, t),
                    peak: push(&prev.peak, row.peak.unwrap_or(0), keep, t),
                },
            })
            .collect();
        Entry {
            metric: m.metric,
            outcome: m.outcome,
            function: m.function,
            filename: m.filename,
            peak_growth: push(&self.peak_growth, m.peak_growth, keep, t),
            retained: match m.retained {
                Some(r) => push(&self.retained, r, keep, t),
                None => self.retained.clone(),
            },
            lines,
        }
    }
}

/// `samples` with `v` added (see `Entry::record`).
pub fn push(samples: &[i64], v: i64, keep: usize, t: Thresholds) -> Vec<i64> {
    if let [before @ .., last] = samples {
        if let Some(band) = Band::of(before) {
            let up = t.above(band, *last) && t.above(band, v);
            let down = t.below(band, *last) && t.below(band, v);
            if up || down {
                return vec![*last, v];
            }
        }
    }
    let mut out: Vec<i64> = samples.to_vec();
    out.push(v);
    let extra = out.len().saturating_sub(keep.max(1));
    out.drain(..extra);
    out
}

impl Baseline {
    pub fn new(metric: &str, python: &str, platform: &str) -> Self {
        Baseline {
            format: FORMAT.into(),
            version: VERSION,
            metric: metric.into(),
            python: python.into(),
            platform: platform.into(),
            tests: BTreeMap::new(),
        }
    }

    /// Parses and validates a baseline's text; a version 1 file is migrated (`.1` is then 1).
    pub fn parse_versioned(text: &str) -> Result<(Self, u32), String> {
        // Look at the header first, so that a newer format is named as such, not as a schema
        // error of this version.
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            if e.is_eof() {
                format!(
                    "it is truncated (JSON ends early at line {}, column {})",
                    e.line(),
                    e.column()
                )
            } else {
                format!("it is not valid JSON ({e})")
            }
        })?;
        let Some(obj) = value.as_object() else {
            return Err("it is not a JSON object".into());
        };
        match obj.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            _ => {
                return Err(format!(
                    "it is not a pytest-memline baseline (no \"format\": \"{FORMAT}\")"
                ))
            }
        }
        let schema = |e: serde_json::Error| format!("its contents do not match the format ({e})");
        match obj.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {
                let b: Baseline = serde_json::from_value(value).map_err(schema)?;
                if let Some((id, _)) = b.tests.iter().find(|(_, e)| e.peak_growth.is_empty()) {
                    return Err(format!(
                        "its contents do not match the format (the entry of {id} has no samples)"
                    ));
                }
                Ok((b, VERSION))
            }
            Some(1) => {
                let old: BaselineV1 = serde_json::from_value(value).map_err(schema)?;
                let mut b = Baseline::new(&old.metric, &old.python, &old.platform);
                b.format = old.format;
                b.tests = old
                    .tests
                    .into_iter()
                    .map(|(id, m)| (id, Entry::first(m)))
                    .collect();
                Ok((b, 1))
            }
            Some(v) if v > u64::from(VERSION) => Err(format!(
                "it was written by a newer pytest-memline (format version {v}; this one reads versions 1 to {VERSION}): upgrade pytest-memline"
            )),
            other => Err(match (other, obj.get("version")) {
                (Some(v), _) => format!("unsupported format version {v}"),
                (None, None) => "it has no format version (\"version\")".into(),
                (None, Some(v)) => format!(
                    "its format version is {v}, not a whole number (1 to {VERSION})"
                ),
            }),
        }
    }

    /// Parses and validates a baseline's text (version 1 is migrated).
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_versioned(text).map(|(b, _)| b)
    }

    /// The metric of a test's entry (its own, else the file's).
    pub fn metric_of<'a>(&'a self, entry: &'a Entry) -> &'a str {
        entry.metric.as_deref().unwrap_or(&self.metric)
    }

    /// Loads a baseline file, with the format version it was written in.
    pub fn load_versioned(path: &Path) -> Result<(Self, u32), LoadError> {
        let data = match files::read_capped(path, files::MAX_READ) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(LoadError::Missing),
            Err(why) => return Err(LoadError::Unreadable(why)),
        };
        let text = String::from_utf8(data)
            .map_err(|_| LoadError::Corrupt("it is not UTF-8 text".into()))?;
        Self::parse_versioned(&text).map_err(LoadError::Corrupt)
    }

    /// Loads a baseline file.
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_versioned(path).map(|(b, _)| b)
    }

    /// The file's text: stable key order, one line per table row, trailing newline.
    pub fn to_text(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        let list = |v: &[i64]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let mut out = String::with_capacity(256 + self.tests.len() * 512);
        out.push_str("{\n");
        out.push_str(&format!("  \"format\": {},\n", s(&self.format)));
        out.push_str(&format!("  \"version\": {},\n", self.version));
        out.push_str(&format!("  \"metric\": {},\n", s(&self.metric)));
        out.push_str(&format!("  \"python\": {},\n", s(&self.python)));
        out.push_str(&format!("  \"platform\": {},\n", s(&self.platform)));
        out.push_str("  \"tests\": {");
        for (i, (id, e)) in self.tests.iter().enumerate() {
            out.push_str(if i == 0 { "\n" } else { ",\n" });
            out.push_str(&format!("    {}: {{\n", s(id)));
            if let Some(metric) = &e.metric {
                out.push_str(&format!("      \"metric\": {},\n", s(metric)));
            }
            out.push_str(&format!("      \"outcome\": {},\n", s(&e.outcome)));
            out.push_str(&format!("      \"function\": {},\n", s(&e.function)));
            out.push_str(&format!("      \"filename\": {},\n", s(&e.filename)));
            out.push_str(&format!(
                "      \"peak_growth\": {},\n",
                list(&e.peak_growth)
            ));
            if !e.retained.is_empty() {
                out.push_str(&format!("      \"retained\": {},\n", list(&e.retained)));
            }
            out.push_str("      \"lines\": [");
            for (j, row) in e.lines.iter().enumerate() {
                out.push_str(if j == 0 { "\n        " } else { ",\n        " });
                out.push_str(&serde_json::to_string(row).unwrap_or_default());
            }
            out.push_str(if e.lines.is_empty() {
                "]\n"
            } else {
                "\n      ]\n"
            });
            out.push_str("    }");
        }
        out.push_str(if self.tests.is_empty() {
            "}\n}\n"
        } else {
            "\n  }\n}\n"
        });
        out
    }
}

/// One test to save: what this run measured, and how to record it.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub measured: Measured,
    /// The test's thresholds (steps are found with them).
    pub thresholds: Thresholds,
    /// Replace the test's samples with this run's instead of adding it (an accepted change).
    pub reset: bool,
}

/// What `save` did besides writing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SaveReport {
    pub written: usize,
    pub kept: usize,
    /// Entries removed on request (their tests are gone).
    pub pruned: usize,
    /// Set when an existing file was unusable and was moved aside, with where it went.
    pub backup: Option<(PathBuf, String)>,
    /// The format version of the file before, when it was older than this one's.
    pub migrated_from: Option<u32>,
}

/// Merges `updates` into the baseline at `path` (creating it and its folder if needed) and
/// writes it atomically (temp file + rename) under a lock. Entries of other tests are kept,
/// but for those in `prune`. Each test keeps its last `keep` samples. An unusable existing
/// file is never overwritten: it is moved to `<path>.bak` first.
pub fn save(
    path: &Path,
    header: Baseline,
    updates: BTreeMap<String, Update>,
    keep: usize,
    prune: &BTreeSet<String>,
) -> Result<SaveReport, String> {
    // a symlinked baseline is saved through to its target; a directory or device is refused
    let path = &files::write_target(path)?;
    let _lock = files::Lock::acquire(path)?;
    let mut report = SaveReport::default();
    let mut merged = match Baseline::load_versioned(path) {
        Ok((existing, _)) if existing.platform != header.platform => {
            return Err(format!(
                "baseline {} was recorded on {} and this is {}: saving here would mix the \
                 platforms' numbers; save to another file (--memline-save=PATH)",
                path.display(),
                existing.platform,
                header.platform
            ));
        }
        Ok((existing, _)) if existing.metric != header.metric => {
            let why = format!(
                "it holds the {:?} metric and this run measured {:?}",
                existing.metric, header.metric
            );
            report.backup = Some((files::backup(path)?, why));
            header.clone_header()
        }
        Ok((mut existing, version)) => {
            if version < VERSION {
                report.migrated_from = Some(version);
                existing.version = VERSION;
            }
            existing.python = header.python.clone();
            existing.platform = header.platform.clone();
            existing
        }
        Err(LoadError::Missing) => header.clone_header(),
        Err(LoadError::Unreadable(why)) => {
            return Err(format!("cannot save to {}: {why}", path.display()));
        }
        Err(LoadError::Corrupt(why)) => {
            report.backup = Some((files::backup(path)?, why));
            header.clone_header()
        }
    };
    report.written = updates.len();
    let before = merged.tests.len();
    merged
        .tests
        .retain(|id, _| updates.contains_key(id) || !prune.contains(id));
    report.pruned = before - merged.tests.len();
    report.kept = merged
        .tests
        .keys()
        .filter(|k| !updates.contains_key(*k))
        .count();
    for (id, u) in updates {
        let entry = match merged.tests.get(&id) {
            Some(old) if !u.reset && old.metric == u.measured.metric => {
                old.record(u.measured, keep, u.thresholds)
            }
            _ => Entry::first(u.measured),
        };
        merged.tests.insert(id, entry);
    }
    files::write_atomic(path, merged.to_text().as_bytes())?;
    Ok(report)
}

impl Baseline {
    fn clone_header(&self) -> Baseline {
        Baseline::new(&self.metric, &self.python, &self.platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const M: i64 = 1 << 20;

    fn tmpdir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "memline-baseline-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn t() -> Thresholds {
        Thresholds {
            tolerance: 0.0,
            noise_floor: M as u64,
        }
    }

    fn measured(peak: i64) -> Measured {
        Measured {
            metric: None,
            outcome: "passed".into(),
            function: "test_x".into(),
            filename: "tests/test_x.py".into(),
            peak_growth: peak,
            retained: None,
            lines: vec![
                Row {
                    line: 1,
                    contents: "def test_x():".into(),
                    increment: None,
                    peak: None,
                    occurrences: 0,
                    mem_usage: None,
                },
                Row {
                    line: 2,
                    contents: "    a = \"é\\t\" * 3".into(),
                    increment: Some(peak),
                    peak: Some(peak),
                    occurrences: 1,
                    mem_usage: Some(1 << 30),
                },
            ],
        }
    }

    fn updates(ids: &[(&str, i64)]) -> BTreeMap<String, Update> {
        ids.iter()
            .map(|(id, p)| {
                let u = Update {
                    measured: measured(*p),
                    thresholds: t(),
                    reset: false,
                };
                (id.to_string(), u)
            })
            .collect()
    }

    fn header() -> Baseline {
        Baseline::new("rss", "3.11.7", "linux-x86_64")
    }

    fn baseline(ids: &[(&str, i64)]) -> Baseline {
        let mut b = header();
        for (id, p) in ids {
            b.tests.insert(id.to_string(), Entry::first(measured(*p)));
        }
        b
    }

    fn save_all(path: &Path, ids: &[(&str, i64)]) -> SaveReport {
        save(path, header(), updates(ids), DEFAULT_KEEP, &BTreeSet::new()).unwrap()
    }

    #[test]
    fn text_roundtrips_and_is_stable() {
        let mut b = baseline(&[("t.py::b", 5), ("t.py::a[x-1]", -3)]);
        b.tests.get_mut("t.py::b").unwrap().metric = Some("heap".into());
        b.tests.get_mut("t.py::b").unwrap().peak_growth.push(6);
        let text = b.to_text();
        assert!(
            text.contains("\"metric\": \"heap\",\n      \"outcome\""),
            "{text}"
        );
        assert!(text.contains("\"peak_growth\": [5,6],"), "{text}");
        assert!(text.contains("\"increment\":[5],\"peak\":[5]}"), "{text}");
        assert_eq!(Baseline::parse(&text).unwrap(), b);
        assert_eq!(Baseline::parse(&text).unwrap().to_text(), text);
        assert!(text.find("t.py::a[x-1]").unwrap() < text.find("t.py::b").unwrap());
        let empty = Baseline::new("rss", "3.12", "linux");
        assert_eq!(Baseline::parse(&empty.to_text()).unwrap(), empty);
    }

    #[test]
    fn retained_samples_are_kept_and_a_run_without_them_keeps_the_old_ones() {
        let mut m = measured(5);
        m.retained = Some(3 * M);
        let e = Entry::first(m.clone());
        assert_eq!(e.retained, vec![3 * M]);
        m.retained = Some(3 * M + 4096);
        let e = e.record(m.clone(), 5, t());
        assert_eq!(e.retained, vec![3 * M, 3 * M + 4096]);
        m.retained = None;
        let e = e.record(m, 5, t());
        assert_eq!(e.retained, vec![3 * M, 3 * M + 4096]);
        let mut b = baseline(&[("t.py::a", 5)]);
        b.tests.insert("t.py::a".into(), e);
        let text = b.to_text();
        assert!(
            text.contains(&format!("\"retained\": [{},{}],", 3 * M, 3 * M + 4096)),
            "{text}"
        );
        assert_eq!(Baseline::parse(&text).unwrap(), b);
        // entries saved before retained memory was measured have none, and say nothing
        let old = baseline(&[("t.py::b", 1)]).to_text();
        assert!(!old.contains("retained"), "{old}");
        assert!(Baseline::parse(&old).unwrap().tests["t.py::b"]
            .retained
            .is_empty());
    }

    #[test]
    fn bad_files_are_named_precisely() {
        let text = baseline(&[("a", 1)]).to_text();
        let e = Baseline::parse(&text[..text.len() / 2]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = Baseline::parse("[1, 2]").unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = Baseline::parse("{\"format\": \"other\"}").unwrap_err();
        assert!(e.contains("not a pytest-memline baseline"), "{e}");
        let newer = text.replace("\"version\": 2", "\"version\": 7");
        let e = Baseline::parse(&newer).unwrap_err();
        assert!(
            e.contains("newer pytest-memline (format version 7; this one reads versions 1 to 2)"),
            "{e}"
        );
        let float = text.replace("\"version\": 2", "\"version\": 1.0");
        let e = Baseline::parse(&float).unwrap_err();
        assert_eq!(e, "its format version is 1.0, not a whole number (1 to 2)");
        let none = text.replace("\"version\": 2,", "");
        let e = Baseline::parse(&none).unwrap_err();
        assert_eq!(e, "it has no format version (\"version\")");
        let wrong = text.replace("\"peak_growth\"", "\"peak\"");
        let e = Baseline::parse(&wrong).unwrap_err();
        assert!(e.contains("do not match the format"), "{e}");
        let empty = text.replace("\"peak_growth\": [1]", "\"peak_growth\": []");
        let e = Baseline::parse(&empty).unwrap_err();
        assert!(e.contains("the entry of a has no samples"), "{e}");
        let e = Baseline::parse("not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    /// A version 1 file as pytest-memline 0.1 wrote it.
    const V1: &str = r#"{
  "format": "pytest-memline-baseline",
  "version": 1,
  "metric": "rss",
  "python": "3.11.7",
  "platform": "linux-x86_64",
  "tests": {
    "t.py::test_a": {
      "outcome": "passed",
      "function": "test_a",
      "filename": "t.py",
      "peak_growth": 10485760,
      "lines": [
        {"line":1,"contents":"def test_a():","increment":null,"peak":null,"occurrences":0,"mem_usage":null},
        {"line":2,"contents":"    a = bytearray(10 * 2**20)","increment":10485760,"peak":10485760,"occurrences":1,"mem_usage":52428800}
      ]
    }
  }
}
"#;

    #[test]
    fn version_1_files_load_as_one_sample_and_are_rewritten_by_a_save() {
        let (b, version) = Baseline::parse_versioned(V1).unwrap();
        assert_eq!(version, 1);
        let e = &b.tests["t.py::test_a"];
        assert_eq!(e.peak_growth, vec![10 * M]);
        assert_eq!(e.lines[1].increment, vec![10 * M]);
        assert_eq!(e.lines[1].mem_usage, Some(50 * M));
        assert!(!e.lines[0].ran() && e.lines[0].increment.is_empty());
        // a save of another test keeps the old entry, now in version 2
        let dir = tmpdir();
        let path = dir.join("baseline.json");
        fs::write(&path, V1).unwrap();
        let r = save_all(&path, &[("t.py::test_b", 3)]);
        assert_eq!((r.migrated_from, r.kept, r.written), (Some(1), 1, 1));
        let (after, version) = Baseline::load_versioned(&path).unwrap();
        assert_eq!(version, 2);
        assert_eq!(after.tests["t.py::test_a"], *e);
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("\"version\": 2,"));
    }

    #[test]
    fn save_merges_test_by_test_and_keeps_the_last_samples() {
        let dir = tmpdir();
        let path = dir.join("sub/baseline.json");
        let r = save_all(&path, &[("a", M), ("b", 2 * M)]);
        assert_eq!((r.written, r.kept), (2, 0));
        let r = save_all(&path, &[("b", 2 * M + 1), ("c", 3)]);
        assert_eq!((r.written, r.kept, r.backup), (2, 1, None));
        let b = Baseline::load(&path).unwrap();
        let peaks: Vec<_> = b
            .tests
            .iter()
            .map(|(k, e)| (k.as_str(), e.peak_growth.clone()))
            .collect();
        assert_eq!(
            peaks,
            vec![
                ("a", vec![M]),
                ("b", vec![2 * M, 2 * M + 1]),
                ("c", vec![3])
            ]
        );
        for i in 0..10 {
            save_all(&path, &[("b", 2 * M + i)]);
        }
        let b = Baseline::load(&path).unwrap();
        assert_eq!(
            b.tests["b"].peak_growth,
            (5..10).map(|i| 2 * M + i).collect::<Vec<_>>()
        );
        assert_eq!(b.tests["b"].lines[1].increment.len(), DEFAULT_KEEP);
        assert_eq!(
            Baseline::load(&dir.join("none.json")),
            Err(LoadError::Missing)
        );
    }

    #[test]
    fn reset_replaces_and_prune_removes() {
        let dir = tmpdir();
        let path = dir.join("baseline.json");
        save_all(&path, &[("a", M), ("b", M), ("gone", M)]);
        save_all(&path, &[("a", M), ("b", M)]);
        let mut u = updates(&[("a", 40 * M)]);
        u.get_mut("a").unwrap().reset = true;
        let prune: BTreeSet<String> = ["gone".to_string(), "a".to_string()].into();
        let r = save(&path, header(), u, DEFAULT_KEEP, &prune).unwrap();
        // "a" is saved in this run: pruning never removes what was just measured
        assert_eq!((r.written, r.kept, r.pruned), (1, 1, 1));
        let b = Baseline::load(&path).unwrap();
        assert_eq!(b.tests.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(b.tests["a"].peak_growth, vec![40 * M]);
        assert_eq!(b.tests["b"].peak_growth, vec![M, M]);
    }

    #[test]
    fn a_step_is_learnt_in_two_saves_and_noise_widens_the_band() {
        let t = t();
        // noise: appended, the band widens
        let s = push(&[10 * M, 10 * M], 13 * M, 5, t);
        assert_eq!(s, vec![10 * M, 10 * M, 13 * M]);
        // the next sample back in the band: kept as well
        assert_eq!(push(&s, 10 * M, 5, t).len(), 4);
        // two samples in a row 20 MiB up: a step, the older samples go
        assert_eq!(push(&s, 30 * M, 5, t), vec![13 * M, 30 * M]);
        let up = push(&[10 * M, 10 * M, 30 * M], 30 * M, 5, t);
        assert_eq!(up, vec![30 * M, 30 * M]);
        // and down
        let down = push(&[10 * M, 10 * M, 2 * M], 2 * M, 5, t);
        assert_eq!(down, vec![2 * M, 2 * M]);
        // one up, one down: not a step
        assert_eq!(push(&[10 * M, 10 * M, 30 * M], 2 * M, 5, t).len(), 4);
    }

    #[test]
    fn rows_keep_their_samples_by_contents() {
        let e = Entry::first(measured(4 * M));
        let mut m = measured(5 * M);
        // a comment added above shifts the row; an edited row starts again
        m.lines.insert(
            0,
            Row {
                line: 1,
                contents: "# note".into(),
                increment: None,
                peak: None,
                occurrences: 0,
                mem_usage: None,
            },
        );
        m.lines[2].line = 3;
        let e2 = e.record(m.clone(), 5, t());
        assert_eq!(e2.lines[2].line, 3);
        assert_eq!(e2.lines[2].increment, vec![4 * M, 5 * M]);
        assert_eq!(e2.peak_growth, vec![4 * M, 5 * M]);
        m.lines[2].contents = "    a = other()".into();
        let e3 = e2.record(m, 5, t());
        assert_eq!(e3.lines[2].increment, vec![5 * M]);
    }

    #[test]
    fn a_corrupt_file_is_kept_as_bak() {
        let dir = tmpdir();
        let path = dir.join("baseline.json");
        fs::write(&path, "{\"format\": \"pytest-memline-ba").unwrap();
        let r = save_all(&path, &[("a", 1)]);
        let (bak, why) = r.backup.unwrap();
        assert_eq!(bak, dir.join("baseline.json.bak"));
        assert!(why.contains("truncated"), "{why}");
        assert_eq!(
            fs::read_to_string(&bak).unwrap(),
            "{\"format\": \"pytest-memline-ba"
        );
        assert_eq!(Baseline::load(&path).unwrap().tests.len(), 1);
    }

    #[test]
    fn concurrent_savers_lose_nothing() {
        let dir = tmpdir();
        let path = dir.join("baseline.json");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let id = format!("t{t}::{i}");
                        save_all(&path, &[(id.as_str(), i)]);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(Baseline::load(&path).unwrap().tests.len(), 80);
    }
}
