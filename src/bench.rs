//! `_bench_floor(n)`: the cost of the reads the tracer makes on every line, timed in Rust so
//! the benchmark can print the floor next to its results. Private (not in `__all__`, not part
//! of the plugin); `bench/run.py` is its only user.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::rss::{ReaderKind, RssReader};

/// CPU time of the calling thread, in ns: unlike wall time it leaves out the time spent
/// waiting for a core on a busy machine, and it includes the kernel's side of the syscalls.
#[cfg(unix)]
fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into the pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Wall time where there is no per-thread CPU clock.
#[cfg(not(unix))]
fn thread_cpu_ns() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as f64
}

/// Median over `rounds` of the mean CPU ns per call of `f`, called `n` times a round.
fn ns_per_call(n: u32, rounds: u32, mut f: impl FnMut()) -> f64 {
    let mut means: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = thread_cpu_ns();
            for _ in 0..n {
                f();
            }
            (thread_cpu_ns() - t) / f64::from(n)
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

/// CPU ns per call of what a traced line costs at least: the statm read (`statm_read`), and with
/// the peak on, `getrusage` plus the `clear_refs` reset (`peak_reset`, `None` where the kernel
/// does not allow the reset), and each of the two alone.
#[pyfunction]
#[pyo3(signature = (n = 20_000, rounds = 5))]
fn _bench_floor(py: Python<'_>, n: u32, rounds: u32) -> PyResult<Bound<'_, PyDict>> {
    if n == 0 || rounds == 0 {
        return Err(PyValueError::new_err("n and rounds must be at least 1"));
    }
    let mut reader = RssReader::open(ReaderKind::Procfs, true).map_err(PyRuntimeError::new_err)?;
    let d = PyDict::new(py);
    d.set_item("reader", reader.describe())?;
    let statm = ns_per_call(n, rounds, || {
        std::hint::black_box(reader.current());
    });
    d.set_item("statm_read", statm)?;
    if reader.exact_peak() {
        let both = ns_per_call(n, rounds, || {
            reader.reset_peak();
            std::hint::black_box(reader.peak_since_reset());
        });
        let reset = ns_per_call(n, rounds, || {
            reader.reset_peak();
        });
        let rusage = ns_per_call(n, rounds, || {
            std::hint::black_box(reader.peak_since_reset());
        });
        d.set_item("peak_reset", both)?;
        d.set_item("clear_refs", reset)?;
        d.set_item("getrusage", rusage)?;
    } else {
        d.set_item("peak_reset", py.None())?;
        d.set_item("clear_refs", py.None())?;
        d.set_item("getrusage", py.None())?;
    }
    d.set_item("note", reader.peak_unavailable.as_deref())?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_bench_floor, m)?)
}
