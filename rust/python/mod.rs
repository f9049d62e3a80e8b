//! The only place that knows about Python: thin wrappers over the pure-Rust core.
//!
//! Nothing here may panic: a panic would reach Python as a `PanicException`, which is not an
//! `Exception`. Errors go through `errors::to_py_err`; the lints below keep unwraps, panics and
//! unchecked indexing out of this layer (the core is fuzzed for the same, see fuzz/).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable)]

mod auth;
mod cache;
mod dkim;
mod dsn;
mod errors;
mod policy;
mod scan;
mod seen;
mod smtp_client;
mod smtp_data;
mod smtp_server;

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::PyClass;

use crate::labels::Label;

/// A new Python object for `value`, untracked by the cycle collector. PyO3 makes every class a
/// GC type, but the result types hold only Rust data (and `Decision` its message's `bytes`,
/// which references nothing), so they can never be part of a cycle; left
/// tracked, a batch of 100,000 decisions spent ~1,100 instructions per decision in collections
/// triggered while the batch was being built (callgrind), and every later full collection
/// walks them again.
#[allow(unsafe_code)]
fn untracked<T: PyClass>(py: Python<'_>, value: impl Into<PyClassInitializer<T>>) -> PyResult<Bound<'_, T>> {
    let object = Bound::new(py, value)?;
    // SAFETY: `object` is a live GC object just made by PyO3; untracking one that references no
    // Python object, or only objects that reference none (`bytes`), is what CPython itself does
    // for tuples of atoms. PyO3's dealloc untracks it
    // again, which does nothing for an untracked object.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
    Ok(object)
}

/// One new `bytes` holding `head` then `content`, written once. PyO3's `PyBytes::new_with`
/// zero-fills the object before the copy: for a 1 MiB message that pass cost a million
/// instructions and the page faults of fresh memory (callgrind, perf).
#[allow(unsafe_code)]
fn joined_bytes<'py>(py: Python<'py>, head: &[u8], content: &crate::smtp_data::Content) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let len = head.len() + content.len();
    let size = pyo3::ffi::Py_ssize_t::try_from(len).map_err(|_| pyo3::exceptions::PyOverflowError::new_err("message too large"))?;
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object of n bytes whose
    // contents are uninitialized (or NULL with an exception set, turned into an error). Its
    // buffer, n bytes long plus a NUL CPython put there, is written whole below before the
    // object is seen by anyone: `head`, then every byte of `content`.
    unsafe {
        let object = Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))?;
        let buffer = std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(object.as_ptr()).cast::<u8>(), len);
        let (front, back) = buffer.split_at_mut(head.len());
        front.copy_from_slice(head);
        content.copy_to(back);
        Ok(object.cast_into_unchecked())
    }
}

#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use super::auth::{
        is_srs, organizational_domain, PyDmarcCheck, PyDmarcOutcome, PySpfCheck, PySpfOutcome, PySrsRewriter,
    };
    #[pymodule_export]
    use super::cache::{PyCacheStats, PyDnsCache};
    #[pymodule_export]
    use super::dkim::{dkim_key_queries, dkim_sign, dkim_verify, PyDkimKey, PyDkimSigning, PyDkimVerdict};
    #[pymodule_export]
    use super::dsn::detect;
    #[pymodule_export]
    use super::errors::{AuthError, CacheError, DkimKeyError, MessageTypeError, PolicyError, ScoreError, SenderDomainError, SrsError};
    #[pymodule_export]
    use super::policy::{classify, classify_many, PyAuthFacts, PyDecision, PyDsnVerdict, PyPolicy};
    #[pymodule_export]
    use super::scan::{header_block, scan, PyContentType, PyHeaderFacts, PyMimePart, PyRecipientStatus};
    #[pymodule_export]
    use super::seen::PyMessageIdFilter;
    #[pymodule_export]
    use super::smtp_client::{PyClientOutcome, PySmtpClient};
    #[pymodule_export]
    use super::smtp_data::{dot_stuff, has_8bit, write_body_file, PyDataReader};
    #[pymodule_export]
    use super::smtp_server::{PySmtpMessage, PySmtpServer, PySmtpServerConfig};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::{PyModuleMethods, PyTuple};

        use crate::dsn::{DsnKind, ReportKind, Signal};
        use crate::labels::Defect;
        use crate::policy::Reason;
        use crate::pools::PoolClass;

        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // What benchmarks check before timing anything: a debug build is 10-30x slower.
        m.add("BUILD_PROFILE", if cfg!(debug_assertions) { "debug" } else { "release" })?;
        let py = m.py();
        super::errors::add_index_defaults(py)?;
        m.add("REASONS", super::names::<Reason>(py)?)?;
        m.add("SIGNALS", super::names::<Signal>(py)?)?;
        m.add("DEFECTS", super::names::<Defect>(py)?)?;
        m.add("REPORT_KINDS", super::names::<ReportKind>(py)?)?;
        m.add("DSN_KINDS", super::names::<DsnKind>(py)?)?;
        m.add("POOL_CLASSES", super::names::<PoolClass>(py)?)?;
        for (name, members) in super::dkim::tables() {
            m.add(name, PyTuple::new(py, members)?)?;
        }
        m.add("SMTP_CLIENT_EVENTS", PyTuple::new(py, super::smtp_client::event_names())?)?;
        m.add("SPF_RESULTS", super::names::<crate::auth::spf::SpfResult>(py)?)?;
        m.add("SPF_REASONS", super::names::<crate::auth::spf::SpfReason>(py)?)?;
        m.add("DMARC_RESULTS", super::names::<crate::auth::dmarc::DmarcResult>(py)?)?;
        m.add("DMARC_REASONS", super::names::<crate::auth::dmarc::DmarcReason>(py)?)?;
        m.add("DMARC_POLICIES", super::names::<crate::auth::dmarc::Policy>(py)?)?;
        m.add("SRS_ERRORS", super::names::<crate::auth::srs::SrsErrorKind>(py)?)?;
        m.add("PHRASE_GROUPS", super::dsn::phrase_groups(py)?)
    }
}

/// Every name of a closed set, in table order, as a tuple of str.
fn names<T: Label>(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, T::ALL.iter().map(|member| member.as_str()))
}
