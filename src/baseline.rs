//! Baseline files: a documented JSON format, validated on load, merged test by test and written
//! atomically under a lock, so that concurrent savers never corrupt or drop each other's entries.
//!
//! ```json
//! {
//!   "format": "pytest-memline-baseline",
//!   "version": 1,
//!   "metric": "rss",
//!   "python": "3.11.7",
//!   "platform": "linux-x86_64",
//!   "tests": {
//!     "tests/test_x.py::test_y": {
//!       "outcome": "passed",
//!       "function": "test_y",
//!       "filename": "tests/test_x.py",
//!       "peak_growth": 83886080,
//!       "lines": [
//!         {"line": 3, "contents": "def test_y():", "increment": null, "peak": null, "occurrences": 0, "mem_usage": null},
//!         {"line": 4, "contents": "    a = bytearray(80 * 2**20)", "increment": 83886080, "peak": 83886080, "occurrences": 1, "mem_usage": 125829120}
//!       ]
//!     }
//!   }
//! }
//! ```
//! Keys come in this order, tests sorted by node id, one line-row per line: the file diffs well.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diff::Row;

pub const FORMAT: &str = "pytest-memline-baseline";
pub const VERSION: u32 = 1;

/// One test's entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Set when this test was measured with another metric than the file's (a marker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub outcome: String,
    pub function: String,
    pub filename: String,
    pub peak_growth: i64,
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

/// Why a baseline could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Missing,
    /// Unreadable, not JSON, wrong schema, newer format: the text says which.
    Corrupt(String),
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

    /// Parses and validates a baseline's text.
    pub fn parse(text: &str) -> Result<Self, String> {
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
        match obj.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) if v > u64::from(VERSION) => {
                return Err(format!(
                    "it was written by a newer pytest-memline (format version {v}; this one reads version {VERSION}): upgrade pytest-memline"
                ))
            }
            other => {
                return Err(format!(
                    "unsupported format version {}",
                    other.map_or("(missing)".into(), |v| v.to_string())
                ))
            }
        }
        serde_json::from_value(value)
            .map_err(|e| format!("its contents do not match the format ({e})"))
    }

    /// The metric of a test's entry (its own, else the file's).
    pub fn metric_of<'a>(&'a self, entry: &'a Entry) -> &'a str {
        entry.metric.as_deref().unwrap_or(&self.metric)
    }

    /// Loads a baseline file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(e) => return Err(LoadError::Corrupt(format!("it cannot be read ({e})"))),
        };
        Self::parse(&text).map_err(LoadError::Corrupt)
    }

    /// The file's text: stable key order, one line per table row, trailing newline.
    pub fn to_text(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
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
            out.push_str(&format!("      \"peak_growth\": {},\n", e.peak_growth));
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

/// What `save` did besides writing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SaveReport {
    pub written: usize,
    pub kept: usize,
    /// Set when an existing file was unusable and was moved aside, with where it went.
    pub backup: Option<(PathBuf, String)>,
}

/// Holds an exclusive lock on `<path>.lock` while alive.
struct Lock {
    file: File,
}

impl Lock {
    fn acquire(path: &Path) -> Result<Self, String> {
        let lock_path = sibling(path, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
        file.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Merges `entries` into the baseline at `path` (creating it and its folder if needed) and
/// writes it atomically (temp file + rename) under a lock. Entries of other tests are kept.
/// An unusable existing file is never overwritten: it is moved to `<path>.bak` first.
pub fn save(path: &Path, fresh: Baseline) -> Result<SaveReport, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _lock = Lock::acquire(path)?;
    let mut report = SaveReport::default();
    let mut merged = match Baseline::load(path) {
        Ok(existing) if existing.metric != fresh.metric => {
            let why = format!(
                "it holds the {:?} metric and this run measured {:?}",
                existing.metric, fresh.metric
            );
            report.backup = Some((backup(path)?, why));
            fresh.clone_header()
        }
        Ok(mut existing) => {
            existing.python = fresh.python.clone();
            existing.platform = fresh.platform.clone();
            existing
        }
        Err(LoadError::Missing) => fresh.clone_header(),
        Err(LoadError::Corrupt(why)) => {
            report.backup = Some((backup(path)?, why));
            fresh.clone_header()
        }
    };
    report.written = fresh.tests.len();
    report.kept = merged
        .tests
        .keys()
        .filter(|k| !fresh.tests.contains_key(*k))
        .count();
    merged.tests.extend(fresh.tests);
    write_atomic(path, merged.to_text().as_bytes())?;
    Ok(report)
}

impl Baseline {
    fn clone_header(&self) -> Baseline {
        Baseline::new(&self.metric, &self.python, &self.platform)
    }
}

fn backup(path: &Path) -> Result<PathBuf, String> {
    let bak = sibling(path, ".bak");
    fs::rename(path, &bak).map_err(|e| {
        format!(
            "cannot move the unusable baseline {} aside to {}: {e}",
            path.display(),
            bak.display()
        )
    })?;
    Ok(bak)
}

/// Writes `data` to a temp file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = sibling(path, &format!(".tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    fn entry(peak: i64) -> Entry {
        Entry {
            metric: None,
            outcome: "passed".into(),
            function: "test_x".into(),
            filename: "tests/test_x.py".into(),
            peak_growth: peak,
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

    fn baseline(ids: &[(&str, i64)]) -> Baseline {
        let mut b = Baseline::new("rss", "3.11.7", "linux-x86_64");
        for (id, p) in ids {
            b.tests.insert(id.to_string(), entry(*p));
        }
        b
    }

    #[test]
    fn text_roundtrips_and_is_stable() {
        let mut b = baseline(&[("t.py::b", 5), ("t.py::a[x-1]", -3)]);
        b.tests.get_mut("t.py::b").unwrap().metric = Some("heap".into());
        let text = b.to_text();
        assert!(
            text.contains("\"metric\": \"heap\",\n      \"outcome\""),
            "{text}"
        );
        assert_eq!(Baseline::parse(&text).unwrap(), b);
        assert_eq!(Baseline::parse(&text).unwrap().to_text(), text);
        assert!(text.find("t.py::a[x-1]").unwrap() < text.find("t.py::b").unwrap());
        let empty = Baseline::new("rss", "3.12", "linux");
        assert_eq!(Baseline::parse(&empty.to_text()).unwrap(), empty);
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
        let newer = text.replace("\"version\": 1", "\"version\": 7");
        let e = Baseline::parse(&newer).unwrap_err();
        assert!(e.contains("newer pytest-memline (format version 7"), "{e}");
        let wrong = text.replace("\"peak_growth\"", "\"peak\"");
        let e = Baseline::parse(&wrong).unwrap_err();
        assert!(e.contains("do not match the format"), "{e}");
        let e = Baseline::parse("not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn save_merges_test_by_test() {
        let dir = tmpdir();
        let path = dir.join("sub/baseline.json");
        let r = save(&path, baseline(&[("a", 1), ("b", 2)])).unwrap();
        assert_eq!((r.written, r.kept), (2, 0));
        let r = save(&path, baseline(&[("b", 20), ("c", 3)])).unwrap();
        assert_eq!((r.written, r.kept, r.backup), (2, 1, None));
        let b = Baseline::load(&path).unwrap();
        let peaks: Vec<_> = b
            .tests
            .iter()
            .map(|(k, e)| (k.as_str(), e.peak_growth))
            .collect();
        assert_eq!(peaks, vec![("a", 1), ("b", 20), ("c", 3)]);
        assert_eq!(
            Baseline::load(&dir.join("none.json")),
            Err(LoadError::Missing)
        );
    }

    #[test]
    fn a_corrupt_file_is_kept_as_bak() {
        let dir = tmpdir();
        let path = dir.join("baseline.json");
        fs::write(&path, "{\"format\": \"pytest-memline-ba").unwrap();
        let r = save(&path, baseline(&[("a", 1)])).unwrap();
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
                        save(&path, baseline(&[(id.as_str(), i)])).unwrap();
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
