//! deliverypool core: header scanning, DSN detection and the routing policy, in plain Rust.
//! `python.rs` is the only module that knows about Python.
#![forbid(unsafe_code)]

pub mod cache;
pub mod dsn;
pub mod encoded_word;
pub mod policy;
pub mod scan;

#[cfg(feature = "python")]
mod python;
