//! `SmtpServer`: the sans-IO SMTP server engine (`crate::smtp::server`) for one connection, fed
//! by the asyncio protocol in `deliverypool.ingress.session`.
//!
//! One call per read: `feed(data, handler)` runs every command of the read, calling the
//! handler's `on_mail(address, smtputf8)`, `on_rcpt(address, mail_from, smtputf8, accepted)`, `on_message`, `on_auth` and `on_starttls` where a decision is
//! needed; a handler that answers at once (a reply string) lets the engine read on, one that
//! returns None answers later with `answer(reply, handler)`, and the unread bytes wait in the
//! engine meanwhile. Both return the replies to write, as one `bytes` (or None). The GIL is
//! held throughout: the work per read is a few microseconds (the DATA reader runs at memchr
//! speed), less than releasing and taking it back would cost, and the handler is Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::smtp::command::xtext_decode;
use crate::smtp::server::{Body, Config, Event, Mechanism, Notify, Ret, Server};

/// The settings shared by every connection of a listener.
#[pyclass(name = "SmtpServerConfig", module = "deliverypool", frozen)]
pub struct PySmtpServerConfig(Config);

#[pymethods]
impl PySmtpServerConfig {
    #[new]
    #[pyo3(signature = (hostname, *, ident = "deliverypool", size_limit, line_length_limit = 1001, command_size_limit = 512,
        auth = false, auth_requires_tls = true, tls = false, max_unknown_commands = 5, call_limit = 10_000))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        hostname: &str,
        ident: &str,
        size_limit: usize,
        line_length_limit: usize,
        command_size_limit: usize,
        auth: bool,
        auth_requires_tls: bool,
        tls: bool,
        max_unknown_commands: u32,
        call_limit: u32,
    ) -> PyResult<Self> {
        if hostname.is_empty() || !hostname.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(PyValueError::new_err(format!("hostname must be printable ASCII without spaces: {hostname:?}")));
        }
        if line_length_limit < 100 || command_size_limit < 100 {
            return Err(PyValueError::new_err("line_length_limit and command_size_limit must be at least 100"));
        }
        let mut config = Config::new(hostname);
        config.ident = ident.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect();
        config.size_limit = size_limit;
        config.line_limit = line_length_limit;
        config.command_limit = command_size_limit;
        config.auth = auth;
        config.auth_requires_tls = auth_requires_tls;
        config.tls = tls;
        config.max_unknown = max_unknown_commands.max(1);
        config.call_limit = call_limit;
        Ok(PySmtpServerConfig(config))
    }

    #[getter]
    fn hostname(&self) -> &str {
        &self.0.hostname
    }

    #[getter]
    fn size_limit(&self) -> usize {
        self.0.size_limit
    }
}

/// A whole message with its envelope, as `on_message` gets it.
#[pyclass(name = "SmtpMessage", module = "deliverypool", frozen)]
pub struct PySmtpMessage {
    /// The message as received, the relay's `Received:` field in front.
    #[pyo3(get)]
    content: Py<PyBytes>,
    /// The reverse-path ("" for `<>`), decoded as UTF-8 with surrogateescape.
    #[pyo3(get)]
    mail_from: Py<PyString>,
    #[pyo3(get)]
    recipients: Py<PyTuple>,
    #[pyo3(get)]
    smtputf8: bool,
    /// "7BIT", "8BITMIME" or None.
    #[pyo3(get)]
    body: Option<&'static str>,
    /// "FULL", "HDRS" or None (RFC 3461 RET).
    #[pyo3(get)]
    ret: Option<&'static str>,
    /// ENVID, xtext-decoded (None when not given).
    #[pyo3(get)]
    envid: Option<String>,
    /// Per recipient: NOTIFY ("NEVER", or some of "SUCCESS,FAILURE,DELAY"), or None.
    #[pyo3(get)]
    notify: Py<PyTuple>,
    /// Per recipient: ORCPT as `addr-type;address` with the address xtext-decoded, or None.
    #[pyo3(get)]
    orcpt: Py<PyTuple>,
    /// True when it came in BDAT chunks.
    #[pyo3(get)]
    chunked: bool,
    /// The HELO/EHLO name ("unknown" without one), UTF-8 with surrogateescape.
    #[pyo3(get)]
    helo: Py<PyString>,
}

/// The SMTP session of one connection.
#[pyclass(name = "SmtpServer", module = "deliverypool")]
pub struct PySmtpServer {
    core: Server,
    /// Bytes read but not yet used: they wait while a decision is pending.
    backlog: Vec<u8>,
}

/// `bytes` as a str the way aiosmtpd gave arguments: UTF-8, other bytes as lone surrogates.
fn decode<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(PyString::new(py, text)),
        Err(_) => Ok(PyBytes::new(py, bytes).call_method1(intern!(py, "decode"), ("utf-8", "surrogateescape"))?.cast_into::<PyString>()?),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the handler returned: a reply (str or bytes) to give now, or None for later.
fn reply_of(value: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(Some(text.to_str()?.as_bytes().to_vec()));
    }
    Ok(Some(value.cast::<PyBytes>()?.as_bytes().to_vec()))
}

impl PySmtpServer {
    /// The handler's answer to `event` (None: it answers later).
    fn decide(core: &mut Server, py: Python<'_>, handler: &Bound<'_, PyAny>, event: Event) -> PyResult<Option<Vec<u8>>> {
        let value = match event {
            Event::Mail => {
                let (address, smtputf8) = core.mail().map(|m| (m.address.as_slice(), m.smtputf8)).unwrap_or_default();
                handler.call_method1(intern!(py, "on_mail"), (decode(py, address)?, smtputf8))?
            }
            Event::Rcpt => {
                let address = core.rcpt().map(|r| r.address.as_slice()).unwrap_or_default();
                let (mail_from, smtputf8) = core.mail().map(|m| (m.address.as_slice(), m.smtputf8)).unwrap_or_default();
                let accepted = core.envelope().recipients.len();
                let args = (decode(py, address)?, decode(py, mail_from)?, smtputf8, accepted);
                handler.call_method1(intern!(py, "on_rcpt"), args)?
            }
            Event::Message => {
                let message = Self::message(core, py)?;
                handler.call_method1(intern!(py, "on_message"), (message,))?
            }
            Event::Auth => {
                let Some(auth) = core.auth() else {
                    return Ok(None);
                };
                let mechanism = auth.mechanism.map(Mechanism::as_str);
                let args = (mechanism, PyBytes::new(py, &auth.login), PyBytes::new(py, &auth.password), auth.failure);
                handler.call_method1(intern!(py, "on_auth"), args)?
            }
            Event::StartTls => {
                handler.call_method0(intern!(py, "on_starttls"))?;
                return Ok(None);
            }
        };
        reply_of(&value)
    }

    fn message<'py>(core: &mut Server, py: Python<'py>) -> PyResult<Bound<'py, PySmtpMessage>> {
        let (trace, body) = core.take_message().unwrap_or_default();
        let content = super::joined_bytes(py, &trace, &body)?;
        drop(body);
        let envelope = core.envelope();
        let mail = &envelope.mail;
        let recipients = PyTuple::new(py, envelope.recipients.iter().map(|r| decode(py, &r.address)).collect::<PyResult<Vec<_>>>()?)?;
        let notify = PyTuple::new(py, envelope.recipients.iter().map(|r| r.notify.map(Notify::to_text)))?;
        let orcpt = PyTuple::new(
            py,
            envelope.recipients.iter().map(|r| {
                r.orcpt.as_deref().map(|value| match value.iter().position(|&b| b == b';') {
                    Some(semi) => {
                        let (kind, address) = value.split_at(semi);
                        format!("{};{}", lossy(kind), lossy(&xtext_decode(address.get(1..).unwrap_or_default())))
                    }
                    None => lossy(value),
                })
            }),
        )?;
        let message = PySmtpMessage {
            content: content.unbind(),
            mail_from: decode(py, &mail.address)?.unbind(),
            recipients: recipients.unbind(),
            smtputf8: mail.smtputf8,
            body: mail.body.map(|b| match b {
                Body::SevenBit => "7BIT",
                Body::EightBitMime => "8BITMIME",
            }),
            ret: mail.ret.map(|r| match r {
                Ret::Full => "FULL",
                Ret::Headers => "HDRS",
            }),
            envid: mail.envid.as_deref().map(|e| lossy(&xtext_decode(e))),
            notify: notify.unbind(),
            orcpt: orcpt.unbind(),
            chunked: core.message_chunked(),
            helo: decode(py, core.helo().unwrap_or(b"unknown"))?.unbind(),
        };
        Bound::new(py, message)
    }

    /// Runs the engine over the backlog and then `data`, answering with the handler, until
    /// everything is read or a decision is pending.
    fn run(&mut self, py: Python<'_>, data: &[u8], handler: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut failure = None;
        let core = &mut self.core;
        let mut decide = |event: Event, core: &mut Server| match Self::decide(core, py, handler, event) {
            Ok(reply) => reply,
            Err(error) => {
                failure = Some(error);
                None
            }
        };
        if self.backlog.is_empty() {
            let used = core.drive(data, &mut decide);
            self.backlog.extend_from_slice(data.get(used..).unwrap_or_default());
        } else {
            self.backlog.extend_from_slice(data);
            let used = core.drive(&self.backlog, &mut decide);
            self.backlog.drain(..used.min(self.backlog.len()));
        }
        if core.waiting() == Some(Event::StartTls) || core.closed() {
            self.backlog = Vec::new();
        }
        failure.map_or(Ok(()), Err)
    }

    fn output<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let out = self.core.output();
        if out.is_empty() {
            return None;
        }
        let bytes = PyBytes::new(py, out);
        self.core.clear_output();
        Some(bytes)
    }
}

#[pymethods]
impl PySmtpServer {
    /// A session for a client at `peer` (its IP address as text, for the `Received:` field);
    /// `take_output()` then gives the greeting.
    #[new]
    fn new(config: &Bound<'_, PySmtpServerConfig>, peer: &str) -> Self {
        PySmtpServer { core: Server::new(config.get().0.clone(), peer), backlog: Vec::new() }
    }

    /// Reads `data` (bytes the client sent), calling `handler` for each decision; returns the
    /// replies to send, or None. After a handler returned None nothing more is read until
    /// `answer`. An exception from the handler propagates (the engine then waits for `answer`).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8], handler: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.run(py, data, handler)?;
        Ok(self.output(py))
    }

    /// The answer to the pending decision (an SMTP reply line), then the bytes that waited are
    /// read as `feed` reads; returns the replies to send, or None.
    fn answer<'py>(&mut self, py: Python<'py>, reply: &str, handler: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.core.answer(reply.as_bytes());
        self.run(py, b"", handler)?;
        Ok(self.output(py))
    }

    /// The TLS handshake after STARTTLS is done: the session starts over.
    fn tls_started(&mut self) {
        self.backlog = Vec::new();
        self.core.tls_started();
    }

    /// Ends the session with `reply` (the idle timeout's 421, say); returns what to send.
    fn shutdown<'py>(&mut self, py: Python<'py>, reply: &str) -> Option<Bound<'py, PyBytes>> {
        self.core.shutdown(reply.as_bytes());
        self.backlog = Vec::new();
        self.output(py)
    }

    /// The replies written and not yet returned (the greeting, at first).
    fn take_output<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.output(py)
    }

    /// True when a command or message bytes arrived since the last call.
    fn take_activity(&mut self) -> bool {
        self.core.take_activity()
    }

    /// True once the session ended (221 or 421 sent): close the connection after writing.
    #[getter]
    fn closed(&self) -> bool {
        self.core.closed()
    }

    /// The decision awaited: "mail", "rcpt", "message", "auth", "starttls", or None.
    #[getter]
    fn waiting(&self) -> Option<&'static str> {
        self.core.waiting().map(|event| match event {
            Event::Mail => "mail",
            Event::Rcpt => "rcpt",
            Event::Message => "message",
            Event::Auth => "auth",
            Event::StartTls => "starttls",
        })
    }

    /// In the middle of a message's data.
    #[getter]
    fn in_message(&self) -> bool {
        self.core.in_message()
    }

    /// The HELO/EHLO name, decoded as UTF-8 with surrogateescape, or None.
    #[getter]
    fn helo<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyString>>> {
        self.core.helo().map(|h| decode(py, h)).transpose()
    }

    #[getter]
    fn authenticated(&self) -> bool {
        self.core.authenticated()
    }

    #[getter]
    fn tls(&self) -> bool {
        self.core.tls()
    }

    /// Bytes waiting to be read once the pending decision is answered.
    #[getter]
    fn buffered(&self) -> usize {
        self.backlog.len()
    }
}
