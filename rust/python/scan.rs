//! `scan()` and its frozen result types.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::untracked;
use crate::scan::{ContentType, HeaderFacts, PartInfo, RecipientStatus};

#[pyclass(frozen, name = "ContentType", module = "deliverypool")]
pub struct PyContentType(pub ContentType<'static>);

#[pymethods]
impl PyContentType {
    /// `maintype/subtype`, lowercased.
    #[getter]
    fn mime_type(&self) -> String {
        self.0.mime_type()
    }
    #[getter]
    fn maintype(&self) -> &str {
        &self.0.maintype
    }
    #[getter]
    fn subtype(&self) -> &str {
        &self.0.subtype
    }
    /// Parameters with lowercased names; the first of a repeated name wins.
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        let params: Vec<_> = self.0.params().collect();
        for (name, value) in params.iter().rev() {
            dict.set_item(name.as_ref(), value.as_ref())?;
        }
        Ok(dict)
    }
    fn param(&self, name: &str) -> Option<String> {
        self.0.param(&name.to_ascii_lowercase()).map(std::borrow::Cow::into_owned)
    }
    fn __repr__(&self) -> String {
        format!("ContentType({:?}, params={:?})", self.0.mime_type(), self.0.params().collect::<Vec<_>>())
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyContentType>().is_ok_and(|o| o.get().0 == self.0)
    }
}

#[pyclass(frozen, name = "MimePart", module = "deliverypool")]
pub struct PyMimePart(pub PartInfo<'static>);

#[pymethods]
impl PyMimePart {
    #[getter]
    fn content_type(&self) -> PyContentType {
        PyContentType(self.0.content_type.clone())
    }
    /// 1 for a child of the top-level multipart, 2 for a grandchild, ...
    #[getter]
    fn depth(&self) -> usize {
        self.0.depth
    }
    fn __repr__(&self) -> String {
        format!("MimePart({:?}, depth={})", self.0.content_type.mime_type(), self.0.depth)
    }
}

#[pyclass(frozen, name = "RecipientStatus", module = "deliverypool")]
pub struct PyRecipientStatus(pub RecipientStatus);

#[pymethods]
impl PyRecipientStatus {
    #[getter]
    fn final_recipient(&self) -> Option<&str> {
        self.0.final_recipient.as_deref()
    }
    /// Lowercased: failed, delayed, delivered, relayed or expanded.
    #[getter]
    fn action(&self) -> Option<&str> {
        self.0.action.as_deref()
    }
    /// The enhanced status code as written, e.g. `5.1.1`.
    #[getter]
    fn status(&self) -> Option<&str> {
        self.0.status.as_deref()
    }
    #[getter]
    fn diagnostic_code(&self) -> Option<&str> {
        self.0.diagnostic_code.as_deref()
    }
    fn __repr__(&self) -> String {
        format!(
            "RecipientStatus(final_recipient={:?}, action={:?}, status={:?})",
            self.0.final_recipient, self.0.action, self.0.status
        )
    }
}

pub fn recipients_tuple<'py>(py: Python<'py>, recipients: &[RecipientStatus]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, recipients.iter().map(|r| PyRecipientStatus(r.clone())))
}

#[pyclass(frozen, name = "HeaderFacts", module = "deliverypool")]
pub struct PyHeaderFacts(pub HeaderFacts);

#[pymethods]
impl PyHeaderFacts {
    /// Offset of the first header field (after a byte-order mark, blank lines, a From_ line or
    /// junk the scanner skipped; see `defects`).
    #[getter]
    fn header_start(&self) -> usize {
        self.0.header_start
    }
    #[getter]
    fn header_length(&self) -> usize {
        self.0.header_length
    }
    #[getter]
    fn field_count(&self) -> usize {
        self.0.field_count
    }
    #[getter]
    fn content_type(&self) -> Option<PyContentType> {
        self.0.content_type.clone().map(PyContentType)
    }
    #[getter]
    fn from_(&self) -> Option<&str> {
        self.0.from.as_deref()
    }
    #[getter]
    fn sender(&self) -> Option<&str> {
        self.0.sender.as_deref()
    }
    #[getter]
    fn return_path(&self) -> Option<&str> {
        self.0.return_path.as_deref()
    }
    #[getter]
    fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }
    #[getter]
    fn auto_submitted(&self) -> Option<&str> {
        self.0.auto_submitted.as_deref()
    }
    #[getter]
    fn precedence(&self) -> Option<&str> {
        self.0.precedence.as_deref()
    }
    #[getter]
    fn x_failed_recipients(&self) -> Option<&str> {
        self.0.x_failed_recipients.as_deref()
    }
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.0.message_id.as_deref()
    }
    #[getter]
    fn score_header_values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.score_header_values)
    }
    #[getter]
    fn marker_fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.marker_fields)
    }
    #[getter]
    fn qmail_bounce(&self) -> bool {
        self.0.qmail_bounce
    }
    #[getter]
    fn parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.parts.iter().map(|p| PyMimePart(p.clone())))
    }
    #[getter]
    fn recipients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        recipients_tuple(py, &self.0.recipients)
    }
    /// `Reporting-MTA` of a report's delivery-status part, as written (`dns; mx.example.net`).
    #[getter]
    fn reporting_mta(&self) -> Option<&str> {
        self.0.reporting_mta.as_deref()
    }
    /// Message-ID of the message a report is about (its attached message or headers).
    #[getter]
    fn original_message_id(&self) -> Option<&str> {
        self.0.original_message_id.as_deref()
    }
    /// From of the message a report is about.
    #[getter]
    fn original_from(&self) -> Option<&str> {
        self.0.original_from.as_deref()
    }
    #[getter]
    fn defects<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.defects.iter().map(|d| d.as_str()))
    }
    fn __repr__(&self) -> String {
        format!(
            "HeaderFacts(fields={}, content_type={:?}, from_={:?}, subject={:?}, parts={}, defects={:?})",
            self.0.field_count,
            self.0.content_type.as_ref().map(ContentType::mime_type),
            self.0.from,
            self.0.subject,
            self.0.parts.len(),
            self.0.defects
        )
    }
}

/// Where the header block is: `(start, body)`, the offset of the first field (`header_start`:
/// after what the scanner skipped before it) and of the body (past the blank line; see
/// `scan::header_block`).
#[pyfunction]
pub fn header_block(message: &[u8]) -> (usize, usize) {
    crate::scan::header_block(message)
}

/// Scans the header block (and MIME part headers) of a raw message. Never fails on content:
/// what is odd about the input is listed in `defects`.
#[pyfunction]
#[pyo3(signature = (message, *, score_header=None))]
pub fn scan<'py>(py: Python<'py>, message: &[u8], score_header: Option<&str>) -> PyResult<Bound<'py, PyHeaderFacts>> {
    let lowered = score_header.map(str::to_ascii_lowercase);
    untracked(py, PyHeaderFacts(crate::scan::scan(message, lowered.as_deref())))
}
