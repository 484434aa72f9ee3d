//! Python 3.11, `settrace` backend: the functions a test calls run untraced.
//!
//! With a C trace function installed, 3.11 runs every frame of the thread on its slow path: each
//! instruction de-specialised and checked for a new line, a frame object made for every call,
//! and the trace function called for every line of every function, although memline counts the
//! traced function's own lines only (a callee's memory shows in the numbers of the line that
//! called it). That made lines outside the test cost ~0.09 µs each, and a test that mostly runs
//! library code about 2x slower.
//!
//! While a test is traced, this module installs a frame-evaluation function (PEP 523,
//! `_PyInterpreterState_SetEvalFrameFunc`): every Python frame the interpreter starts or resumes
//! goes through [`eval_frame`]. A frame of traced code runs with the thread's tracing flag
//! (`_PyCFrame.use_tracing`, which the interpreter copies into each frame it evaluates) on;
//! any other frame started on the traced thread runs with it off, at full speed, and so does
//! everything that frame calls. When the frame returns, the caller's flag is put back.
//!
//! `PYTEST_MEMLINE_TRACE_CALLEES=1` in the environment turns it off (see `install_settrace`).
//!
//! It applies only when memline's trace function is alone on the thread (no chained tracer such
//! as coverage's, no profiler) and no other frame-evaluation function is installed. If another
//! tracer or profiler is set during the test (a debugger), frames are evaluated unchanged from
//! then on and the flag is recomputed the way CPython computes it. Both fields are located from
//! the trace-function slot found by calibration (`install_settrace`) and checked against
//! known values before anything is written.
//!
//! Another frame-evaluation function (a JIT such as torch dynamo) installed before the test
//! keeps this module out for that test. One installed during the test replaces this one: frames
//! it evaluates keep the flag they inherit (traced code called from an untraced callee then
//! stays untraced while it is on), and when it puts this one back, the module works on. If that
//! happens after the test, [`stale`] removes the hook at its first call.
//!
//! With a frame-evaluation function installed, 3.11 does not inline Python-to-Python calls, so
//! each call uses some C stack, as on 3.10. Past [`MAX_DEPTH`] nested calls on one thread, this
//! module removes itself for the duration of that call (deeper calls are inlined again, traced
//! the ordinary way), so raising the recursion limit cannot exhaust the C stack because of it.

use std::cell::Cell;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::ffi;
use pyo3::Python;

use super::settrace::trace_callback;
use super::{session, GilCell};

/// Nested calls through [`eval_frame`] on one thread before it steps aside for deeper calls.
const MAX_DEPTH: u32 = 1000;
/// `_PyInterpreterFrame.f_code`, in words (3.11: f_func, f_globals, f_builtins, f_locals, f_code).
const FRAME_CODE_WORD: usize = 4;
/// The value of `_PyCFrame.use_tracing` when tracing or profiling is on.
const TRACING_ON: u8 = 255;

extern "C" {
    /// The interpreter's own frame evaluation (exported for PEP 523 users; not in pyo3-ffi).
    fn _PyEval_EvalFrameDefault(
        tstate: *mut ffi::PyThreadState,
        frame: *mut ffi::_PyInterpreterFrame,
        throwflag: c_int,
    ) -> *mut ffi::PyObject;
}

/// Where the fields live in `PyThreadState`, in words; and the traced thread.
#[derive(Clone, Copy)]
struct Quiet {
    tstate: *mut ffi::PyThreadState,
    /// `tstate->cframe`, whose first byte is `use_tracing`.
    cframe: usize,
    profile_func: usize,
    trace_func: usize,
}

static QUIET: GilCell<Option<Quiet>> = GilCell(std::cell::UnsafeCell::new(None));

thread_local! {
    /// Calls through [`eval_frame`] in progress on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

impl Quiet {
    #[inline(always)]
    unsafe fn word(&self, tstate: *mut ffi::PyThreadState, index: usize) -> usize {
        (tstate as *const usize).add(index).read()
    }

    /// The `use_tracing` flag of the thread's current C frame.
    #[inline(always)]
    unsafe fn flag(&self, tstate: *mut ffi::PyThreadState) -> *mut u8 {
        self.word(tstate, self.cframe) as *mut u8
    }

    /// Whether `tstate` is the traced thread, with memline's trace function alone on it and a
    /// C frame to flag: the frames this module may switch tracing off for.
    #[inline(always)]
    unsafe fn owns(&self, tstate: *mut ffi::PyThreadState) -> bool {
        tstate == self.tstate && self.alone(tstate) && !self.flag(tstate).is_null()
    }

    /// Whether memline's trace function is the thread's only tracer, and no profiler is set.
    #[inline(always)]
    unsafe fn alone(&self, tstate: *mut ffi::PyThreadState) -> bool {
        self.word(tstate, self.trace_func) == trace_callback as ffi::Py_tracefunc as usize
            && self.word(tstate, self.profile_func) == 0
    }

    /// After a call: the caller's flag as it was, or as CPython would compute it if the tracers
    /// changed meanwhile (a debugger took over, the test called `sys.settrace`).
    #[inline(always)]
    unsafe fn restore(&self, tstate: *mut ffi::PyThreadState, saved: u8) {
        let flag = self.flag(tstate);
        if flag.is_null() {
            return;
        }
        *flag = if self.alone(tstate) {
            saved
        } else if self.word(tstate, self.trace_func) != 0
            || self.word(tstate, self.profile_func) != 0
        {
            TRACING_ON
        } else {
            0
        };
    }
}

/// Whether frames of `code` are traced: one of the traced code objects, or an `include`d one.
unsafe fn wants_tracing(code: *mut ffi::PyObject) -> bool {
    let found = catch_unwind(AssertUnwindSafe(|| {
        let Some(s) = session() else { return true };
        s.index_of(code).is_some()
            || (!s.include.is_empty() && s.discover(Python::assume_attached(), code).is_some())
    }));
    // A panic: trace it the ordinary way (the callback notes nothing; this is not expected).
    found.unwrap_or(true)
}

/// The frame-evaluation function (see the module docs). Called with the GIL held.
unsafe extern "C" fn eval_frame(
    tstate: *mut ffi::PyThreadState,
    frame: *mut ffi::_PyInterpreterFrame,
    throwflag: c_int,
) -> *mut ffi::PyObject {
    let depth = DEPTH.with(Cell::get);
    let Some(q) = *QUIET.0.get() else {
        return stale(tstate, frame, throwflag);
    };
    if depth >= MAX_DEPTH {
        return step_aside(q, tstate, frame, throwflag);
    }
    if !q.owns(tstate) {
        return nested(depth, tstate, frame, throwflag);
    }
    let code = (frame as *const *mut ffi::PyObject)
        .add(FRAME_CODE_WORD)
        .read();
    let flag = q.flag(tstate);
    let saved = *flag;
    *flag = if wants_tracing(code) { TRACING_ON } else { 0 };
    let result = nested(depth, tstate, frame, throwflag);
    q.restore(tstate, saved);
    result
}

/// Called with no trace in progress: a JIT that saved this hook while a test was traced (as
/// torch dynamo saves the current hook when it turns itself on) has put it back after the test.
/// Removes it, so that calls are inlined again and cost nothing, then evaluates the frame.
#[cold]
unsafe fn stale(
    tstate: *mut ffi::PyThreadState,
    frame: *mut ffi::_PyInterpreterFrame,
    throwflag: c_int,
) -> *mut ffi::PyObject {
    let interp = ffi::PyThreadState_GetInterpreter(tstate);
    if hook_is_ours(interp) {
        ffi::_PyInterpreterState_SetEvalFrameFunc(interp, None);
    }
    _PyEval_EvalFrameDefault(tstate, frame, throwflag)
}

/// The interpreter's evaluation of `frame`, counted as one more nested call on this thread.
#[inline(always)]
unsafe fn nested(
    depth: u32,
    tstate: *mut ffi::PyThreadState,
    frame: *mut ffi::_PyInterpreterFrame,
    throwflag: c_int,
) -> *mut ffi::PyObject {
    DEPTH.with(|d| d.set(depth + 1));
    let result = _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    DEPTH.with(|d| d.set(depth));
    result
}

/// Too deep: evaluate this frame, and everything it calls, without the hook (calls are inlined
/// again, so they use no C stack), traced the ordinary way; then put the hook back.
unsafe fn step_aside(
    q: Quiet,
    tstate: *mut ffi::PyThreadState,
    frame: *mut ffi::_PyInterpreterFrame,
    throwflag: c_int,
) -> *mut ffi::PyObject {
    let interp = ffi::PyThreadState_GetInterpreter(tstate);
    ffi::_PyInterpreterState_SetEvalFrameFunc(interp, None);
    let saved = if q.owns(tstate) {
        let flag = q.flag(tstate);
        let saved = *flag;
        *flag = TRACING_ON;
        Some(saved)
    } else {
        None
    };
    let result = _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    if let Some(saved) = saved {
        q.restore(tstate, saved);
    }
    if (*QUIET.0.get()).is_some() && no_other_hook(interp) {
        ffi::_PyInterpreterState_SetEvalFrameFunc(interp, Some(eval_frame));
    }
    result
}

/// The frame-evaluation function installed in `interp`, as an address.
unsafe fn hook_of(interp: *mut ffi::PyInterpreterState) -> usize {
    ffi::_PyInterpreterState_GetEvalFrameFunc(interp) as usize
}

unsafe fn no_other_hook(interp: *mut ffi::PyInterpreterState) -> bool {
    hook_of(interp) == _PyEval_EvalFrameDefault as *const () as usize
}

unsafe fn hook_is_ours(interp: *mut ffi::PyInterpreterState) -> bool {
    hook_of(interp) == eval_frame as *const () as usize
}

/// Right after our trace function was installed in slot `trace_func` of the thread state
/// (`words` = the thread state's first words then), with no tracer before it: check the
/// neighbouring fields are what 3.11's `PyThreadState` has there, then install the hook. When
/// any check fails nothing is installed, and every frame is traced the ordinary way.
pub(super) fn install(words: &[usize], trace_func: usize) {
    if trace_func < 2 || trace_func + 2 >= words.len() {
        return;
    }
    let q = Quiet {
        // SAFETY: GIL held (called from `start`).
        tstate: unsafe { ffi::PyThreadState_Get() },
        cframe: trace_func - 2,
        profile_func: trace_func - 1,
        trace_func,
    };
    // SAFETY: GIL held. Each pointer is checked before it is followed: the C frame must have
    // tracing on (PyEval_SetTrace just set it) and point at the running frame, whose code must
    // be the code of the Python frame calling us.
    unsafe {
        if words[q.profile_func] != 0 || !no_other_hook(ffi::PyThreadState_GetInterpreter(q.tstate))
        {
            return;
        }
        let cframe = words[q.cframe] as *const usize;
        if cframe.is_null() || *(cframe as *const u8) != TRACING_ON {
            return;
        }
        let current = cframe.add(1).read() as *const usize;
        let caller = ffi::PyEval_GetFrame();
        if current.is_null() || caller.is_null() {
            return;
        }
        let code = ffi::PyFrame_GetCode(caller) as *mut ffi::PyObject;
        ffi::Py_DECREF(code);
        if current.add(FRAME_CODE_WORD).read() != code as usize {
            return;
        }
        *QUIET.0.get() = Some(q);
        ffi::_PyInterpreterState_SetEvalFrameFunc(
            ffi::PyThreadState_GetInterpreter(q.tstate),
            Some(eval_frame),
        );
    }
}

/// Removes the hook (if it is ours and installed). Frames still running through it finish
/// normally: they restore their callers' flags from the thread state as it is then.
pub(super) fn uninstall() {
    // SAFETY: GIL held (called from `stop`/`abandon`).
    unsafe {
        let Some(q) = (*QUIET.0.get()).take() else {
            return;
        };
        let interp = ffi::PyThreadState_GetInterpreter(q.tstate);
        if hook_is_ours(interp) {
            ffi::_PyInterpreterState_SetEvalFrameFunc(interp, None);
        }
    }
}

/// Whether the hook is installed (for tests).
pub(super) fn active() -> bool {
    // SAFETY: GIL held (a pyfunction calls it).
    unsafe { (*QUIET.0.get()).is_some() && hook_is_ours(ffi::PyInterpreterState_Get()) }
}
