//! Emits pyo3's Python-version cfgs (`Py_3_11`, `Py_3_12`, ...) for this crate's own code.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
