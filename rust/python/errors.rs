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
use crate::policy;

create_exception!(deliverypool, PolicyError, PyValueError, "A routing policy value is invalid.");
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
    let exception = match root {
        Error::Policy(policy::Error::BadScore(_)) => ScoreError::new_err(message),
        Error::Policy(policy::Error::BadSenderDomain(_)) => SenderDomainError::new_err(message),
        Error::Policy(_) => PolicyError::new_err(message),
        Error::Cache(CoreCacheError::NotManualClock) => PyRuntimeError::new_err(message),
        Error::Cache(_) => CacheError::new_err(message),
        Error::NotBytes(_) => MessageTypeError::new_err(message),
        Error::DkimKey(_) | Error::DkimOption(_) => DkimKeyError::new_err(message),
        Error::LengthMismatch { .. } | Error::UnknownPhraseGroup(_) | Error::InBatch { .. } => PyValueError::new_err(message),
    };
    match index {
        Some(index) => match exception.value(py).setattr(intern!(py, "index"), index) {
            Ok(()) => exception,
            Err(failed) => failed,
        },
        None => exception,
    }
}

/// `index = None` on the classes whose instances may name a message of a batch, so that the
/// attribute is there whether or not an error came from a batch.
pub fn add_index_defaults(py: Python<'_>) -> PyResult<()> {
    for class in [ScoreError::type_object(py), SenderDomainError::type_object(py), MessageTypeError::type_object(py)] {
        class.setattr(intern!(py, "index"), py.None())?;
    }
    Ok(())
}
