//! `DataReader` (the SMTP DATA reader fed from the connection's buffer) and `dot_stuff`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use crate::smtp_data::{self, DataReader};

#[pyclass(name = "DataReader", module = "deliverypool")]
pub struct PyDataReader(DataReader);

/// The bytes of a `bytes` or `bytearray`, read while no Python code can run.
#[allow(unsafe_code)]
fn with_bytes<R>(input: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(array) = input.cast::<PyByteArray>() {
        // SAFETY: the slice lives only for `f`, which is Rust code that calls no Python code and
        // does not release the GIL, so nothing can resize or free the bytearray meanwhile.
        return Ok(f(unsafe { array.as_bytes() }));
    }
    let bytes = input.cast::<PyBytes>()?;
    Ok(f(bytes.as_bytes()))
}

#[pymethods]
impl PyDataReader {
    #[new]
    #[pyo3(signature = (*, size_limit, line_length_limit, expected_size=None))]
    fn new(size_limit: usize, line_length_limit: usize, expected_size: Option<usize>) -> Self {
        PyDataReader(DataReader::new(size_limit, line_length_limit, expected_size))
    }

    /// Reads `data` (a `bytes` or the connection's `bytearray` buffer); returns how many of its
    /// bytes belong to the DATA section (fewer than `len(data)` only once the end is found).
    fn feed(&mut self, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        with_bytes(data, |bytes| self.0.feed(bytes))
    }

    /// True once `<CRLF>.<CRLF>` was read.
    #[getter]
    fn done(&self) -> bool {
        self.0.done()
    }

    /// None, or why the message is refused: "bare-line-ending", "nul", "line-too-long",
    /// "too-large".
    #[getter]
    fn problem(&self) -> Option<&'static str> {
        self.0.problem().map(smtp_data::Problem::as_str)
    }

    /// Bytes received so far, as sent.
    #[getter]
    fn received(&self) -> usize {
        self.0.received()
    }

    /// The message with `prefix` in front (a trace field, say), as one new `bytes`; the
    /// reader's own copy is released. Raises RuntimeError before the end of data or for a
    /// refused message.
    #[pyo3(signature = (prefix=None))]
    fn take<'py>(&mut self, py: Python<'py>, prefix: Option<&[u8]>) -> PyResult<Bound<'py, PyBytes>> {
        let prefix = prefix.unwrap_or_default();
        let message = self.0.take().ok_or_else(|| PyRuntimeError::new_err("no message: the data is not complete, or was refused"))?;
        super::joined_bytes(py, prefix, &message)
    }
}

/// The message dot-stuffed for DATA (RFC 5321 §4.5.2); the same object when no line starts
/// with a dot.
#[pyfunction]
pub fn dot_stuff<'py>(py: Python<'py>, message: &Bound<'py, PyBytes>) -> Bound<'py, PyBytes> {
    match smtp_data::dot_stuff(message.as_bytes()) {
        Some(stuffed) => PyBytes::new(py, &stuffed),
        None => message.clone(),
    }
}

/// Whether the message holds a byte over 0x7F: ``not message.isascii()``, vectorized.
#[pyfunction]
pub fn has_8bit(message: &[u8]) -> bool {
    smtp_data::has_8bit(message)
}

/// Writes a spool body file durably (`rust/spool_file.rs`), with the GIL released once for all
/// of it: a new file, its fsync and its directory's fsync; or, with `over`, the start of an
/// existing file written over and fdatasync'd (a spent body file reused; FileNotFoundError when
/// it is gone). Raises OSError with the errno.
#[pyfunction]
#[pyo3(signature = (path, data, *, over = false))]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts the arguments into owned values
pub fn write_body_file(py: Python<'_>, path: std::path::PathBuf, data: pyo3::pybacked::PyBackedBytes, over: bool) -> PyResult<()> {
    py.detach(|| if over { crate::spool_file::write_over(&path, &data) } else { crate::spool_file::write_durably(&path, &data) })
        .map_err(|error| super::errors::os_error(&error, &path))
}
