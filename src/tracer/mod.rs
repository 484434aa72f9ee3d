//! The line tracer: start/stop, the trace callbacks, and the previous tracer saved and restored.
//!
//! Two backends:
//! - `settrace`: a C trace function installed with `PyEval_SetTrace` (the only choice on 3.11).
//!   It sees every event of the thread; for frames that are not traced it costs one pointer
//!   compare (line events) or one code-object lookup (call events). It chains to the trace
//!   function that was installed before (coverage's C tracer, say), so both keep working.
//!   On 3.11, when it is alone, the functions the traced code calls run untraced altogether
//!   (`quiet`: a frame-evaluation hook turns the thread's tracing flag off for them).
//! - `monitoring` (3.12+): `sys.monitoring` with a free tool id, LINE/PY_* events enabled on the
//!   traced code objects only, so code elsewhere pays nothing.
//!
//! The state of the one running trace lives in a GIL-guarded global: every access happens with
//! the GIL held (trace callbacks and the Python-facing functions alike), and nothing in here
//! calls back into arbitrary Python code while it holds a reference to the state, except the
//! chained previous tracer, which is called before the state is borrowed.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCode, PyList, PyTuple};

use crate::lines::Recorder;
use crate::meter::{self, AnyMeter, Meter};
use crate::row::Row;
use crate::rss::ReaderKind;

mod monitoring;
mod settrace;

use self::monitoring::{install_monitoring, uninstall_monitoring};
use self::settrace::{install_settrace, uninstall_settrace, TraceHandle};

#[cfg(all(Py_3_11, not(Py_3_12), not(PyPy)))]
mod quiet;
/// Elsewhere callees are already untraced (`sys.monitoring`) or the hook does not apply.
#[cfg(not(all(Py_3_11, not(Py_3_12), not(PyPy))))]
mod quiet {
    pub(super) fn install(_words: &[usize], _trace_func: usize) {}
    pub(super) fn uninstall() {}
    pub(super) fn active() -> bool {
        false
    }
}

/// Pre-sized per-function line slots: functions shorter than this never allocate on a line.
const LINE_SLOTS: usize = 256;
/// How many words of `PyThreadState` to scan for the trace-function slot.
const TSTATE_WORDS: usize = 40;
/// `PYTEST_MEMLINE_TRACE_CALLEES=1`: on 3.11, run the traced code's callees on the trace
/// function's path too (no frame-evaluation hook; see `quiet`), as before that hook existed.
const TRACE_CALLEES_ENV: &str = "PYTEST_MEMLINE_TRACE_CALLEES";
/// At most this many suspended generator/coroutine activations are remembered.
const MAX_SUSPENDED: usize = 64;

const CO_GENERATOR_LIKE: c_int = ffi::CO_GENERATOR | ffi::CO_COROUTINE | ffi::CO_ASYNC_GENERATOR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SetTrace,
    Monitoring,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::SetTrace => "settrace",
            Backend::Monitoring => "monitoring",
        }
    }
}

/// One activation of a traced function: which function, and which frame (settrace) or code
/// object (monitoring) it belongs to.
#[derive(Clone, Copy, Debug)]
struct Activation {
    func: usize,
    key: usize,
}

struct Session {
    recorder: Recorder,
    /// What is measured (see `crate::meter`).
    meter: AnyMeter,
    backend: Backend,
    /// Traced code objects (strong references), and their raw pointers for the lookups.
    codes: Vec<Py<PyAny>>,
    code_ptrs: Vec<*mut ffi::PyObject>,
    generator_like: Vec<bool>,
    /// Traced activations, innermost last; suspended generators/coroutines aside.
    stack: Vec<Activation>,
    suspended: Vec<Activation>,
    /// settrace: the trace function and object that were installed before ours.
    prev_func: Option<ffi::Py_tracefunc>,
    prev_obj: Option<Py<PyAny>>,
    handle: Option<Py<PyAny>>,
    /// The word of the thread state that holds the C trace function (settrace backend), to
    /// tell at the end whether ours was still installed.
    trace_slot: Option<usize>,
    /// Set when our C function had been replaced by a Python-level trampoline around our
    /// handle and was put back at a call event (see `TraceHandle::__call__`): the test's line
    /// that was open then, whose numbers hold what the untraced lines used.
    lost_at: Option<Option<u32>>,
    chain_note: Option<String>,
    /// monitoring: why memline gave its tool id up mid-test and stopped tracing (the line is
    /// in `lost_at`).
    gave_way: Option<String>,
    /// monitoring: our tool id, and the thread being traced.
    tool_id: Option<u8>,
    thread: *mut ffi::PyThreadState,
    /// The first problem met inside a callback, raised or reported when the trace stops.
    error: Option<&'static str>,
    /// `include`: functions whose file is one of these (a path ending in `/` is a folder, one
    /// ending in `*` a prefix: `<doctest mod.f[*` is the examples of one doctest) are
    /// traced too, found as they are first called; `seen` remembers every code object looked at
    /// (holding it, so that its address cannot be reused by another during the trace).
    include: Vec<String>,
    seen: HashMap<usize, (Py<PyAny>, Option<usize>)>,
    /// monitoring with `include`: `sys.monitoring.set_local_events` and `DISABLE`.
    mon_set_local: Option<Py<PyAny>>,
    mon_disable: Option<Py<PyAny>>,
    /// settrace: the `YIELD_VALUE` opcode, to tell a generator's yield from its final return
    /// (both are RETURN events); `None` when no traced code is a generator or coroutine.
    yield_opcode: Option<u8>,
}

struct GilCell<T>(UnsafeCell<T>);
// SAFETY: the cell is only touched with the GIL held (see the module docs).
unsafe impl<T> Sync for GilCell<T> {}

static SESSION: GilCell<Option<Box<Session>>> = GilCell(UnsafeCell::new(None));

/// The running session. Caller holds the GIL and must not keep the reference across a call
/// that can re-enter this module.
#[inline]
#[allow(clippy::mut_from_ref)]
unsafe fn session() -> Option<&'static mut Session> {
    (*SESSION.0.get()).as_deref_mut()
}

fn take_session() -> Option<Box<Session>> {
    // SAFETY: called with the GIL held, from the Python-facing functions only.
    unsafe { (*SESSION.0.get()).take() }
}

impl Session {
    #[inline]
    fn index_of(&self, code: *mut ffi::PyObject) -> Option<usize> {
        self.code_ptrs.iter().position(|&c| c == code)
    }

    /// A code object called for the first time: is it in an `include`d file? If so it becomes a
    /// traced function (its index returned). Allocates, but once per code object, on calls only.
    fn discover(&mut self, py: Python<'_>, code: *mut ffi::PyObject) -> Option<usize> {
        if self.include.is_empty() {
            return None;
        }
        if let Some((_, found)) = self.seen.get(&(code as usize)) {
            return *found;
        }
        // SAFETY: `code` is a live code object (the caller's frame holds it).
        let obj = unsafe { Bound::from_borrowed_ptr(py, code) };
        let filename: Option<String> = obj.getattr("co_filename").and_then(|f| f.extract()).ok();
        let included = filename.is_some_and(|f| {
            self.include.iter().any(|p| {
                if let Some(prefix) = p.strip_suffix('*') {
                    f.starts_with(prefix)
                } else if p.ends_with('/') {
                    f.starts_with(p.as_str())
                } else {
                    f == *p
                }
            })
        });
        let found = if included {
            self.add_code(&obj).ok()
        } else {
            None
        };
        if found.is_none() {
            PyErr::take(py);
        }
        self.seen.insert(code as usize, (obj.unbind(), found));
        found
    }

    /// Makes `code` a traced function; returns its index.
    fn add_code(&mut self, code: &Bound<'_, PyAny>) -> PyResult<usize> {
        let first = code.getattr("co_firstlineno")?.extract::<u32>()?;
        let flags: c_int = code.getattr("co_flags")?.extract()?;
        self.generator_like.push(flags & CO_GENERATOR_LIKE != 0);
        self.code_ptrs.push(code.as_ptr());
        self.codes.push(code.clone().unbind());
        Ok(self.recorder.add_function(first, LINE_SLOTS))
    }

    /// The meter's value and the highest since the last reset; `None` (and the error noted)
    /// on failure.
    #[inline(always)]
    fn sample(&mut self) -> Option<(u64, u64)> {
        let sampled = self.meter.sample();
        if sampled.is_none() {
            self.error.get_or_insert(self.meter.failure());
        }
        sampled
    }

    /// Starts the next peak interval.
    #[inline(always)]
    fn reset_peak(&mut self) {
        self.meter.reset_peak();
    }

    /// A line event of the activation on top of the stack: one RSS read (plus the peak when
    /// on), then plain arithmetic on pre-sized slots. No allocation, no Python, no lock.
    #[inline(always)]
    fn on_line(&mut self, func: usize, line: c_int) {
        if let Some((rss, high)) = self.sample() {
            self.recorder
                .line(func, u32::try_from(line).unwrap_or(0), rss, high);
            self.reset_peak();
        }
    }

    /// The traced function `func` (keyed by frame or code) starts or resumes.
    fn enter(&mut self, func: usize, key: usize, fresh: bool) {
        if let Some(pos) = self
            .suspended
            .iter()
            .rposition(|a| a.key == key && a.func == func)
        {
            let act = self.suspended.remove(pos);
            if !fresh {
                self.stack.push(act);
                return;
            }
            // A new activation in place of a finished one: close what it left open.
            self.close_function(func);
        }
        self.stack.push(Activation { func, key });
    }

    /// The activation on top of the stack returns (or, for generators, yields).
    fn leave(&mut self, key: usize, suspend: bool) {
        let Some(top) = self.stack.last().copied() else {
            return;
        };
        if top.key != key {
            return;
        }
        self.stack.pop();
        if suspend {
            if self.suspended.len() >= MAX_SUSPENDED {
                let old = self.suspended.remove(0);
                self.close_function(old.func);
            }
            self.suspended.push(top);
        } else {
            self.close_function(top.func);
        }
    }

    fn close_function(&mut self, func: usize) {
        if let Some((rss, high)) = self.sample() {
            self.recorder.close(func, rss, high);
            self.reset_peak();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Python-facing API

/// The lines of one traced function.
#[pyclass(
    module = "pytest_memline._memline",
    name = "FunctionTrace",
    frozen,
    get_all
)]
pub struct FunctionTrace {
    /// The traced code object.
    code: Py<PyAny>,
    /// A row (without its contents: they come from the source) for every line that ran, in
    /// order.
    lines: Vec<Py<Row>>,
}

/// What one trace measured. Sizes are bytes.
#[pyclass(
    module = "pytest_memline._memline",
    name = "TraceResult",
    frozen,
    get_all
)]
pub struct TraceResult {
    start_rss: u64,
    end_rss: u64,
    peak_growth: i64,
    exact_peak: bool,
    reader: &'static str,
    /// "rss" or "heap".
    metric: &'static str,
    backend: &'static str,
    /// Why the peak is not exact, when it is not.
    peak_note: Option<String>,
    /// Set when something else took over tracing before the trace ended.
    interrupted: Option<String>,
    /// The test's line charged with the untraced lines' memory then (not judged by budgets).
    interrupted_line: Option<u32>,
    /// A note on chaining to a previous tracer.
    chain_note: Option<String>,
    /// An error met inside a callback.
    error: Option<String>,
    samples: u64,
    functions: Vec<Py<FunctionTrace>>,
}

#[pymethods]
impl TraceResult {
    fn __repr__(&self) -> String {
        format!(
            "<TraceResult peak_growth={} functions={} samples={}>",
            self.peak_growth,
            self.functions.len(),
            self.samples
        )
    }
}

/// `sys.<name>`, read through the interpreter's own sys module (`PySys_GetObject`): an
/// `import sys` from Rust goes through `builtins.__import__`, about 10,000 instructions, and
/// start and stop need `sys.monitoring` (or `sys.gettrace`) on every test.
pub(crate) fn sys_attr<'py>(py: Python<'py>, name: &std::ffi::CStr) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; the name is NUL-terminated; the reference is borrowed and cloned at
    // once (sys's dict keeps the object alive meanwhile).
    let ptr = unsafe { ffi::PySys_GetObject(name.as_ptr()) };
    if ptr.is_null() {
        return Err(PyAttributeError::new_err(format!(
            "module 'sys' has no attribute {:?}",
            name.to_string_lossy()
        )));
    }
    // SAFETY: non-null, borrowed from sys's dict.
    Ok(unsafe { Bound::from_borrowed_ptr(py, ptr) })
}

/// Starts tracing the given code objects on the calling thread.
#[pyfunction]
#[pyo3(signature = (codes, *, peak = true, reader = "auto", backend = "auto", metric = "rss", include = Vec::new()))]
pub fn start(
    py: Python<'_>,
    codes: &Bound<'_, PyList>,
    peak: bool,
    reader: &str,
    backend: &str,
    metric: &str,
    include: Vec<String>,
) -> PyResult<()> {
    // SAFETY: GIL held.
    if unsafe { session() }.is_some() {
        return Err(PyRuntimeError::new_err(
            "memline: a trace is already running on this interpreter",
        ));
    }
    let backend = match backend {
        "auto" if py.version_info() >= (3, 12) => Backend::Monitoring,
        "auto" | "settrace" => Backend::SetTrace,
        "monitoring" if py.version_info() >= (3, 12) => Backend::Monitoring,
        "monitoring" => {
            return Err(PyValueError::new_err(
                "the 'monitoring' backend needs Python 3.12 or later (sys.monitoring)",
            ))
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown backend {other:?}: expected 'auto', 'settrace' or 'monitoring'"
            )))
        }
    };
    let kind = ReaderKind::parse(reader).map_err(PyValueError::new_err)?;
    let mut meter = meter::open(py, metric, kind, peak)?;
    let mut code_objs = Vec::with_capacity(codes.len());
    let mut firsts = Vec::with_capacity(codes.len());
    let mut gens = Vec::with_capacity(codes.len());
    for code in codes.iter() {
        if !code.is_instance_of::<PyCode>() {
            return Err(PyValueError::new_err(format!(
                "memline: expected code objects, got {}",
                code.get_type().name()?
            )));
        }
        firsts.push(code.getattr("co_firstlineno")?.extract::<u32>()?);
        let flags: c_int = code.getattr("co_flags")?.extract()?;
        gens.push(flags & CO_GENERATOR_LIKE != 0);
        code_objs.push(code.unbind());
    }
    let start_rss = meter.begin().map_err(PyRuntimeError::new_err)?;
    let mut recorder = Recorder::new(start_rss);
    for first in &firsts {
        recorder.add_function(*first, LINE_SLOTS);
    }
    let code_ptrs = code_objs.iter().map(|c| c.as_ptr()).collect();
    let mut s = Box::new(Session {
        recorder,
        meter,
        backend,
        codes: code_objs,
        code_ptrs,
        generator_like: gens,
        stack: Vec::with_capacity(16),
        suspended: Vec::with_capacity(MAX_SUSPENDED),
        prev_func: None,
        prev_obj: None,
        handle: None,
        trace_slot: None,
        lost_at: None,
        chain_note: None,
        gave_way: None,
        tool_id: None,
        thread: std::ptr::null_mut(),
        error: None,
        include,
        seen: HashMap::new(),
        mon_set_local: None,
        mon_disable: None,
        yield_opcode: None,
    });
    // (with `include`, generator functions may be found during the trace)
    if backend == Backend::SetTrace
        && (s.generator_like.iter().any(|&g| g) || !s.include.is_empty())
    {
        let opmap = py.import("dis")?.getattr("opmap")?;
        s.yield_opcode = Some(opmap.get_item("YIELD_VALUE")?.extract()?);
    }
    match backend {
        Backend::SetTrace => install_settrace(py, &mut s)?,
        Backend::Monitoring => {
            if let Err(e) = install_monitoring(py, &mut s) {
                let _ = uninstall_monitoring(py, &mut s);
                return Err(e);
            }
        }
    }
    // SAFETY: GIL held; the callbacks only see the session from here on.
    unsafe { *SESSION.0.get() = Some(s) };
    Ok(())
}

/// Stops the trace and returns what it measured.
#[pyfunction]
pub fn stop(py: Python<'_>) -> PyResult<TraceResult> {
    let Some(mut s) = take_session() else {
        return Err(PyRuntimeError::new_err("memline: no trace is running"));
    };
    // the test's own line that was running when tracing ended (if it ended early, the line
    // where memline's trace function was removed)
    let open_line = s.recorder.open_line(0);
    let mut interrupted_line = None;
    let interrupted = match s.backend {
        Backend::SetTrace => {
            // replaced while a traced function was still running: its later lines were missed
            let running = !s.stack.is_empty();
            let replaced = uninstall_settrace(py, &mut s) && running;
            let lost = if replaced { Some(open_line) } else { s.lost_at };
            lost.map(|line| {
                interrupted_line = line;
                let at = line.map_or_else(String::new, |l| format!(" at line {l}"));
                format!(
                    "memline's trace function was removed during the test{at} (sys.settrace, a \
                     debugger or another tracer) and {}: the lines in between are not traced, \
                     their memory is charged to line {}, and that line is not judged by line \
                     budgets",
                    if replaced {
                        "not put back as it was"
                    } else {
                        "came back at the next call into Python code"
                    },
                    line.map_or_else(|| "that was running".into(), |l| l.to_string())
                )
            })
        }
        Backend::Monitoring => {
            uninstall_monitoring(py, &mut s)?;
            interrupted_line = s.lost_at.flatten();
            s.gave_way.take()
        }
    };
    // When every traced function has returned (its last line closed at that moment), the trace
    // ends there: a sample now would add the caller's unwinding to the test's numbers.
    let returned = s.stack.is_empty() && s.suspended.is_empty() && s.recorder.samples > 1;
    let (rss, high) = if returned {
        (s.recorder.last_rss, s.recorder.last_rss)
    } else {
        s.sample()
            .unwrap_or((s.recorder.last_rss, s.recorder.last_rss))
    };
    s.recorder.finish(rss, high);
    let mut functions = Vec::with_capacity(s.recorder.functions.len());
    for (record, code) in s.recorder.functions.iter().zip(&s.codes) {
        let lines = record
            .lines()
            .map(|(n, st)| {
                let mem = i64::try_from(st.mem_usage).unwrap_or(i64::MAX);
                Py::new(
                    py,
                    Row::measured(n, st.increment, st.peak, mem, st.occurrences),
                )
            })
            .collect::<PyResult<_>>()?;
        functions.push(Py::new(
            py,
            FunctionTrace {
                code: code.clone_ref(py),
                lines,
            },
        )?);
    }
    let result = TraceResult {
        start_rss: s.recorder.start_rss,
        end_rss: rss,
        peak_growth: s.recorder.peak_growth(),
        exact_peak: s.meter.exact_peak(),
        reader: s.meter.source(),
        metric: s.meter.name(),
        backend: s.backend.name(),
        peak_note: s.meter.peak_note(),
        interrupted,
        interrupted_line,
        chain_note: s.chain_note.take(),
        error: s.error.map(str::to_string),
        samples: s.recorder.samples,
        functions,
    };
    if result.metric == "rss" && result.exact_peak {
        // the trace's highest RSS: with the marks kept at resets, the process's real peak
        crate::rss::note_high(
            result
                .start_rss
                .saturating_add_signed(result.peak_growth.max(0)),
        );
    }
    let clean = s.error.is_none();
    let Session { meter, .. } = *s;
    meter.close(py, clean)?;
    Ok(result)
}

/// Whether a trace is running.
#[pyfunction]
pub fn is_tracing() -> bool {
    // SAFETY: GIL held (a pyfunction).
    unsafe { session() }.is_some()
}

/// Whether the functions the running trace's code calls run untraced (Python 3.11, `settrace`
/// backend, memline's trace function alone on the thread): for tests.
#[pyfunction]
fn _callees_untraced() -> bool {
    quiet::active()
}

/// In a forked child: drop the parent's trace without measuring anything, and the
/// `sys.monitoring` tool id the parent held between traces.
#[pyfunction]
pub fn abandon(py: Python<'_>) -> PyResult<()> {
    if let Some(mut s) = take_session() {
        match s.backend {
            Backend::SetTrace => {
                uninstall_settrace(py, &mut s);
            }
            Backend::Monitoring => uninstall_monitoring(py, &mut s)?,
        }
    }
    monitoring::release_held_in_child(py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TraceHandle>()?;
    m.add_class::<FunctionTrace>()?;
    m.add_class::<TraceResult>()?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(is_tracing, m)?)?;
    m.add_function(wrap_pyfunction!(abandon, m)?)?;
    m.add_function(wrap_pyfunction!(_callees_untraced, m)?)?;
    monitoring::register(m)
}
