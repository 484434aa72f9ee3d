//! The row of a memory table: one source line and what it measured. The only row type: the
//! tracer returns it, Python reads it (`pytest_memline.LineRow`, bindings in `pyrow.rs`),
//! baselines and reports serialise it, the diff aligns it. Rendering is Python's
//! (`pytest_memline/table.py`), in one place.

use pyo3::pyclass;
use serde::{Deserialize, Serialize};

/// One row. The numbers are `None` for lines that did not run; sizes are bytes.
#[pyclass(module = "pytest_memline._memline", name = "LineRow", frozen, eq)]
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
    /// A row of a line that ran, as the tracer measured it (its contents come from the source).
    pub fn measured(line: u32, increment: i64, peak: i64, mem_usage: i64, occurrences: u64) -> Row {
        Row {
            line,
            contents: String::new(),
            increment: Some(increment),
            peak: Some(peak),
            occurrences,
            mem_usage: Some(mem_usage),
        }
    }

    pub fn ran(&self) -> bool {
        self.occurrences > 0
    }

    /// What rows are aligned by.
    pub fn key(&self) -> &str {
        self.contents.trim()
    }
}
