//! Thin Python bindings of the pure-Rust helpers (sizes, config).

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::config::{self, Config, LimitRule};
use crate::rss::{ReaderKind, RssReader};
use crate::size;

/// Bytes from a size string ("60MiB", "1.5 GiB", "100") or a non-negative int.
#[pyfunction]
fn parse_size(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(s) = value.extract::<String>() {
        return size::parse_size(&s).map_err(|e| PyValueError::new_err(e.to_string()));
    }
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyValueError::new_err(format!(
            "{}: not a size",
            value.repr()?
        )));
    }
    if let Ok(n) = value.extract::<i128>() {
        return u64::try_from(n).map_err(|_| {
            if n < 0 {
                PyValueError::new_err(format!("{n}: a size cannot be negative"))
            } else {
                PyOverflowError::new_err(format!("{n}: too large"))
            }
        });
    }
    Err(PyValueError::new_err(format!(
        "{}: not a size",
        value.repr()?
    )))
}

/// A fraction from a percentage string ("10%" -> 0.1).
#[pyfunction]
fn parse_percent(value: &str) -> PyResult<f64> {
    size::parse_percent(value).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Bytes as text: "152.6 MiB", "50 MiB", "100 B".
#[pyfunction]
fn format_size(bytes: i64) -> String {
    size::format_size(bytes)
}

fn rule_dict<'py>(py: Python<'py>, r: &LimitRule) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("match", &r.pattern)?;
    d.set_item("test_limit", r.test_limit)?;
    d.set_item("line_limit", r.line_limit)?;
    d.set_item("tolerance", r.tolerance)?;
    d.set_item("noise_floor", r.noise_floor)?;
    Ok(d)
}

fn config_dict<'py>(py: Python<'py>, c: &Config) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("enabled", c.enabled)?;
    d.set_item("test_limit", c.test_limit)?;
    d.set_item("line_limit", c.line_limit)?;
    d.set_item("tables", c.tables.as_deref())?;
    d.set_item("top", c.top)?;
    d.set_item("peak", c.peak)?;
    d.set_item("metric", c.metric.as_deref())?;
    d.set_item("baseline", c.baseline.as_deref())?;
    d.set_item("tolerance", c.tolerance)?;
    d.set_item("noise_floor", c.noise_floor)?;
    d.set_item("samples", c.samples)?;
    d.set_item("confirm", c.confirm)?;
    d.set_item("accept", c.accept.clone())?;
    d.set_item("isolate", c.isolate.as_deref())?;
    d.set_item("include", c.include.clone())?;
    d.set_item("malloc", c.malloc.as_deref())?;
    let rules = PyList::empty(py);
    for r in &c.limits {
        rules.append(rule_dict(py, r)?)?;
    }
    d.set_item("limits", rules)?;
    Ok(d)
}

/// `[tool.memline]` of a pyproject.toml's text as a dict, or None when there is none.
/// Raises ValueError naming `file`, the key and the value.
#[pyfunction]
fn parse_pyproject<'py>(
    py: Python<'py>,
    text: &str,
    file: &str,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    match config::parse_pyproject(text, file) {
        Ok(Some(c)) => config_dict(py, &c).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(PyValueError::new_err(e)),
    }
}

/// What the RSS reader can do here: `{"reader": ..., "exact_peak": ..., "note": ...}`.
#[pyfunction]
#[pyo3(signature = (reader = "auto", peak = true))]
fn probe_reader<'py>(py: Python<'py>, reader: &str, peak: bool) -> PyResult<Bound<'py, PyDict>> {
    let kind = ReaderKind::parse(reader).map_err(PyValueError::new_err)?;
    let r = RssReader::open(kind, peak).map_err(pyo3::exceptions::PyRuntimeError::new_err)?;
    let d = PyDict::new(py);
    d.set_item("reader", r.describe())?;
    d.set_item("exact_peak", r.exact_peak())?;
    d.set_item("note", r.peak_unavailable.as_deref())?;
    Ok(d)
}

/// Fixes glibc's mmap and trim thresholds at `bytes` (`mallopt`), which also turns off their
/// dynamic adjustment: blocks of that size or more are mapped on their own and unmapped when
/// freed, and free memory above the heap's top goes back to the kernel past that size. Left
/// dynamic, the thresholds rise each time a large block is freed, and whether a growing buffer
/// (a list's items) is moved within the heap, leaving its old copy resident, depends on what
/// ran before: the same line measured 15.8 or 17.5 MiB between runs. False where there is no
/// glibc malloc.
#[pyfunction]
fn pin_malloc(bytes: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, bytes) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

/// Returns the free memory of glibc's heaps to the kernel (`malloc_trim(0)`, which also releases
/// free pages in the middle of a heap). False where there is no glibc malloc.
#[pyfunction]
fn trim_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases memory that malloc holds free.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(probe_reader, m)?)?;
    m.add_function(wrap_pyfunction!(trim_malloc, m)?)?;
    m.add_function(wrap_pyfunction!(pin_malloc, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(parse_percent, m)?)?;
    m.add_function(wrap_pyfunction!(format_size, m)?)?;
    m.add_function(wrap_pyfunction!(parse_pyproject, m)?)?;
    m.add("SIZE_FORMS", size::SIZE_FORMS)?;
    m.add("MAX_SAMPLES", config::MAX_SAMPLES)?;
    m.add("MAX_CONFIRM", config::MAX_CONFIRM)?;
    Ok(())
}
