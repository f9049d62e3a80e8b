//! `detect()` and the phrase-group table: what the corpus tool needs to run the detector with
//! phrase groups disabled. Routing goes through `classify`, which uses the default options.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::errors::{to_py_err, Error};
use super::policy::PyDsnVerdict;
use crate::dsn::{detect_with, DetectOptions, ReportKind};
use crate::phrases::GROUPS;
use crate::scan;

/// The phrase groups, in table order: `(name, kind, source, families, phrases)`. `source` is
/// the software that writes the wording, or None for a group introduced for the corpus
/// `families` (`lhost-*`/`rhost-*` names).
pub fn phrase_groups(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let rows = GROUPS
        .iter()
        .map(|g| {
            let families = PyTuple::new(py, g.origin.families())?;
            let phrases = PyTuple::new(py, g.phrases)?;
            (g.name, g.kind.as_str(), g.origin.source(), families, phrases).into_pyobject(py)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, rows)
}

/// The report kind and DSN verdict of a message, with the phrase groups named in
/// `disabled_groups` ignored. For the corpus tool's leave-one-family-out run.
#[pyfunction]
#[pyo3(signature = (message, *, mail_from=None, disabled_groups=None))]
pub fn detect(
    py: Python<'_>,
    message: &[u8],
    mail_from: Option<&str>,
    disabled_groups: Option<Vec<String>>,
) -> PyResult<(Option<&'static str>, Option<PyDsnVerdict>)> {
    let disabled_groups = disabled_groups.unwrap_or_default();
    let options = DetectOptions::without_groups(disabled_groups.iter().map(String::as_str))
        .map_err(|name| to_py_err(py, Error::UnknownPhraseGroup(name.to_owned())))?;
    let index = scan::index(message, None);
    let detection = detect_with(&index, message, mail_from, &options);
    Ok((detection.report_kind.map(ReportKind::as_str), detection.dsn.map(|v| PyDsnVerdict(Arc::new(v)))))
}
