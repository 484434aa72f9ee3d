//! pytest-memline's native module, `pytest_memline._memline`: wiring only.

use pyo3::prelude::*;

mod baseline;
mod bench;
mod config;
mod diff;
mod files;
mod lines;
mod meter;
mod prefault;
mod pyapi;
mod pybaseline;
mod pyrow;
mod row;
mod rss;
mod size;
mod tracer;

#[pymodule]
fn _memline(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    tracer::register(m)?;
    pyapi::register(m)?;
    pybaseline::register(m)?;
    pyrow::register(m)?;
    bench::register(m)?;
    Ok(())
}
