//! deliverypool core: header scanning, DSN detection and the routing policy, in plain Rust.
//! `python.rs` is the only module that knows about Python.
// Unsafe code only where a measured hot path needs SIMD intrinsics, each allowed by name.
#![deny(unsafe_code)]

pub mod cache;
pub mod dsn;
pub mod encoded_word;
mod line_scanner;
pub mod matcher;
pub mod phrases;
pub mod policy;
pub mod scan;

#[cfg(feature = "python")]
mod python;
