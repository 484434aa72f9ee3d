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

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::heap::HeapMeter;
use crate::lines::Recorder;
use crate::rss::{ReaderKind, RssReader};

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
    reader: RssReader,
    /// How `reader` was opened (to reuse it for the next trace).
    reader_kind: ReaderKind,
    reader_peak: bool,
    /// The `heap` metric's meter: when set, samples come from tracemalloc, not from `reader`.
    heap: Option<HeapMeter>,
    exact_peak: bool,
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
    chain_note: Option<String>,
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

    /// Reads RSS (and the peak since the last reset); `None` (and an error noted) on failure.
    #[inline(always)]
    fn sample(&mut self) -> Option<(u64, u64)> {
        if let Some(heap) = &self.heap {
            let sampled = heap.sample();
            if sampled.is_none() {
                self.error
                    .get_or_insert("tracemalloc stopped during the trace");
            }
            return sampled;
        }
        let Some(rss) = self.reader.current() else {
            self.error
                .get_or_insert("reading RSS failed during the trace");
            return None;
        };
        let high = if self.exact_peak {
            self.reader.high_since_reset(rss)
        } else {
            rss
        };
        Some((rss, high))
    }

    /// Starts the next peak interval: a write to `clear_refs`, skipped when the last sample
    /// found the kernel's mark no higher than the RSS (see `RssReader::high_since_reset`).
    #[inline(always)]
    fn reset_peak(&mut self) {
        if let Some(heap) = &self.heap {
            heap.reset();
            return;
        }
        if self.exact_peak {
            self.reader.reset_peak_if_due();
        }
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
// settrace backend

/// Our C trace function. Chains to the previous one first, then does its own (cheap) work.
unsafe extern "C" fn trace_callback(
    _obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    arg: *mut ffi::PyObject,
) -> c_int {
    let Some(s) = session() else { return 0 };
    if let Some(prev) = s.prev_func {
        let prev_obj = s
            .prev_obj
            .as_ref()
            .map_or(std::ptr::null_mut(), |o| o.as_ptr());
        // The previous tracer may run Python code: no borrow of the state is held across it.
        let rc = prev(prev_obj, frame, what, arg);
        if rc != 0 {
            return rc;
        }
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let Some(s) = session() else { return };
        match what {
            // The hot event: "is this the traced frame?" is one compare with the stack top.
            ffi::PyTrace_LINE => {
                if let Some(&Activation { func, key }) = s.stack.last() {
                    if key == frame as usize {
                        s.on_line(func, ffi::PyFrame_GetLineNumber(frame));
                    }
                }
            }
            ffi::PyTrace_CALL => {
                let code = ffi::PyFrame_GetCode(frame) as *mut ffi::PyObject;
                // The frame keeps its code alive: a borrowed pointer is enough.
                ffi::Py_DECREF(code);
                let func = match s.index_of(code) {
                    Some(func) => Some(func),
                    None => s.discover(Python::assume_attached(), code),
                };
                if let Some(func) = func {
                    let fresh = ffi::PyFrame_GetLasti(frame) < 0;
                    s.enter(func, frame as usize, fresh);
                }
            }
            ffi::PyTrace_RETURN => {
                if let Some(top) = s.stack.last() {
                    if top.key == frame as usize {
                        let suspend = s.generator_like[top.func]
                            && !arg.is_null()
                            && s.yield_opcode.is_some_and(|op| at_opcode(frame, op));
                        s.leave(frame as usize, suspend);
                    }
                }
            }
            _ => {}
        }
    }));
    if result.is_err() {
        if let Some(s) = session() {
            s.error
                .get_or_insert("internal error (panic) in the trace callback");
        }
    }
    0
}

extern "C" {
    /// Public since 3.11 (not in pyo3-ffi): the code's bytecode without specialisation or
    /// instrumentation, cached by CPython after the first call.
    fn PyCode_GetCode(code: *mut ffi::PyCodeObject) -> *mut ffi::PyObject;
}

/// Whether the frame's last instruction is `opcode` (a generator-like frame's RETURN event at a
/// `YIELD_VALUE` suspends it; anywhere else it finished). Unreadable: assume it did.
unsafe fn at_opcode(frame: *mut ffi::PyFrameObject, opcode: u8) -> bool {
    let Ok(lasti) = usize::try_from(ffi::PyFrame_GetLasti(frame)) else {
        return true;
    };
    let code = ffi::PyFrame_GetCode(frame);
    let bytes = PyCode_GetCode(code);
    ffi::Py_DECREF(code as *mut ffi::PyObject);
    if bytes.is_null() {
        ffi::PyErr_Clear();
        return true;
    }
    let len = usize::try_from(ffi::PyBytes_Size(bytes)).unwrap_or(0);
    let data = ffi::PyBytes_AsString(bytes) as *const u8;
    let hit = lasti < len && !data.is_null() && *data.add(lasti) == opcode;
    ffi::Py_DECREF(bytes);
    hit
}

/// Reads the first words of the current thread state.
unsafe fn tstate_words() -> [usize; TSTATE_WORDS] {
    let ts = ffi::PyThreadState_Get() as *const usize;
    let mut words = [0usize; TSTATE_WORDS];
    for (i, w) in words.iter_mut().enumerate() {
        *w = ts.add(i).read();
    }
    words
}

/// Handle object passed as the trace object: `sys.gettrace()` returns it while we trace.
#[pyclass(module = "pytest_memline._memline", name = "TraceHandle", frozen)]
pub struct TraceHandle;

#[pymethods]
impl TraceHandle {
    /// Called only if someone installs this handle as a Python-level tracer: do nothing.
    #[pyo3(signature = (*_args))]
    fn __call__(&self, _args: &Bound<'_, PyTuple>) {}

    fn __repr__(&self) -> &'static str {
        "<pytest_memline tracer>"
    }
}

fn install_settrace(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let previous = py.import("sys")?.getattr("gettrace")?.call0()?;
    let prev_obj_ptr = if previous.is_none() {
        std::ptr::null_mut()
    } else {
        previous.as_ptr()
    };
    let handle = Py::new(py, TraceHandle)?.into_any();
    // SAFETY: GIL held. PyEval_SetTrace drops its reference to the previous trace object; we
    // hold our own (`previous`) until the trace stops, so chaining to it stays valid.
    unsafe {
        let before = tstate_words();
        ffi::PyEval_SetTrace(Some(trace_callback), handle.as_ptr());
        let after = tstate_words();
        let ours = trace_callback as ffi::Py_tracefunc as usize;
        let slot = (0..TSTATE_WORDS - 2)
            .find(|&i| after[i] == ours && after[i + 2] == handle.as_ptr() as usize);
        match slot {
            Some(i) if before[i] == 0 => {
                // Alone on the thread: on 3.11 the test's callees can run untraced (unless the
                // user turned that off to rule it out).
                if std::env::var_os(TRACE_CALLEES_ENV).is_none_or(|v| v != "1") {
                    quiet::install(&after, i);
                }
            }
            Some(i) if before[i + 2] == prev_obj_ptr as usize => {
                s.prev_func = Some(std::mem::transmute::<usize, ffi::Py_tracefunc>(before[i]));
                s.prev_obj = (!previous.is_none()).then(|| previous.clone().unbind());
            }
            _ => {
                s.chain_note =
                    Some(format!(
                    "a trace function was active before memline ({}) and could not be chained; \
                     it is paused while each test is traced",
                    previous.repr().map_or_else(|_| "?".into(), |r| r.to_string())
                ));
            }
        }
    }
    s.handle = Some(handle);
    Ok(())
}

/// Removes our trace function if it is still installed, restoring the previous one.
/// Returns whether someone else replaced ours meanwhile.
fn uninstall_settrace(py: Python<'_>, s: &mut Session) -> bool {
    quiet::uninstall();
    let handle_ptr = s
        .handle
        .as_ref()
        .map_or(std::ptr::null_mut(), |h| h.as_ptr());
    let current = py
        .import("sys")
        .and_then(|sys| sys.getattr("gettrace")?.call0())
        .map(|t| t.as_ptr())
        .unwrap_or(std::ptr::null_mut());
    let ours = current == handle_ptr;
    if ours || current == py.None().as_ptr() {
        let prev_obj = s
            .prev_obj
            .as_ref()
            .map_or(std::ptr::null_mut(), |o| o.as_ptr());
        // SAFETY: GIL held; prev_obj is kept alive by `s.prev_obj` (PyEval_SetTrace increfs it).
        unsafe { ffi::PyEval_SetTrace(s.prev_func, prev_obj) };
    }
    !ours
}

// ---------------------------------------------------------------------------------------------
// sys.monitoring backend (3.12+)

const EV_LINE: u32 = 1 << 5;
const EV_PY_START: u32 = 1 << 0;
const EV_PY_RESUME: u32 = 1 << 1;
const EV_PY_RETURN: u32 = 1 << 2;
const EV_PY_YIELD: u32 = 1 << 3;
const EV_PY_UNWIND: u32 = 1 << 14;
/// The events enabled on each traced code object.
const LOCAL_EVENTS: u32 = EV_LINE | EV_PY_START | EV_PY_RESUME | EV_PY_RETURN | EV_PY_YIELD;
/// Tool ids we may take, in order of preference: 0 (debugger), 1 (coverage) and 5
/// (optimizer) are left to their owners.
const TOOL_IDS: [u8; 3] = [2, 3, 4];
const TOOL_NAME: &str = "pytest-memline";

/// The session and the function index for a monitoring event on `code`, when the code is one
/// of ours and the event comes from the traced thread. Code identity first (cheapest).
#[inline]
unsafe fn monitoring_session(code: *mut ffi::PyObject) -> Option<(&'static mut Session, usize)> {
    let s = session()?;
    let func = s.index_of(code)?;
    if s.backend != Backend::Monitoring || ffi::PyThreadState_Get() != s.thread {
        return None;
    }
    Some((s, func))
}

fn guarded(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        // SAFETY: GIL held (we are called from Python).
        if let Some(s) = unsafe { session() } {
            s.error
                .get_or_insert("internal error (panic) in a monitoring callback");
        }
    }
}

/// The LINE callback, `_mon_line(code, line_number, /)`: a plain `METH_FASTCALL` C function
/// rather than a `#[pyfunction]`, so a line pays for no argument parsing by name, no GIL-count
/// bookkeeping and no object besides the (immortal) `None` it returns.
unsafe extern "C" fn mon_line(
    _module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nargs != 2 {
        ffi::PyErr_SetString(
            ffi::PyExc_TypeError,
            c"_mon_line() takes 2 positional arguments (code, line_number)".as_ptr(),
        );
        return std::ptr::null_mut();
    }
    let code = *args;
    guarded(|| {
        // SAFETY: GIL held (CPython calls us with it). LINE is enabled on the traced code
        // objects only, so the identity check hits, and the thread check settles the rest.
        let Some((s, func)) = (unsafe { monitoring_session(code) }) else {
            return;
        };
        // SAFETY: CPython passes the line number as an int.
        let line = unsafe { ffi::PyLong_AsLong(*args.add(1)) };
        let line = if line == -1 && unsafe { !ffi::PyErr_Occurred().is_null() } {
            unsafe { ffi::PyErr_Clear() };
            0
        } else {
            c_int::try_from(line).unwrap_or(0)
        };
        let key = code as usize;
        match s.stack.last() {
            Some(top) if top.key == key => {}
            // A line of a function we did not see start (tracing began inside it).
            _ => s.enter(func, key, false),
        }
        s.on_line(func, line);
    });
    ffi::Py_NewRef(ffi::Py_None())
}

static MON_LINE_DEF: GilCell<ffi::PyMethodDef> = GilCell(UnsafeCell::new(ffi::PyMethodDef {
    ml_name: c"_mon_line".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: mon_line,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"_mon_line($module, code, line_number, /)\n--\n\nsys.monitoring LINE callback."
        .as_ptr(),
}));

/// `_mon_line` as a builtin function of module `m` (bound to it, as CPython binds module
/// functions, so that `inspect` reads the signature without `$module`).
fn mon_line_function<'py>(m: &Bound<'py, PyModule>) -> PyResult<Bound<'py, PyAny>> {
    let name = m.name()?;
    // SAFETY: GIL held; the method definition is static, so it outlives the function object.
    unsafe {
        Bound::from_owned_ptr_or_err(
            m.py(),
            ffi::PyCFunction_NewEx(MON_LINE_DEF.0.get(), m.as_ptr(), name.as_ptr()),
        )
    }
}

#[pyfunction]
#[pyo3(signature = (code, _offset))]
fn _mon_start(py: Python<'_>, code: &Bound<'_, PyAny>, _offset: &Bound<'_, PyAny>) -> Py<PyAny> {
    let mut answer = py.None();
    guarded(|| {
        // SAFETY: GIL held.
        if let Some((s, func)) = unsafe { monitoring_session(code.as_ptr()) } {
            s.enter(func, code.as_ptr() as usize, true);
            return;
        }
        // PY_START is global only with `include`: a code object seen for the first time.
        // SAFETY: GIL held.
        let Some(s) = (unsafe { session() }) else {
            return;
        };
        if s.backend != Backend::Monitoring || s.include.is_empty() {
            return;
        }
        let same_thread = unsafe { ffi::PyThreadState_Get() } == s.thread;
        match s.discover(py, code.as_ptr()) {
            Some(func) => {
                let enabled = match (&s.mon_set_local, s.tool_id) {
                    (Some(set_local), Some(id)) => {
                        set_local.call1(py, (id, code, LOCAL_EVENTS)).is_ok()
                    }
                    _ => false,
                };
                if !enabled {
                    s.error
                        .get_or_insert("could not enable line events on an included function");
                } else if same_thread {
                    s.enter(func, code.as_ptr() as usize, true);
                }
            }
            // Not ours: never report this code's starts to us again (until `restart_events`).
            None => {
                if let Some(disable) = &s.mon_disable {
                    answer = disable.clone_ref(py);
                }
            }
        }
    });
    answer
}

#[pyfunction]
#[pyo3(signature = (code, _offset))]
fn _mon_resume(code: &Bound<'_, PyAny>, _offset: &Bound<'_, PyAny>) {
    guarded(|| {
        // SAFETY: GIL held.
        if let Some((s, func)) = unsafe { monitoring_session(code.as_ptr()) } {
            s.enter(func, code.as_ptr() as usize, false);
        }
    })
}

#[pyfunction]
#[pyo3(signature = (code, _offset, _value))]
fn _mon_return(code: &Bound<'_, PyAny>, _offset: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) {
    guarded(|| {
        // SAFETY: GIL held.
        if let Some((s, _)) = unsafe { monitoring_session(code.as_ptr()) } {
            s.leave(code.as_ptr() as usize, false);
        }
    })
}

#[pyfunction]
#[pyo3(signature = (code, _offset, _value))]
fn _mon_yield(code: &Bound<'_, PyAny>, _offset: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) {
    guarded(|| {
        // SAFETY: GIL held.
        if let Some((s, _)) = unsafe { monitoring_session(code.as_ptr()) } {
            s.leave(code.as_ptr() as usize, true);
        }
    })
}

fn install_monitoring(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let mon = py.import("sys")?.getattr("monitoring")?;
    let mut tool = None;
    for id in TOOL_IDS {
        if mon.call_method1("get_tool", (id,))?.is_none() {
            mon.call_method1("use_tool_id", (id, TOOL_NAME))?;
            tool = Some(id);
            break;
        }
    }
    let Some(id) = tool else {
        let mut held = Vec::new();
        for id in TOOL_IDS {
            let name = mon.call_method1("get_tool", (id,))?;
            held.push(format!("{id} by {}", name.repr()?));
        }
        return Err(PyRuntimeError::new_err(format!(
            "memline: no free sys.monitoring tool id: memline takes 2, 3 or 4 and never one in \
             use, and they are held ({}); free one, or trace with --memline-backend=settrace",
            held.join(", ")
        )));
    };
    s.tool_id = Some(id);
    // SAFETY: GIL held.
    s.thread = unsafe { ffi::PyThreadState_Get() };
    let m = py.import("pytest_memline._memline")?;
    let register = |event: u32, name: &str| -> PyResult<()> {
        mon.call_method1("register_callback", (id, event, m.getattr(name)?))?;
        Ok(())
    };
    register(EV_LINE, "_mon_line")?;
    register(EV_PY_START, "_mon_start")?;
    register(EV_PY_RESUME, "_mon_resume")?;
    register(EV_PY_RETURN, "_mon_return")?;
    register(EV_PY_YIELD, "_mon_yield")?;
    register(EV_PY_UNWIND, "_mon_return")?;
    // PY_UNWIND cannot be enabled per code object: it is global, and cheap (exceptions only).
    // With `include`, PY_START is global too: included functions are found as they start, and
    // every other code object is disabled at its first start.
    let global = if s.include.is_empty() {
        EV_PY_UNWIND
    } else {
        s.mon_set_local = Some(mon.getattr("set_local_events")?.unbind());
        s.mon_disable = Some(mon.getattr("DISABLE")?.unbind());
        EV_PY_UNWIND | EV_PY_START
    };
    mon.call_method1("set_events", (id, global))?;
    for code in &s.codes {
        mon.call_method1("set_local_events", (id, code.bind(py), LOCAL_EVENTS))?;
    }
    Ok(())
}

fn uninstall_monitoring(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let Some(id) = s.tool_id.take() else {
        return Ok(());
    };
    let mon = py.import("sys")?.getattr("monitoring")?;
    // Do not touch a tool id that someone else has taken over meanwhile.
    let owner = mon.call_method1("get_tool", (id,))?;
    if owner.is_none() || owner.extract::<String>().ok().as_deref() != Some(TOOL_NAME) {
        return Ok(());
    }
    for code in &s.codes {
        mon.call_method1("set_local_events", (id, code.bind(py), 0))?;
    }
    mon.call_method1("set_events", (id, 0))?;
    for event in [
        EV_LINE,
        EV_PY_START,
        EV_PY_RESUME,
        EV_PY_RETURN,
        EV_PY_YIELD,
        EV_PY_UNWIND,
    ] {
        mon.call_method1("register_callback", (id, event, py.None()))?;
    }
    mon.call_method1("free_tool_id", (id,))?;
    if s.mon_disable.is_some() {
        // `include` disabled PY_START on every other code object for our id: re-enable, so that
        // whoever takes the id next starts clean (this re-enables other tools' too, which they
        // tolerate: events they had disabled come once more).
        mon.call_method0("restart_events")?;
    }
    Ok(())
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
    /// `(lineno, increment, peak, mem_usage, occurrences)` for every line that ran, in order.
    lines: Vec<(u32, i64, i64, u64, u64)>,
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
    high_rss: u64,
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

/// The reader of the last trace, kept for the next one (opening one costs three file opens and
/// some checks, each test): reused when it was opened the same way, in this process.
static SPARE_READER: GilCell<Option<(ReaderKind, bool, RssReader)>> =
    GilCell(UnsafeCell::new(None));

fn take_reader(kind: ReaderKind, peak: bool) -> PyResult<RssReader> {
    // SAFETY: GIL held (called from `start`).
    let spare = unsafe { (*SPARE_READER.0.get()).take() };
    if let Some((k, p, reader)) = spare {
        if k == kind && p == peak && reader.pid == std::process::id() {
            return Ok(reader);
        }
    }
    RssReader::open(kind, peak).map_err(PyRuntimeError::new_err)
}

fn keep_reader(kind: ReaderKind, peak: bool, reader: RssReader) {
    // SAFETY: GIL held (called from `stop`).
    unsafe { *SPARE_READER.0.get() = Some((kind, peak, reader)) };
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
    let heap = match metric {
        "rss" => None,
        "heap" => Some(HeapMeter::open(py)?),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown metric {other:?}: expected 'rss' or 'heap'"
            )))
        }
    };
    let code_type = py.import("types")?.getattr("CodeType")?;
    let mut code_objs = Vec::with_capacity(codes.len());
    let mut firsts = Vec::with_capacity(codes.len());
    let mut gens = Vec::with_capacity(codes.len());
    for code in codes.iter() {
        if !code.is_instance(&code_type)? {
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
    let mut rss = take_reader(kind, peak && heap.is_none())?;
    let exact_peak = heap.is_some() || rss.exact_peak();
    let start_rss = match &heap {
        Some(h) => {
            h.reset();
            h.sample()
                .ok_or_else(|| PyRuntimeError::new_err("memline: cannot read tracemalloc"))?
                .0
        }
        None => {
            rss.reset_peak();
            rss.current()
                .ok_or_else(|| PyRuntimeError::new_err("memline: cannot read RSS"))?
        }
    };
    let mut recorder = Recorder::new(start_rss);
    for first in &firsts {
        recorder.add_function(*first, LINE_SLOTS);
    }
    let code_ptrs = code_objs.iter().map(|c| c.as_ptr()).collect();
    let mut s = Box::new(Session {
        recorder,
        reader: rss,
        reader_kind: kind,
        reader_peak: peak && heap.is_none(),
        heap,
        exact_peak,
        backend,
        codes: code_objs,
        code_ptrs,
        generator_like: gens,
        stack: Vec::with_capacity(16),
        suspended: Vec::with_capacity(MAX_SUSPENDED),
        prev_func: None,
        prev_obj: None,
        handle: None,
        chain_note: None,
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
    let interrupted = match s.backend {
        Backend::SetTrace => uninstall_settrace(py, &mut s).then(|| {
            "another trace function (a debugger?) replaced memline's during the test; \
             lines after that point are charged to the line that was running"
                .to_string()
        }),
        Backend::Monitoring => {
            uninstall_monitoring(py, &mut s)?;
            None
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
    if let Some(heap) = &s.heap {
        heap.close(py)?;
    }
    let mut functions = Vec::with_capacity(s.recorder.functions.len());
    for (record, code) in s.recorder.functions.iter().zip(&s.codes) {
        let lines = record
            .lines()
            .map(|(n, st)| (n, st.increment, st.peak, st.mem_usage, st.occurrences))
            .collect();
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
        high_rss: s.recorder.high_rss,
        peak_growth: s.recorder.peak_growth(),
        exact_peak: s.exact_peak,
        reader: if s.heap.is_some() {
            "tracemalloc"
        } else {
            s.reader.describe()
        },
        metric: if s.heap.is_some() { "heap" } else { "rss" },
        backend: s.backend.name(),
        peak_note: if s.heap.is_some() {
            None
        } else {
            s.reader.peak_unavailable.clone()
        },
        interrupted,
        chain_note: s.chain_note.take(),
        error: s.error.map(str::to_string),
        samples: s.recorder.samples,
        functions,
    };
    if s.error.is_none() {
        let Session {
            reader,
            reader_kind,
            reader_peak,
            ..
        } = *s;
        keep_reader(reader_kind, reader_peak, reader);
    }
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

/// In a forked child: drop the parent's trace without measuring anything.
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
    Ok(())
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
    m.add("_mon_line", mon_line_function(m)?)?;
    m.add_function(wrap_pyfunction!(_mon_start, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_resume, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_return, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_yield, m)?)?;
    Ok(())
}
