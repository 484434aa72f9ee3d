//! The `settrace` backend: a C trace function installed with `PyEval_SetTrace` (the only
//! choice on 3.11), chained to the one installed before it.

use super::*;

/// Our C trace function. Chains to the previous one first, then does its own (cheap) work.
pub(super) unsafe extern "C" fn trace_callback(
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
    /// Called when someone installed this handle as a Python-level tracer: a test that saved
    /// and restored the trace function (`old = sys.gettrace(); sys.settrace(None);
    /// sys.settrace(old)`) put back memline's handle, not its C function. The C function goes
    /// back in its place, and this event is handled as it would have been: tracing resumes at
    /// this line (the line that restored it has no row of its own; its memory is charged to the
    /// line before, the one that removed the tracer).
    #[pyo3(signature = (*args))]
    fn __call__(slf: &Bound<'_, Self>, args: &Bound<'_, PyTuple>) {
        // SAFETY: GIL held (a pymethod).
        if unsafe { session() }.is_none() || args.len() != 3 {
            return;
        }
        let (Ok(frame), Ok(event), Ok(arg)) =
            (args.get_item(0), args.get_item(1), args.get_item(2))
        else {
            return;
        };
        let what = match event.extract::<&str>() {
            Ok("call") => ffi::PyTrace_CALL,
            Ok("line") => ffi::PyTrace_LINE,
            Ok("return") => ffi::PyTrace_RETURN,
            Ok("exception") => ffi::PyTrace_EXCEPTION,
            _ => return,
        };
        // SAFETY: GIL held (a pymethod); `frame` is checked to be a frame object, and it and
        // `arg` are alive for the call; PyEval_SetTrace takes its own reference to the handle.
        unsafe {
            if ffi::PyFrame_Check(frame.as_ptr()) == 0 {
                return;
            }
            ffi::PyEval_SetTrace(Some(trace_callback), slf.as_ptr());
            if let Some(s) = session() {
                // lost only if a traced function was still running (a doctest runner puts the
                // handle back this way after its examples have returned: nothing was missed)
                if s.lost_at.is_none() && !s.stack.is_empty() {
                    s.lost_at = Some(s.recorder.open_line(0));
                }
            }
            trace_callback(
                slf.as_ptr(),
                frame.as_ptr() as *mut ffi::PyFrameObject,
                what,
                arg.as_ptr(),
            );
        }
    }

    fn __repr__(&self) -> &'static str {
        "<pytest_memline tracer>"
    }
}

pub(super) fn install_settrace(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let previous = sys_attr(py, c"gettrace")?.call0()?;
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
                s.trace_slot = Some(i);
                // Alone on the thread: on 3.11 the test's callees can run untraced (unless the
                // user turned that off to rule it out).
                if std::env::var_os(TRACE_CALLEES_ENV).is_none_or(|v| v != "1") {
                    quiet::install(&after, i);
                }
            }
            Some(i) if before[i + 2] == prev_obj_ptr as usize => {
                s.trace_slot = Some(i);
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
pub(super) fn uninstall_settrace(py: Python<'_>, s: &mut Session) -> bool {
    quiet::uninstall();
    let handle_ptr = s
        .handle
        .as_ref()
        .map_or(std::ptr::null_mut(), |h| h.as_ptr());
    let current = sys_attr(py, c"gettrace")
        .and_then(|gettrace| gettrace.call0())
        .map(|t| t.as_ptr())
        .unwrap_or(std::ptr::null_mut());
    // ours: our handle is the trace object and our C function is still the one installed
    // (`sys.settrace(sys.gettrace())` puts the handle back behind a Python-level trampoline)
    let c_ours = s.trace_slot.is_none_or(|i| {
        // SAFETY: GIL held; the slot index was found in this thread's state at install.
        let words = unsafe { tstate_words() };
        words[i] == trace_callback as ffi::Py_tracefunc as usize
    });
    let ours = current == handle_ptr && c_ours;
    let handle_back = current == handle_ptr;
    if handle_back || current == py.None().as_ptr() {
        let prev_obj = s
            .prev_obj
            .as_ref()
            .map_or(std::ptr::null_mut(), |o| o.as_ptr());
        // SAFETY: GIL held; prev_obj is kept alive by `s.prev_obj` (PyEval_SetTrace increfs it).
        unsafe { ffi::PyEval_SetTrace(s.prev_func, prev_obj) };
    }
    !ours
}
