//! Every error the module raises, as one Rust type, and the one function that maps it to a
//! Python exception: each a subclass of the matching built-in, so that `except ValueError`
//! keeps working and callers who want to can catch precisely.
//!
//! | Rust | Python |
//! | --- | --- |
//! | `policy::Error::BadScore` | `ScoreError(ValueError)` |
//! | `policy::Error::BadSenderDomain` | `SenderDomainError(ValueError)` |
//! | other `policy::Error`s | `PolicyError(ValueError)` |
//! | `CacheError::NotManualClock` | `RuntimeError` (a state, not an argument) |
//! | other `CacheError`s | `CacheError(ValueError)` |
//! | `Error::NotBytes` | `MessageTypeError(TypeError)` |
//! | `Error::LengthMismatch` | `ValueError` |
//! | `Error::UnknownPhraseGroup` | `ValueError` |
//! | `Error::DkimKey`, `Error::DkimOption` | `DkimKeyError(ValueError)` |
//! | `Error::Auth` | `AuthError(ValueError)` |
//! | `Error::Srs` | `SrsError(ValueError)`, with `reason` |
//! | `std::io::Error` (a spool body file: `os_error`) | `OSError(errno, strerror, filename)`: the built-in picks the subclass (`FileNotFoundError`, ...) and `errno` is kept (the spool tells a full disk by `ENOSPC`) |
//!
//! A `PolicyError` about pools or rules (`policy::Error::Routing`) carries where: `key`, the
//! policy key as a tuple (`("rules", 2, "pool")`, `("normal_pool",)`), and `problem`, the text
//! after it; both are None for other policy errors. The configuration reports it at that key.
//!
//! An error about one message of a batch (`Error::InBatch`) is the same exception, its text
//! prefixed with the message's position and its `index` attribute set to it; the exceptions
//! that can be about one message (`ScoreError`, `SenderDomainError`, `MessageTypeError`) have
//! `index = None` otherwise.

use std::fmt;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{create_exception, intern, PyTypeInfo};

use crate::cache::CacheError as CoreCacheError;
use crate::auth::srs::SrsError as SrsFailure;
use crate::policy;
use crate::pools::RoutingError;

create_exception!(
    deliverypool,
    PolicyError,
    PyValueError,
    "A routing policy value is invalid. About pools or rules: `key` is the policy key at fault as a tuple (('rules', 2, 'pool')), `problem` what is wrong; else both None."
);
create_exception!(
    deliverypool,
    ScoreError,
    PyValueError,
    "A spam score is NaN or infinite. `index` is the message's position in a batch, else None."
);
create_exception!(
    deliverypool,
    SenderDomainError,
    PyValueError,
    "A sender_domain status is not has-records, no-records or unknown. `index` is the message's position in a batch, else None."
);
create_exception!(
    deliverypool,
    MessageTypeError,
    PyTypeError,
    "A message of a batch is not bytes. `index` is its position in the batch."
);
create_exception!(deliverypool, CacheError, PyValueError, "An argument to a DnsCache method is invalid.");
create_exception!(deliverypool, DkimKeyError, PyValueError, "A DKIM private key or its options cannot be used to sign.");
create_exception!(deliverypool, AuthError, PyValueError, "An argument to an SPF, DMARC or SRS call is invalid.");
create_exception!(
    deliverypool,
    SrsError,
    PyValueError,
    "An address an SRS rewriter refuses. `reason` is one of SRS_ERRORS (not-srs, malformed, bad-hash, expired, no-domain)."
);

/// Every error the module raises, whichever part found it.
#[derive(Debug)]
pub enum Error {
    Policy(policy::Error),
    Cache(CoreCacheError),
    /// A batch item that is not bytes; its Python type's name.
    NotBytes(String),
    /// A per-message sequence whose length is not the number of messages.
    LengthMismatch { name: &'static str, len: usize, count: usize },
    /// A name in `detect(disabled_groups=...)` that is not a phrase group's.
    UnknownPhraseGroup(String),
    /// A DKIM private key that cannot sign.
    DkimKey(crate::auth::dkim::KeyError),
    /// A DKIM key option that is not one (algorithm, canonicalization).
    DkimOption(String),
    /// An error about the message at `index` of a batch.
    InBatch { index: usize, error: Box<Error> },
    /// A bad argument to an authentication check or rewriter (auth.rs).
    Auth(String),
    /// An address the SRS rewriter refuses.
    Srs(SrsFailure),
}

impl Error {
    pub fn in_batch(self, index: usize) -> Error {
        Error::InBatch { index, error: Box::new(self) }
    }

    /// The error itself, without its batch position.
    fn root(&self) -> &Error {
        match self {
            Error::InBatch { error, .. } => error.root(),
            error => error,
        }
    }
}

impl From<policy::Error> for Error {
    fn from(error: policy::Error) -> Self {
        Error::Policy(error)
    }
}

impl From<CoreCacheError> for Error {
    fn from(error: CoreCacheError) -> Self {
        Error::Cache(error)
    }
}

impl From<crate::auth::dkim::KeyError> for Error {
    fn from(error: crate::auth::dkim::KeyError) -> Self {
        Error::DkimKey(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Policy(error) => error.fmt(f),
            Error::Cache(error) => error.fmt(f),
            Error::NotBytes(type_name) => write!(f, "must be bytes, not {type_name}"),
            Error::LengthMismatch { name, len, count } => write!(f, "{name} has {len} items but there are {count} messages"),
            Error::UnknownPhraseGroup(name) => write!(f, "no phrase group is called {name:?}"),
            Error::DkimKey(error) => error.fmt(f),
            Error::DkimOption(problem) => f.write_str(problem),
            Error::Auth(text) => f.write_str(text),
            Error::Srs(error) => error.fmt(f),
            Error::InBatch { index, error } => match **error {
                // Named as the argument is: `messages[1] must be bytes, not str`.
                Error::NotBytes(_) => write!(f, "messages[{index}] {error}"),
                _ => write!(f, "message {index} of the batch: {error}"),
            },
        }
    }
}

/// The one mapping from Rust errors to Python exceptions (see the table above).
pub fn to_py_err(py: Python<'_>, error: impl Into<Error>) -> PyErr {
    let error = error.into();
    let message = error.to_string();
    let (index, root) = match &error {
        Error::InBatch { index, error } => (Some(*index), error.root()),
        error => (None, error),
    };
    if let Error::Policy(policy::Error::Routing(routing)) = root {
        return routing_error(py, routing, &message);
    }
    let exception = match root {
        Error::Policy(policy::Error::BadScore(_)) => ScoreError::new_err(message),
        Error::Policy(policy::Error::BadSenderDomain(_)) => SenderDomainError::new_err(message),
        Error::Policy(_) => PolicyError::new_err(message),
        Error::Cache(CoreCacheError::NotManualClock) => PyRuntimeError::new_err(message),
        Error::Cache(_) => CacheError::new_err(message),
        Error::NotBytes(_) => MessageTypeError::new_err(message),
        Error::DkimKey(_) | Error::DkimOption(_) => DkimKeyError::new_err(message),
        Error::LengthMismatch { .. } | Error::UnknownPhraseGroup(_) | Error::InBatch { .. } => PyValueError::new_err(message),
        Error::Auth(_) => AuthError::new_err(message),
        Error::Srs(failure) => {
            let exception = SrsError::new_err(message);
            if let Err(failed) = exception.value(py).setattr(intern!(py, "reason"), failure.kind.as_str()) {
                return failed;
            }
            exception
        }
    };
    match index {
        Some(index) => match exception.value(py).setattr(intern!(py, "index"), index) {
            Ok(()) => exception,
            Err(failed) => failed,
        },
        None => exception,
    }
}

/// An I/O error about `path` as Python's own: `OSError(errno, strerror, filename)`, which
/// CPython turns into the subclass for the errno. (PyO3's conversion keeps only the text.)
pub fn os_error(error: &std::io::Error, path: &std::path::Path) -> PyErr {
    match error.raw_os_error() {
        Some(errno) => {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            let text = text.split(" (os error").next().unwrap_or_default().to_owned();
            pyo3::exceptions::PyOSError::new_err((errno, text, path.to_path_buf()))
        }
        None => pyo3::exceptions::PyOSError::new_err((error.to_string(), path.to_path_buf())),
    }
}

/// A `PolicyError` with its `key` and `problem` (see the module documentation).
fn routing_error(py: Python<'_>, error: &RoutingError, message: &str) -> PyErr {
    let exception = PolicyError::new_err(message.to_owned());
    let key = match error.rule {
        Some(rule) => ("rules", rule, error.field).into_pyobject(py),
        None => (error.field,).into_pyobject(py),
    };
    let attributes = key.and_then(|key| {
        let value = exception.value(py);
        value.setattr(intern!(py, "key"), key)?;
        value.setattr(intern!(py, "problem"), &error.why)
    });
    match attributes {
        Ok(()) => exception,
        Err(failed) => failed,
    }
}

/// `index = None` on the classes whose instances may name a message of a batch, so that the
/// attribute is there whether or not an error came from a batch.
pub fn add_index_defaults(py: Python<'_>) -> PyResult<()> {
    for class in [ScoreError::type_object(py), SenderDomainError::type_object(py), MessageTypeError::type_object(py)] {
        class.setattr(intern!(py, "index"), py.None())?;
    }
    let policy_error = PolicyError::type_object(py);
    policy_error.setattr(intern!(py, "key"), py.None())?;
    policy_error.setattr(intern!(py, "problem"), py.None())
}
