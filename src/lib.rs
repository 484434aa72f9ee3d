//! pytest-memline's native module, `pytest_memline._memline`: wiring only.

use pyo3::prelude::*;

pub mod baseline;
mod bench;
pub mod config;
pub mod diff;
mod heap;
pub mod lines;
mod pyapi;
mod pybaseline;
pub mod rss;
pub mod size;
mod tracer;

#[pymodule]
fn _memline(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    tracer::register(m)?;
    pyapi::register(m)?;
    pybaseline::register(m)?;
    bench::register(m)?;
    Ok(())
}
