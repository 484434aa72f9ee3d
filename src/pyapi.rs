//! Thin Python bindings of the pure-Rust helpers (sizes, config).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pyo3::exceptions::{PyOSError, PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::config::{self, Kind, Parsed, Schema, Spec};
use crate::files;
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
        return u64::try_from(n)
            .ok()
            .filter(|&b| b <= size::MAX_SIZE)
            .ok_or_else(|| {
                if n < 0 {
                    PyValueError::new_err(format!("{n}: a size cannot be negative"))
                } else {
                    PyOverflowError::new_err(format!(
                        "{n}: too large (sizes are at most 2^63 - 1 bytes, 8 EiB)"
                    ))
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

/// A key of the schema as Python hands it over, `(name, kind, arg)`: `kind` is "bool",
/// "size", "percent", "text", "modules", "globs", "choice" (`arg`: the choices) or "whole"
/// (`arg`: `(low, high or None)`).
fn spec(name: String, kind: &str, arg: Option<&Bound<'_, PyAny>>) -> PyResult<Spec> {
    let kind = match kind {
        "bool" => Kind::Bool,
        "size" => Kind::Size,
        "percent" => Kind::Percent,
        "text" => Kind::Text,
        "modules" => Kind::Modules,
        "globs" => Kind::Globs,
        "choice" => Kind::Choice(
            arg.ok_or_else(|| PyValueError::new_err(format!("{name}: choices missing")))?
                .extract()?,
        ),
        "whole" => {
            let (low, high): (u32, Option<u32>) = arg
                .ok_or_else(|| PyValueError::new_err(format!("{name}: bounds missing")))?
                .extract()?;
            Kind::Whole(low, high)
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "{name}: unknown kind {other:?}"
            )))
        }
    };
    Ok(Spec { name, kind })
}

fn specs(given: &Bound<'_, PyAny>) -> PyResult<Vec<Spec>> {
    let mut out = Vec::new();
    for item in given.try_iter()? {
        let item = item?;
        let name: String = item.get_item(0)?.extract()?;
        let kind: String = item.get_item(1)?.extract()?;
        let arg = item.get_item(2)?;
        let arg = if arg.is_none() { None } else { Some(&arg) };
        out.push(spec(name, &kind, arg)?);
    }
    Ok(out)
}

fn parsed<'py>(py: Python<'py>, v: &Parsed) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Parsed::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Parsed::Int(n) => n.into_pyobject(py)?.into_any(),
        Parsed::Float(f) => f.into_pyobject(py)?.into_any(),
        Parsed::Text(s) => s.into_pyobject(py)?.into_any(),
        Parsed::List(l) => PyList::new(py, l)?.into_any(),
    })
}

fn values_dict<'py>(
    py: Python<'py>,
    specs: &[Spec],
    values: &std::collections::BTreeMap<String, Parsed>,
    extra: &[&str],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for name in extra
        .iter()
        .copied()
        .chain(specs.iter().map(|s| s.name.as_str()))
    {
        match values.get(name) {
            Some(v) => d.set_item(name, parsed(py, v)?)?,
            None => d.set_item(name, py.None())?,
        }
    }
    Ok(d)
}

/// `[tool.memline]` of a pyproject.toml's text as a dict (every key of `keys`, None when not
/// set, and "limits": a list of dicts with "match", "fixture" and every key of `rule_keys`), or None when
/// there is none. Raises ValueError naming `file`, the key and the value. `keys` and
/// `rule_keys`: the schema, from pytest_memline/_keys.py.
#[pyfunction]
fn parse_pyproject<'py>(
    py: Python<'py>,
    text: &str,
    file: &str,
    keys: &Bound<'py, PyAny>,
    rule_keys: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let schema = Schema {
        keys: specs(keys)?,
        rule_keys: specs(rule_keys)?,
    };
    let c = match config::parse_pyproject(text, file, &schema) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => return Err(PyValueError::new_err(e)),
    };
    let d = values_dict(py, &schema.keys, &c.values, &[])?;
    let rules = PyList::empty(py);
    for r in &c.limits {
        rules.append(values_dict(
            py,
            &schema.rule_keys,
            r,
            &["match", "fixture"],
        )?)?;
    }
    d.set_item("limits", rules)?;
    Ok(Some(d))
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

/// Writes `text` to `path` atomically, under the rules of every file memline writes (no
/// directory, device or FIFO replaced; symlinks written through; the old file's permissions
/// kept). Returns the file written. OSError with the path and the reason.
#[pyfunction]
fn write_file(py: Python<'_>, path: &str, text: &str) -> PyResult<String> {
    let data = text.as_bytes();
    py.detach(|| files::write_atomic(std::path::Path::new(path), data))
        .map(|p| p.display().to_string())
        .map_err(PyOSError::new_err)
}

/// ValueError when `path` is a place memline will not write (a directory, a device, a FIFO, a
/// dangling symlink, an empty path): checked before the run, so that no run is wasted.
#[pyfunction]
fn check_write_path(path: &str) -> PyResult<()> {
    files::write_target(std::path::Path::new(path))
        .map(|_| ())
        .map_err(PyValueError::new_err)
}

/// ValueError when `path` exists and is not a regular file memline can read (checked before a
/// run that compares with it).
#[pyfunction]
fn check_read_path(path: &str) -> PyResult<()> {
    let p = std::path::Path::new(path);
    match std::fs::metadata(p) {
        Ok(m) if !m.is_file() => Err(PyValueError::new_err(format!(
            "{path} is {}, not a regular file",
            files::kind_of(&m)
        ))),
        _ => Ok(()),
    }
}

/// The process's real peak RSS so far, in bytes (None without procfs). memline resets the
/// kernel's counter (VmHWM, and so `ru_maxrss` and `/usr/bin/time`) before traced lines; this
/// is what the counter would read without memline: its value now, the marks erased outside
/// traced lines and the highs inside them.
#[pyfunction]
fn process_peak() -> Option<u64> {
    crate::rss::process_peak()
}

/// The memory memline keeps resident in this process so that the exact peak works under an
/// inherited `ru_maxrss` floor (bytes; 0 in most processes, a few MiB in an xdist worker).
#[pyfunction]
fn ballast() -> u64 {
    crate::rss::ballast()
}

/// The process's RSS now (bytes), read as traces read it (`reader`: "auto", "procfs" or
/// "portable"): what memline measures around a test, outside its trace.
#[pyfunction]
#[pyo3(signature = (reader = "auto"))]
fn rss_now(reader: &str) -> PyResult<u64> {
    let kind = ReaderKind::parse(reader).map_err(PyValueError::new_err)?;
    crate::meter::rss::rss_now(kind).map_err(PyRuntimeError::new_err)
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

/// Thread starts seen by memline's audit hook (`_thread.start_new_thread` and, 3.13+,
/// `_thread.start_joinable_thread`).
static THREAD_STARTS: AtomicU64 = AtomicU64::new(0);
static AUDITING: AtomicBool = AtomicBool::new(false);

type AuditHook = unsafe extern "C" fn(*const c_char, *mut ffi::PyObject, *mut c_void) -> c_int;

extern "C" {
    fn PySys_AddAuditHook(hook: AuditHook, user_data: *mut c_void) -> c_int;
}

/// Counts thread starts. A C hook: CPython calls every audit hook on every audited event of
/// the process (`open`, `compile`, `sys._getframe`, imports...), and a Python hook costs a
/// Python call on each (0.13 million instructions a test on numpy's suite, bench/fixedcost.py);
/// this one compares a byte or two. No allocation, never raises.
unsafe extern "C" fn count_thread_start(
    event: *const c_char,
    _args: *mut ffi::PyObject,
    _user_data: *mut c_void,
) -> c_int {
    // SAFETY: CPython passes a NUL-terminated event name.
    if !event.is_null() && unsafe { *event } == b'_' as c_char {
        let name = unsafe { CStr::from_ptr(event) }.to_bytes();
        if name == b"_thread.start_new_thread" || name == b"_thread.start_joinable_thread" {
            THREAD_STARTS.fetch_add(1, Ordering::Relaxed);
        }
    }
    0
}

/// How many threads this process has started since memline first asked (the first call adds
/// the audit hook that counts them; hooks cannot be removed, so it is added once).
#[pyfunction]
fn thread_starts() -> PyResult<u64> {
    if !AUDITING.swap(true, Ordering::Relaxed) {
        // SAFETY: the hook is a plain function that lives as long as the process.
        if unsafe { PySys_AddAuditHook(count_thread_start, std::ptr::null_mut()) } != 0 {
            AUDITING.store(false, Ordering::Relaxed);
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "memline: could not add the audit hook that counts thread starts",
            ));
        }
    }
    Ok(THREAD_STARTS.load(Ordering::Relaxed))
}

/// In a forked child: maps the file-backed pages the parent has mapped (see `prefault.rs`), so
/// that the child's RSS starts where the parent's was and its code does not fault in again.
/// How many pages, or None when that cannot be done here.
#[pyfunction]
fn _prefault_like_parent() -> Option<u64> {
    crate::prefault::like_parent()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_prefault_like_parent, m)?)?;
    m.add_function(wrap_pyfunction!(probe_reader, m)?)?;
    m.add_function(wrap_pyfunction!(trim_malloc, m)?)?;
    m.add_function(wrap_pyfunction!(thread_starts, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(process_peak, m)?)?;
    m.add_function(wrap_pyfunction!(rss_now, m)?)?;
    m.add_function(wrap_pyfunction!(ballast, m)?)?;
    m.add_function(wrap_pyfunction!(check_write_path, m)?)?;
    m.add_function(wrap_pyfunction!(check_read_path, m)?)?;
    m.add_function(wrap_pyfunction!(pin_malloc, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(parse_percent, m)?)?;
    m.add_function(wrap_pyfunction!(parse_pyproject, m)?)?;
    m.add("SIZE_FORMS", size::SIZE_FORMS)?;
    m.add("METRICS", crate::meter::METRICS.to_vec())?;
    Ok(())
}
