//! pytest-memline's native module, `pytest_memline._memline`: wiring only.

use pyo3::prelude::*;

mod bench;
pub mod config;
pub mod lines;
pub mod rss;
pub mod size;
mod pyapi;
mod tracer;

#[pymodule]
fn _memline(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    tracer::register(m)?;
    pyapi::register(m)?;
    bench::register(m)?;
    Ok(())
}
