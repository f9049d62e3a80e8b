//! SMTP without I/O: the protocol engines the asyncio layer feeds with the connection's bytes
//! (bytes in, replies and events out, no sockets, no clock, no async runtime). The caller (the
//! asyncio protocols in `python/deliverypool/ingress/` and `outbound/`) moves the bytes and
//! makes the decisions.
//!
//! * `server`: the receiving side (the relay's listener): command parsing with the RFC 5321
//!   limits, PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES, CHUNKING (BDAT), DSN
//!   parameters, the AUTH exchanges, the STARTTLS hand-off. Message data is read by
//!   `crate::smtp_data::DataReader`, which refuses bare CR/LF, NUL, long lines and oversize.
//! * `command`: the parts of a command line (paths, ESMTP parameters, xtext) the server reads.
//! * `trace`: the relay's `Received:` field, made where the message is assembled.
//! * `client` and `reply`: the sending side (delivery) and the reply parser it reads with.

pub mod client;
pub mod command;
pub mod reply;
pub mod server;
pub mod trace;
