//! The `heap` metric: Python-visible allocated bytes from `tracemalloc` instead of RSS.
//!
//! `tracemalloc.get_traced_memory()` gives (current, peak) and `tracemalloc.reset_peak()` starts
//! a new peak interval, so a line's in-line peak is exact, like RSS's with `clear_refs`. The
//! numbers are the same on every run of the same code (no allocator caching, no page
//! granularity, nothing from other processes' page sharing), which is what strict gates need.
//! NumPy and other extensions that report their buffers to tracemalloc are counted too.
//!
//! Tracing starts tracemalloc if it is not running (and stops it again at the end), so every
//! trace counts only what was allocated during it. Each sample makes one call of each
//! function; the result tuple is released before the traced code resumes, so memline's own
//! reading never shows in the numbers.

use pyo3::ffi;
use pyo3::prelude::*;

use super::Meter;

pub struct HeapMeter {
    get_traced_memory: Py<PyAny>,
    reset_peak: Py<PyAny>,
    /// tracemalloc was started by us, and is stopped by `close`.
    started_here: bool,
}

impl HeapMeter {
    pub fn open(py: Python<'_>) -> PyResult<Self> {
        let tm = py.import("tracemalloc")?;
        let started_here = !tm.call_method0("is_tracing")?.is_truthy()?;
        if started_here {
            tm.call_method0("start")?;
        }
        Ok(HeapMeter {
            get_traced_memory: tm.getattr("get_traced_memory")?.unbind(),
            reset_peak: tm.getattr("reset_peak")?.unbind(),
            started_here,
        })
    }

    /// `(current, peak since the last reset)` in bytes; `None` if tracemalloc stopped meanwhile.
    #[inline]
    fn read(&self) -> Option<(u64, u64)> {
        // SAFETY: called with the GIL held (from the trace callbacks or from Python).
        unsafe {
            let t = ffi::PyObject_CallNoArgs(self.get_traced_memory.as_ptr());
            if t.is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            let mut out = None;
            if ffi::PyTuple_Check(t) != 0 && ffi::PyTuple_Size(t) == 2 {
                let current = ffi::PyLong_AsUnsignedLongLong(ffi::PyTuple_GetItem(t, 0));
                let peak = ffi::PyLong_AsUnsignedLongLong(ffi::PyTuple_GetItem(t, 1));
                if ffi::PyErr_Occurred().is_null() {
                    out = Some((current, peak.max(current)));
                } else {
                    ffi::PyErr_Clear();
                }
            }
            ffi::Py_DECREF(t);
            out
        }
    }
}

impl Meter for HeapMeter {
    #[inline]
    fn sample(&mut self) -> Option<(u64, u64)> {
        self.read()
    }

    fn failure(&self) -> &'static str {
        "tracemalloc stopped during the trace"
    }

    #[inline]
    fn reset_peak(&mut self) {
        // SAFETY: GIL held, as for `read`.
        unsafe {
            let r = ffi::PyObject_CallNoArgs(self.reset_peak.as_ptr());
            if r.is_null() {
                ffi::PyErr_Clear();
            } else {
                ffi::Py_DECREF(r);
            }
        }
    }

    fn begin(&mut self) -> Result<u64, String> {
        self.reset_peak();
        self.read()
            .map(|(current, _)| current)
            .ok_or_else(|| "memline: cannot read tracemalloc".to_string())
    }

    fn name(&self) -> &'static str {
        "heap"
    }

    fn source(&self) -> &'static str {
        "tracemalloc"
    }

    /// tracemalloc's peak is exact.
    fn exact_peak(&self) -> bool {
        true
    }

    fn peak_note(&self) -> Option<String> {
        None
    }

    /// Stops tracemalloc if this meter started it.
    fn close(self, py: Python<'_>, _clean: bool) -> PyResult<()> {
        if self.started_here {
            py.import("tracemalloc")?.call_method0("stop")?;
        }
        Ok(())
    }
}
