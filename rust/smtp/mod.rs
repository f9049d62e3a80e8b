//! SMTP without I/O: the protocol engines the asyncio layer feeds with the connection's bytes.

pub mod client;
pub mod reply;
