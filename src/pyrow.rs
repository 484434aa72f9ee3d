//! Python bindings of the row (`pytest_memline.LineRow`).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::row::Row;

#[pymethods]
impl Row {
    #[new]
    #[pyo3(signature = (lineno, contents, mem_usage = None, increment = None, peak = None, occurrences = 0))]
    fn new(
        lineno: u32,
        contents: String,
        mem_usage: Option<i64>,
        increment: Option<i64>,
        peak: Option<i64>,
        occurrences: u64,
    ) -> Row {
        Row {
            line: lineno,
            contents,
            increment,
            peak,
            occurrences,
            mem_usage,
        }
    }

    /// The line's number in its file.
    #[getter]
    fn lineno(&self) -> u32 {
        self.line
    }

    /// The source line.
    #[getter(contents)]
    fn py_contents(&self) -> &str {
        &self.contents
    }

    /// RSS when the line last finished (bytes), or None if it did not run.
    #[getter(mem_usage)]
    fn py_mem_usage(&self) -> Option<i64> {
        self.mem_usage
    }

    /// Sum over the line's occurrences of RSS after minus RSS before (bytes).
    #[getter(increment)]
    fn py_increment(&self) -> Option<i64> {
        self.increment
    }

    /// Highest RSS while the line ran minus RSS when it started, over its occurrences.
    #[getter(peak)]
    fn py_peak(&self) -> Option<i64> {
        self.peak
    }

    /// How many times the line ran.
    #[getter(occurrences)]
    fn py_occurrences(&self) -> u64 {
        self.occurrences
    }

    /// Whether the line ran.
    #[getter(ran)]
    fn py_ran(&self) -> bool {
        self.ran()
    }

    /// The row as a JSON-ready dict (the baseline's and the report's row format).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("line", self.line)?;
        d.set_item("contents", &self.contents)?;
        d.set_item("increment", self.increment)?;
        d.set_item("peak", self.peak)?;
        d.set_item("occurrences", self.occurrences)?;
        d.set_item("mem_usage", self.mem_usage)?;
        Ok(d)
    }

    /// A row from `to_dict`'s form (`occurrences` and the numbers may be missing).
    #[staticmethod]
    fn from_dict(d: &Bound<'_, PyAny>) -> PyResult<Row> {
        let opt = |key: &str| -> PyResult<Option<i64>> {
            match d.get_item(key) {
                Ok(v) if !v.is_none() => Ok(Some(v.extract()?)),
                _ => Ok(None),
            }
        };
        let occurrences = match d.get_item("occurrences") {
            Ok(v) if !v.is_none() => v.extract()?,
            _ => 0,
        };
        Ok(Row {
            line: d.get_item("line")?.extract()?,
            contents: d.get_item("contents")?.extract()?,
            increment: opt("increment")?,
            peak: opt("peak")?,
            occurrences,
            mem_usage: opt("mem_usage")?,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "LineRow(lineno={}, contents={:?}, mem_usage={:?}, increment={:?}, peak={:?}, occurrences={})",
            self.line, self.contents, self.mem_usage, self.increment, self.peak, self.occurrences
        )
    }
}

/// The rows of a function's table: one per line of `source` (the function's source lines, the
/// first numbered `first`), each with the numbers of the row of `measured` (rows of the lines
/// that ran, without contents, as a trace gives them) for its line, if any. Built here, not in
/// Python: a row per source line on every test made the table the largest part of memline's
/// Python time per test on numpy's suite (a constructor call per row).
#[pyfunction]
fn table_rows<'py>(
    py: Python<'py>,
    first: u32,
    source: &Bound<'py, PyList>,
    measured: Vec<PyRef<'py, Row>>,
) -> PyResult<Bound<'py, PyTuple>> {
    // the measured row of each source line, by its offset from `first` (the last one wins)
    let mut at: Vec<Option<usize>> = vec![None; source.len()];
    for (k, m) in measured.iter().enumerate() {
        if let Some(slot) = m
            .line
            .checked_sub(first)
            .and_then(|off| at.get_mut(off as usize))
        {
            *slot = Some(k);
        }
    }
    let mut rows = Vec::with_capacity(source.len());
    for (i, text) in source.iter().enumerate() {
        let line = u32::try_from(i)
            .ok()
            .and_then(|i| first.checked_add(i))
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err("line number overflow"))?;
        let contents: String = text.extract()?;
        let row = match at.get(i).copied().flatten().and_then(|k| measured.get(k)) {
            Some(m) => Row {
                line,
                contents,
                increment: m.increment,
                peak: m.peak,
                occurrences: m.occurrences,
                mem_usage: m.mem_usage,
            },
            None => Row {
                line,
                contents,
                increment: None,
                peak: None,
                occurrences: 0,
                mem_usage: None,
            },
        };
        rows.push(Py::new(py, row)?);
    }
    PyTuple::new(py, rows)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Row>()?;
    m.add_function(wrap_pyfunction!(table_rows, m)?)
}
