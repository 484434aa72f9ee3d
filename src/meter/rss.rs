//! The `rss` metric: the process's resident memory, with the kernel's peak mark for the exact
//! in-line peak (see `crate::rss` for how it is read).

use std::cell::UnsafeCell;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::Meter;
use crate::rss::{ReaderKind, RssReader};

pub struct RssMeter {
    reader: RssReader,
    kind: ReaderKind,
    want_peak: bool,
    exact_peak: bool,
}

struct GilCell<T>(UnsafeCell<T>);
// SAFETY: only touched with the GIL held (`open` and `close` are called from Python).
unsafe impl<T> Sync for GilCell<T> {}

/// The reader of the last trace, kept for the next one (opening one costs three file opens and
/// some checks, each test): reused when it was opened the same way, in this process.
static SPARE: GilCell<Option<(ReaderKind, bool, RssReader)>> = GilCell(UnsafeCell::new(None));

impl RssMeter {
    pub fn open(kind: ReaderKind, want_peak: bool) -> PyResult<Self> {
        // SAFETY: GIL held (called from `tracer::start`).
        let spare = unsafe { (*SPARE.0.get()).take() };
        let reader = match spare {
            Some((k, p, reader))
                if k == kind && p == want_peak && reader.pid == std::process::id() =>
            {
                reader
            }
            _ => RssReader::open(kind, want_peak).map_err(PyRuntimeError::new_err)?,
        };
        let exact_peak = reader.exact_peak();
        Ok(RssMeter {
            reader,
            kind,
            want_peak,
            exact_peak,
        })
    }
}

/// The process's RSS now (bytes), outside a trace: through the last trace's reader when it
/// reads the same way in this process (one `pread`), else through a new one.
pub fn rss_now(kind: ReaderKind) -> Result<u64, String> {
    // SAFETY: GIL held (called from Python).
    let spare = unsafe { &mut *SPARE.0.get() };
    if let Some((k, _, reader)) = spare.as_mut() {
        if *k == kind && reader.pid == std::process::id() {
            return reader
                .current()
                .ok_or_else(|| "memline: cannot read RSS".to_string());
        }
    }
    RssReader::open(kind, false)?
        .current()
        .ok_or_else(|| "memline: cannot read RSS".to_string())
}

impl Meter for RssMeter {
    #[inline(always)]
    fn sample(&mut self) -> Option<(u64, u64)> {
        let rss = self.reader.current()?;
        let high = if self.exact_peak {
            self.reader.high_since_reset(rss)
        } else {
            rss
        };
        Some((rss, high))
    }

    fn failure(&self) -> &'static str {
        "reading RSS failed during the trace"
    }

    /// A write to `clear_refs`, skipped when the last sample found the kernel's mark no higher
    /// than the RSS (see `RssReader::high_since_reset`).
    #[inline(always)]
    fn reset_peak(&mut self) {
        if self.exact_peak {
            self.reader.reset_peak_if_due();
        }
    }

    fn begin(&mut self) -> Result<u64, String> {
        self.reader.reset_peak_keeping_mark();
        self.reader
            .current()
            .ok_or_else(|| "memline: cannot read RSS".to_string())
    }

    fn name(&self) -> &'static str {
        "rss"
    }

    fn source(&self) -> &'static str {
        self.reader.describe()
    }

    fn exact_peak(&self) -> bool {
        self.exact_peak
    }

    fn peak_note(&self) -> Option<String> {
        self.reader.peak_unavailable.clone()
    }

    fn close(self, _py: Python<'_>, clean: bool) -> PyResult<()> {
        if clean {
            // SAFETY: GIL held (called from `tracer::stop`).
            unsafe { *SPARE.0.get() = Some((self.kind, self.want_peak, self.reader)) };
        }
        Ok(())
    }
}
