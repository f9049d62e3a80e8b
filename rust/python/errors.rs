//! Rust errors mapped to precise Python exceptions, each a subclass of the matching built-in.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

use crate::policy::Error;

create_exception!(deliverypool, PolicyError, PyValueError, "A routing policy value is invalid.");
create_exception!(deliverypool, ScoreError, PyValueError, "A spam score is NaN or infinite.");

/// The one mapping from core errors to Python exceptions.
pub fn to_py_err(error: &Error) -> PyErr {
    let message = error.to_string();
    match error.root() {
        Error::NotFinite { what: "score", .. } => ScoreError::new_err(message),
        _ => PolicyError::new_err(message),
    }
}
