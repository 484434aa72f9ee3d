//! Python bindings of the row (`pytest_memline.LineRow`).

use pyo3::prelude::*;
use pyo3::types::PyDict;

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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Row>()
}
