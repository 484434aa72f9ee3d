//! What a trace measures: the `Meter` trait, and its implementations opened by name.
//!
//! A meter gives, at every line boundary, the current value and the highest value since the
//! last reset of its peak. `rss` (the default) reads the process's resident memory (`rss.rs`:
//! `/proc/self/statm`, the kernel's peak mark); `heap` reads tracemalloc. A new metric is one
//! file here, one variant of `AnyMeter` and one arm in `open`.
//!
//! The trace callbacks call `sample` and `reset_peak` on every line: `AnyMeter` dispatches with
//! a `match` (no virtual call, nothing allocated), the same branch the tracer had before it
//! knew of more than one metric.

mod heap;
pub mod rss;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub use self::heap::HeapMeter;
pub use self::rss::RssMeter;
use crate::rss::ReaderKind;

/// The metrics, by name, in documentation order.
pub const METRICS: &[&str] = &["rss", "heap"];

/// One metric.
pub trait Meter {
    /// The current value and the highest one since the last `reset_peak` (bytes); `None` when
    /// the meter cannot be read (`failure` says why).
    fn sample(&mut self) -> Option<(u64, u64)>;
    /// Why `sample` gave nothing.
    fn failure(&self) -> &'static str;
    /// Starts the next peak interval.
    fn reset_peak(&mut self);
    /// Starts measuring: resets the peak and returns the first value.
    fn begin(&mut self) -> Result<u64, String>;
    /// The metric's name (one of `METRICS`).
    fn name(&self) -> &'static str;
    /// Where the numbers come from ("procfs", "portable", "tracemalloc").
    fn source(&self) -> &'static str;
    /// Whether the in-line peak is exact (else it is sampled at line boundaries).
    fn exact_peak(&self) -> bool;
    /// Why the peak is not exact, when it is not.
    fn peak_note(&self) -> Option<String>;
    /// Ends the measurement; `clean`: no error was met (the meter may be kept for the next).
    fn close(self, py: Python<'_>, clean: bool) -> PyResult<()>;
}

/// The metrics a trace can use. (One per trace, inside the boxed session: boxing the RSS
/// reader would add a pointer chase to every line.)
/// `repr(u8)`: an explicit one-byte tag is one compare on every line (the niche the compiler
/// picks otherwise cost one more instruction per line under callgrind).
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
pub enum AnyMeter {
    Rss(RssMeter),
    Heap(HeapMeter),
}

/// Opens the metric `name`; `reader` and `peak` are the RSS reader's settings.
pub fn open(py: Python<'_>, name: &str, reader: ReaderKind, peak: bool) -> PyResult<AnyMeter> {
    match name {
        "rss" => Ok(AnyMeter::Rss(RssMeter::open(reader, peak)?)),
        "heap" => Ok(AnyMeter::Heap(HeapMeter::open(py)?)),
        other => Err(PyValueError::new_err(format!(
            "unknown metric {other:?}: expected {}",
            METRICS
                .iter()
                .map(|m| format!("'{m}'"))
                .collect::<Vec<_>>()
                .join(" or ")
        ))),
    }
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnyMeter::Rss($m) => $e,
            AnyMeter::Heap($m) => $e,
        }
    };
}

impl Meter for AnyMeter {
    #[inline(always)]
    fn sample(&mut self) -> Option<(u64, u64)> {
        each!(self, m => m.sample())
    }

    fn failure(&self) -> &'static str {
        each!(self, m => m.failure())
    }

    #[inline(always)]
    fn reset_peak(&mut self) {
        each!(self, m => m.reset_peak())
    }

    fn begin(&mut self) -> Result<u64, String> {
        each!(self, m => m.begin())
    }

    fn name(&self) -> &'static str {
        each!(self, m => m.name())
    }

    fn source(&self) -> &'static str {
        each!(self, m => m.source())
    }

    fn exact_peak(&self) -> bool {
        each!(self, m => m.exact_peak())
    }

    fn peak_note(&self) -> Option<String> {
        each!(self, m => m.peak_note())
    }

    fn close(self, py: Python<'_>, clean: bool) -> PyResult<()> {
        each!(self, m => m.close(py, clean))
    }
}
