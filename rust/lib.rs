//! deliverypool core: header scanning, DSN detection and the routing policy, in plain Rust.
//! `python.rs` is the only module that knows about Python.
// Unsafe code only where a measured hot path needs SIMD intrinsics, each allowed by name.
#![deny(unsafe_code)]

pub mod cache;
pub mod dsn;
pub mod encoded_word;
mod line_scanner;
pub mod policy;
pub mod scan;
pub mod seen;
pub mod smtp_data;

#[cfg(feature = "python")]
mod python;
