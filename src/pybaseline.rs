//! Python bindings of baselines and table diffs. Tables cross the boundary as JSON text in the
//! baseline's entry format (see `baseline.rs`), so that there is one schema, checked in Rust.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use serde::Deserialize;

use crate::baseline::{self, Baseline, LoadError, Measured, Update};
use crate::diff::{self, Thresholds};

fn parse_measured(json: &str) -> PyResult<Measured> {
    serde_json::from_str(json).map_err(|e| PyValueError::new_err(format!("bad table record: {e}")))
}

/// A loaded baseline file.
#[pyclass(module = "pytest_memline._memline", name = "Baseline", frozen)]
pub struct PyBaseline {
    inner: Baseline,
    #[pyo3(get)]
    path: String,
    /// The format version the file was written in (1: migrated when loaded).
    #[pyo3(get)]
    version: u32,
}

#[pymethods]
impl PyBaseline {
    /// Loads and validates `path`. FileNotFoundError when missing; ValueError naming the file
    /// and what is wrong when unusable (truncated, wrong schema, newer format version).
    #[staticmethod]
    fn load(path: &str) -> PyResult<Self> {
        match Baseline::load_versioned(Path::new(path)) {
            Ok((inner, version)) => Ok(PyBaseline {
                inner,
                path: path.to_string(),
                version,
            }),
            Err(LoadError::Missing) => Err(PyFileNotFoundError::new_err(format!(
                "baseline {path} does not exist"
            ))),
            Err(LoadError::Corrupt(why) | LoadError::Unreadable(why)) => Err(
                PyValueError::new_err(format!("baseline {path} is unusable: {why}")),
            ),
        }
    }

    #[getter]
    fn metric(&self) -> &str {
        &self.inner.metric
    }

    #[getter]
    fn python(&self) -> &str {
        &self.inner.python
    }

    #[getter]
    fn platform(&self) -> &str {
        &self.inner.platform
    }

    fn test_ids(&self) -> Vec<String> {
        self.inner.tests.keys().cloned().collect()
    }

    /// How many saved runs the entry of `nodeid` holds (0: no entry).
    fn samples(&self, nodeid: &str) -> usize {
        self.inner.tests.get(nodeid).map_or(0, |e| e.samples())
    }

    fn __len__(&self) -> usize {
        self.inner.tests.len()
    }

    fn __contains__(&self, nodeid: &str) -> bool {
        self.inner.tests.contains_key(nodeid)
    }

    /// The entry of `nodeid` as JSON text, or None.
    fn entry_json(&self, nodeid: &str) -> PyResult<Option<String>> {
        self.inner
            .tests
            .get(nodeid)
            .map(|e| serde_json::to_string(e).map_err(|e| PyValueError::new_err(e.to_string())))
            .transpose()
    }

    /// Compares `current` (one run's entry as JSON text) with the entry of `nodeid`; None when
    /// the baseline has no entry for it. Returns `{"status", "old_peak_growth" (the highest
    /// sample), "samples", "changes": [{"line", "old_line", "contents", "what", "old", "new",
    /// "lo", "samples", "allowed"}], "diff": [(tag, LineRow or None, regressed), ...]}`.
    /// ValueError when the entry holds another metric than `metric`.
    #[pyo3(signature = (nodeid, current, *, tolerance, noise_floor, metric = "rss", context = 3))]
    #[allow(clippy::too_many_arguments)]
    fn compare<'py>(
        &self,
        py: Python<'py>,
        nodeid: &str,
        current: &str,
        tolerance: f64,
        noise_floor: u64,
        metric: &str,
        context: usize,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(old) = self.inner.tests.get(nodeid) else {
            return Ok(None);
        };
        let old_metric = self.inner.metric_of(old);
        if old_metric != metric {
            return Err(PyValueError::new_err(format!(
                "the baseline entry of {nodeid} in {} holds the {old_metric:?} metric and this \
                 test measures {metric:?}: comparing across metrics is refused; save the \
                 baseline again",
                self.path
            )));
        }
        let new = parse_measured(current)?;
        let t = Thresholds {
            tolerance,
            noise_floor,
        };
        let c = diff::compare(
            &old.lines,
            &old.peak_growth,
            &new.lines,
            new.peak_growth,
            t,
            context,
        );
        let d = PyDict::new(py);
        d.set_item("status", c.status)?;
        d.set_item("old_peak_growth", c.peak_growth.hi)?;
        d.set_item("samples", c.peak_growth.n)?;
        let changes = PyList::empty(py);
        for ch in &c.changes {
            let cd = PyDict::new(py);
            cd.set_item("line", ch.line)?;
            cd.set_item("old_line", ch.old_line)?;
            cd.set_item("contents", &ch.contents)?;
            cd.set_item("what", ch.what)?;
            cd.set_item("old", ch.old)?;
            cd.set_item("new", ch.new)?;
            cd.set_item("lo", ch.lo)?;
            cd.set_item("samples", ch.samples)?;
            cd.set_item("allowed", ch.allowed)?;
            changes.append(cd)?;
        }
        d.set_item("changes", changes)?;
        let lines = PyList::empty(py);
        for l in c.diff {
            let row = match l.row {
                Some(r) => Some(Py::new(py, r)?),
                None => None,
            };
            lines.append((l.tag.to_string(), row, l.regressed))?;
        }
        d.set_item("diff", lines)?;
        Ok(Some(d))
    }

    fn __repr__(&self) -> String {
        format!(
            "<Baseline {} ({} tests, metric {})>",
            self.path,
            self.inner.tests.len(),
            self.inner.metric
        )
    }
}

/// One test to save, as Python hands it over.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PyUpdate {
    table: Measured,
    tolerance: f64,
    noise_floor: u64,
    #[serde(default)]
    reset: bool,
}

/// Merges `entries` (JSON object: node id -> {"table": entry of one run, "tolerance",
/// "noise_floor", "reset"}) into the baseline at `path`, atomically, under a lock; each test
/// keeps its last `keep` samples; the entries of `prune` are removed. Returns `{"written",
/// "kept", "pruned", "backup", "backup_reason", "migrated_from"}`.
#[pyfunction]
#[pyo3(signature = (path, metric, python, platform, entries, *, keep = baseline::DEFAULT_KEEP, prune = Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn save_baseline<'py>(
    py: Python<'py>,
    path: &str,
    metric: &str,
    python: &str,
    platform: &str,
    entries: &str,
    keep: usize,
    prune: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    if keep == 0 {
        return Err(PyValueError::new_err("keep must be at least 1"));
    }
    let given: BTreeMap<String, PyUpdate> = serde_json::from_str(entries)
        .map_err(|e| PyValueError::new_err(format!("bad baseline entries: {e}")))?;
    let updates = given
        .into_iter()
        .map(|(id, u)| {
            let update = Update {
                measured: u.table,
                thresholds: Thresholds {
                    tolerance: u.tolerance,
                    noise_floor: u.noise_floor,
                },
                reset: u.reset,
            };
            (id, update)
        })
        .collect();
    let prune: BTreeSet<String> = prune.into_iter().collect();
    let header = Baseline::new(metric, python, platform);
    let report = baseline::save(Path::new(path), header, updates, keep, &prune)
        .map_err(PyOSError::new_err)?;
    let d = PyDict::new(py);
    d.set_item("written", report.written)?;
    d.set_item("kept", report.kept)?;
    d.set_item("pruned", report.pruned)?;
    let (bak, why) = report
        .backup
        .map(|(p, w)| (Some(p.display().to_string()), Some(w)))
        .unwrap_or((None, None));
    d.set_item("backup", bak)?;
    d.set_item("backup_reason", why)?;
    d.set_item("migrated_from", report.migrated_from)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBaseline>()?;
    m.add_function(wrap_pyfunction!(save_baseline, m)?)?;
    m.add("BASELINE_FORMAT", baseline::FORMAT)?;
    m.add("BASELINE_VERSION", baseline::VERSION)?;
    m.add("BASELINE_KEEP", baseline::DEFAULT_KEEP)?;
    Ok(())
}
