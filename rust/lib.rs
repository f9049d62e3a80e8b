//! deliverypool core: header scanning, DSN detection and the routing policy, in plain Rust.
//! `python/` (`python/mod.rs` and the files beside it) is the only module that knows about
//! Python. Unsafe code is denied crate-wide in Cargo.toml's `[lints]`; the few measured hot
//! paths that need it allow it by name.

pub mod address;
pub mod auth;
pub mod cache;
pub mod dsn;
pub mod encoded_word;
pub mod labels;
mod line_scanner;
pub mod matcher;
pub mod phrases;
pub mod policy;
pub mod pools;
pub mod scan;
pub mod seen;
pub mod smtp;
pub mod smtp_data;
pub mod spool_file;

#[cfg(feature = "python")]
mod python;
