//! The `sys.monitoring` backend (3.12+): LINE and PY_* events enabled on the traced code
//! objects only, under a free tool id.

use super::*;

/// The `sys.monitoring.events` we use. Their values are read from the interpreter, never
/// hard-coded: they differ between versions (3.14 inserted BRANCH_LEFT and BRANCH_RIGHT before
/// PY_UNWIND, and a constant taken from the wrong table is another event: RERAISE).
#[derive(Clone, Copy)]
struct Events {
    line: u32,
    py_start: u32,
    py_resume: u32,
    py_return: u32,
    py_yield: u32,
    py_unwind: u32,
}

impl Events {
    /// The events enabled on each traced code object.
    fn local(self) -> u32 {
        self.line | self.py_start | self.py_resume | self.py_return | self.py_yield
    }
}

static EVENTS: GilCell<Option<Events>> = GilCell(UnsafeCell::new(None));

/// The event values of this interpreter (read once).
fn events(mon: &Bound<'_, PyAny>) -> PyResult<Events> {
    // SAFETY: GIL held by every caller.
    if let Some(ev) = unsafe { *EVENTS.0.get() } {
        return Ok(ev);
    }
    let table = mon.getattr("events")?;
    let get = |name: &str| -> PyResult<u32> { table.getattr(name)?.extract() };
    let ev = Events {
        line: get("LINE")?,
        py_start: get("PY_START")?,
        py_resume: get("PY_RESUME")?,
        py_return: get("PY_RETURN")?,
        py_yield: get("PY_YIELD")?,
        py_unwind: get("PY_UNWIND")?,
    };
    // SAFETY: as above.
    unsafe { *EVENTS.0.get() = Some(ev) };
    Ok(ev)
}

/// Tool ids we may take, in order of preference: 0 (debugger), 1 (coverage) and 5
/// (optimizer) are left to their owners, and 2 (the profiler's: cProfile claims it when it is
/// enabled, and fails if it is held) is taken only when 3 and 4 are held.
const TOOL_IDS: [u8; 3] = [3, 4, 2];
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
                        // SAFETY: GIL held; set when the trace was armed.
                        match unsafe { *EVENTS.0.get() } {
                            Some(ev) => set_local.call1(py, (id, code, ev.local())).is_ok(),
                            None => false,
                        }
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

/// `sys.monitoring.use_tool_id` as it was before memline's stand-in replaced it.
static ORIGINAL_USE_TOOL_ID: GilCell<Option<Py<PyAny>>> = GilCell(UnsafeCell::new(None));

/// The tool id memline holds between traces (callbacks registered, PY_UNWIND on), if any.
///
/// Changing an interpreter's global events (`set_events`, `free_tool_id` on 3.13+) makes every
/// code object re-instrument itself when it next runs: taking and freeing the id around each
/// test cost about 0.3 million instructions a test on numpy's suite (`_Py_Instrument`, see
/// bench/fixedcost.py). Between traces only local events change, and those touch the traced
/// code objects alone.
static HELD: GilCell<Option<u8>> = GilCell(UnsafeCell::new(None));
/// Whether the id is kept between traces (`hold_tool_id(True)`: the pytest plugin, for the run).
static KEEP: GilCell<bool> = GilCell(UnsafeCell::new(false));
/// The code object whose local events the last trace left on, under the held id (while the id
/// is kept): the tests of a parametrized function share one code object and run one after
/// the other, so the next trace mostly finds it armed. Instrumenting a code object and
/// removing it again cost about 57,000 instructions a test (`monitoring_set_local_events`,
/// bench/fixedcost.py). Outside a trace its callbacks find no session and return at once.
static ARMED: GilCell<Option<(u8, Py<PyAny>)>> = GilCell(UnsafeCell::new(None));

fn take_armed() -> Option<(u8, Py<PyAny>)> {
    // SAFETY: GIL held by every caller.
    unsafe { (*ARMED.0.get()).take() }
}

fn set_armed(armed: Option<(u8, Py<PyAny>)>) {
    // SAFETY: GIL held by every caller.
    unsafe { *ARMED.0.get() = armed };
}

/// Turns off the events a past trace left on a code object under `id` (when `id` is ours).
fn clear_armed(py: Python<'_>, mon: &Bound<'_, PyAny>, id: u8) -> PyResult<()> {
    if let Some((armed_id, code)) = take_armed() {
        if armed_id == id {
            mon.call_method1("set_local_events", (id, code.bind(py), 0))?;
        }
    }
    Ok(())
}

fn held() -> Option<u8> {
    // SAFETY: GIL held by every caller (pyfunctions and callbacks).
    unsafe { *HELD.0.get() }
}

fn set_held(id: Option<u8>) {
    // SAFETY: as in `held`.
    unsafe { *HELD.0.get() = id };
}

fn keep() -> bool {
    // SAFETY: as in `held`.
    unsafe { *KEEP.0.get() }
}

/// Whether `id` is registered under memline's name.
fn is_ours(mon: &Bound<'_, PyAny>, id: u8) -> PyResult<bool> {
    let owner = mon.call_method1("get_tool", (id,))?;
    Ok(!owner.is_none() && owner.extract::<String>().ok().as_deref() == Some(TOOL_NAME))
}

pub(super) fn install_monitoring(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let mon = sys_attr(py, c"monitoring")?;
    let id = match held() {
        Some(id) if is_ours(&mon, id)? => id,
        _ => {
            // (an id someone freed or took over behind our back is theirs now, with whatever
            // local events are on it)
            set_held(None);
            drop(take_armed());
            let Some(id) = free_tool_id(&mon, None)? else {
                let mut holders = Vec::new();
                for id in TOOL_IDS {
                    let name = mon.call_method1("get_tool", (id,))?;
                    holders.push(format!("{id} by {}", name.repr()?));
                }
                return Err(PyRuntimeError::new_err(format!(
                    "memline: no free sys.monitoring tool id: memline takes 3, 4 or 2 and never \
                     one in use, and they are held ({}); free one, or trace with \
                     --memline-backend=settrace",
                    holders.join(", ")
                )));
            };
            take_id(py, &mon, id)?;
            id
        }
    };
    // SAFETY: GIL held.
    s.thread = unsafe { ffi::PyThreadState_Get() };
    arm(py, &mon, s, id)
}

/// The first of our tool ids that nobody holds, other than `except`.
fn free_tool_id(mon: &Bound<'_, PyAny>, except: Option<u8>) -> PyResult<Option<u8>> {
    for id in TOOL_IDS {
        if Some(id) != except && mon.call_method1("get_tool", (id,))?.is_none() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Takes tool id `id` (free): our callbacks, PY_UNWIND on (it cannot be enabled per code
/// object; exceptions only, and the callback returns at once outside a trace), and our
/// stand-in for `use_tool_id`, so that a tool that claims the id gets it.
fn take_id(py: Python<'_>, mon: &Bound<'_, PyAny>, id: u8) -> PyResult<()> {
    use_tool_id_below_ours(py, mon)?.call1((id, TOOL_NAME))?;
    set_held(Some(id));
    let m = py.import("pytest_memline._memline")?;
    let register = |event: u32, name: &str| -> PyResult<()> {
        mon.call_method1("register_callback", (id, event, m.getattr(name)?))?;
        Ok(())
    };
    let ev = events(mon)?;
    register(ev.line, "_mon_line")?;
    register(ev.py_start, "_mon_start")?;
    register(ev.py_resume, "_mon_resume")?;
    register(ev.py_return, "_mon_return")?;
    register(ev.py_yield, "_mon_yield")?;
    register(ev.py_unwind, "_mon_return")?;
    mon.call_method1("set_events", (id, ev.py_unwind))?;
    let original = mon.getattr("use_tool_id")?;
    let ours = m.getattr("_mon_use_tool_id")?;
    if !original.is(&ours) {
        // SAFETY: GIL held; no other reference to the cell is alive.
        unsafe { *ORIGINAL_USE_TOOL_ID.0.get() = Some(original.unbind()) };
        mon.setattr("use_tool_id", ours)?;
    }
    Ok(())
}

/// Turns all our events off under `id`, unregisters our callbacks and frees the id.
fn drop_id(py: Python<'_>, mon: &Bound<'_, PyAny>, id: u8) -> PyResult<()> {
    set_held(None);
    // (the next owner of the id must find no events of ours on any code object)
    clear_armed(py, mon, id)?;
    let ev = events(mon)?;
    mon.call_method1("set_events", (id, 0))?;
    for event in [
        ev.line,
        ev.py_start,
        ev.py_resume,
        ev.py_return,
        ev.py_yield,
        ev.py_unwind,
    ] {
        mon.call_method1("register_callback", (id, event, py.None()))?;
    }
    mon.call_method1("free_tool_id", (id,))?;
    Ok(())
}

/// Puts `use_tool_id` back, unless someone replaced our stand-in meanwhile.
fn restore_use_tool_id(py: Python<'_>, mon: &Bound<'_, PyAny>) -> PyResult<()> {
    let ours = py
        .import("pytest_memline._memline")?
        .getattr("_mon_use_tool_id")?;
    // SAFETY: GIL held; no other reference to the cell is alive.
    let original = unsafe { (*ORIGINAL_USE_TOOL_ID.0.get()).take() };
    if let Some(original) = original {
        if mon.getattr("use_tool_id")?.is(&ours) {
            mon.setattr("use_tool_id", original)?;
        }
    }
    Ok(())
}

/// Turns this trace's events on under our id `id`: LINE and PY_* on the traced code objects.
fn arm(py: Python<'_>, mon: &Bound<'_, PyAny>, s: &mut Session, id: u8) -> PyResult<()> {
    let ev = events(mon)?;
    s.tool_id = Some(id);
    if !s.include.is_empty() {
        // With `include`, PY_START is global: included functions are found as they start,
        // and every other code object is disabled at its first start.
        s.mon_set_local = Some(mon.getattr("set_local_events")?.unbind());
        s.mon_disable = Some(mon.getattr("DISABLE")?.unbind());
        mon.call_method1("set_events", (id, ev.py_unwind | ev.py_start))?;
    }
    // (an armed code object is always under the held id, which is `id` here)
    let armed = match take_armed() {
        Some((armed_id, code))
            if armed_id == id && s.codes.iter().any(|c| c.as_ptr() == code.as_ptr()) =>
        {
            Some(code)
        }
        other => {
            set_armed(other);
            clear_armed(py, mon, id)?;
            None
        }
    };
    for code in &s.codes {
        if armed.as_ref().is_some_and(|a| a.as_ptr() == code.as_ptr()) {
            continue;
        }
        mon.call_method1("set_local_events", (id, code.bind(py), ev.local()))?;
    }
    // included functions found so far
    for (code, func) in s.seen.values() {
        if func.is_some() {
            mon.call_method1("set_local_events", (id, code.bind(py), ev.local()))?;
        }
    }
    Ok(())
}

/// Turns this trace's events off under `id` (the id stays held, with PY_UNWIND on).
fn disarm(py: Python<'_>, mon: &Bound<'_, PyAny>, s: &mut Session, id: u8) -> PyResult<()> {
    s.tool_id = None;
    let leave_armed = keep() && held() == Some(id) && s.mon_disable.is_none() && s.codes.len() == 1;
    for code in &s.codes {
        if leave_armed {
            set_armed(Some((id, code.clone_ref(py))));
        } else {
            mon.call_method1("set_local_events", (id, code.bind(py), 0))?;
        }
    }
    for (code, func) in s.seen.values() {
        if func.is_some() {
            mon.call_method1("set_local_events", (id, code.bind(py), 0))?;
        }
    }
    if s.mon_disable.is_some() {
        mon.call_method1("set_events", (id, events(mon)?.py_unwind))?;
        // `include` disabled PY_START on every other code object for our id: re-enable, so that
        // the next trace (or whoever takes the id next) starts clean (this re-enables other
        // tools' too, which they tolerate: events they had disabled come once more).
        mon.call_method0("restart_events")?;
    }
    Ok(())
}

/// `use_tool_id` as it was before our stand-in replaced it (the builtin, unless another tool
/// had replaced it first), or the current one before the stand-in is installed.
fn use_tool_id_below_ours<'py>(
    py: Python<'py>,
    mon: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; the reference is cloned at once.
    match unsafe { &*ORIGINAL_USE_TOOL_ID.0.get() } {
        Some(f) => Ok(f.clone_ref(py).into_bound(py)),
        None => mon.getattr("use_tool_id"),
    }
}

/// Stands in for `sys.monitoring.use_tool_id` while memline holds an id: a tool that claims
/// that id gets it. Between traces memline just lets it go (the next trace takes a free one);
/// during a trace it moves to another free id of its own (tracing goes on, exact) or, when
/// none is free, stops tracing at the line that claimed it (the table says so).
#[pyfunction]
#[pyo3(signature = (tool_id, name, /))]
fn _mon_use_tool_id<'py>(
    py: Python<'py>,
    tool_id: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let mon = sys_attr(py, c"monitoring")?;
    let id = tool_id.extract::<u8>().ok();
    if id.is_some() && id == held() {
        // SAFETY: GIL held; the session is not kept across the call of the original below.
        match unsafe { session() } {
            Some(s) if s.backend == Backend::Monitoring && s.tool_id == id => {
                if give_way(py, &mon, s, id.unwrap_or_default(), name).is_err() {
                    s.error.get_or_insert(
                        "could not give up the sys.monitoring tool id a tool claimed",
                    );
                }
            }
            _ => let_go(py, &mon, id.unwrap_or_default())?,
        }
    }
    use_tool_id_below_ours(py, &mon)?.call1((tool_id, name))
}

/// Gives tool id `id` up to a claimer named `claimer`: moves to another free id, or stops.
fn give_way(
    py: Python<'_>,
    mon: &Bound<'_, PyAny>,
    s: &mut Session,
    id: u8,
    claimer: &Bound<'_, PyAny>,
) -> PyResult<()> {
    disarm(py, mon, s, id)?;
    drop_id(py, mon, id)?;
    if let Some(next) = free_tool_id(mon, Some(id))? {
        take_id(py, mon, next)?;
        return arm(py, mon, s, next);
    }
    let line = s.recorder.open_line(0);
    if s.lost_at.is_none() && !s.stack.is_empty() {
        s.lost_at = Some(line);
    }
    let who = claimer
        .repr()
        .map_or_else(|_| "another tool".to_string(), |r| r.to_string());
    let at = line.map_or_else(String::new, |l| format!(" at line {l}"));
    let charged = line.map_or_else(
        || "the line that was running".into(),
        |l| format!("line {l}"),
    );
    s.gave_way.get_or_insert(format!(
        "{who} claimed sys.monitoring tool id {id}, which memline held, during the test{at}, \
         and no other id was free (memline takes 3, 4 or 2): memline gave it up and stopped \
         tracing there; the lines after it are not traced, their memory is charged to \
         {charged}, and that line is not judged by line budgets"
    ));
    Ok(())
}

pub(super) fn uninstall_monitoring(py: Python<'_>, s: &mut Session) -> PyResult<()> {
    let mon = sys_attr(py, c"monitoring")?;
    if let Some(id) = s.tool_id.take() {
        // Do not touch a tool id that someone else has taken over meanwhile.
        if is_ours(&mon, id)? {
            disarm(py, &mon, s, id)?;
        } else if held() == Some(id) {
            set_held(None);
        }
    }
    if !keep() {
        release_held(py, &mon)?;
    }
    Ok(())
}

/// In a forked child: the parent's held id is not the child's business (a child that traces
/// takes one of its own).
pub(super) fn release_held_in_child(py: Python<'_>) -> PyResult<()> {
    if held().is_none() {
        return Ok(());
    }
    let mon = sys_attr(py, c"monitoring")?;
    release_held(py, &mon)
}

/// Frees the id held between traces (if still ours) and puts `use_tool_id` back.
fn release_held(py: Python<'_>, mon: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Some(id) = held() {
        let_go(py, mon, id)?;
    }
    restore_use_tool_id(py, mon)
}

/// Stops holding `id` between traces: frees it if it is still ours, else forgets it (and the
/// code object armed under it) without touching what is now another tool's.
fn let_go(py: Python<'_>, mon: &Bound<'_, PyAny>, id: u8) -> PyResult<()> {
    if is_ours(mon, id)? {
        drop_id(py, mon, id)?;
    }
    set_held(None);
    drop(take_armed());
    Ok(())
}

/// `hold_tool_id(True)`: from now on, the `sys.monitoring` tool id stays held between traces
/// (with only PY_UNWIND on, globally), which spares every code object a re-instrumentation
/// per trace; a tool that claims the id still gets it. `hold_tool_id(False)`: frees it now
/// (unless a trace runs: then when it stops) and goes back to taking it per trace.
#[pyfunction]
pub fn hold_tool_id(py: Python<'_>, keep: bool) -> PyResult<()> {
    // SAFETY: GIL held.
    unsafe { *KEEP.0.get() = keep };
    // SAFETY: GIL held.
    if !keep && unsafe { session() }.is_none() && py.version_info() >= (3, 12) {
        let mon = sys_attr(py, c"monitoring")?;
        release_held(py, &mon)?;
    }
    Ok(())
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("_mon_line", mon_line_function(m)?)?;
    m.add_function(wrap_pyfunction!(_mon_start, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_resume, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_return, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_yield, m)?)?;
    m.add_function(wrap_pyfunction!(_mon_use_tool_id, m)?)?;
    m.add_function(wrap_pyfunction!(hold_tool_id, m)?)?;
    Ok(())
}
