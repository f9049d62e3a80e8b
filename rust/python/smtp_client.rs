//! `SmtpClient` (the sans-IO SMTP client of one outbound connection, rust/smtp/client.rs) and
//! `ClientOutcome`, what one transaction gave.
//!
//! The asyncio protocol in python/deliverypool/outbound/client.py calls `receive` once per read
//! and gets back `(event, bytes to write or None)`; events are small ints, their names in
//! `SMTP_CLIENT_EVENTS` (an int is the cheapest thing to return and compare per read).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::smtp::client::{Client, Envelope, Event, Rcpt, Refusal, TlsPolicy};

/// The event names, in the order of their numbers.
pub fn event_names() -> Vec<&'static str> {
    Event::ALL.iter().map(|event| event.as_str()).collect()
}

fn number(event: Event) -> u8 {
    Event::ALL.iter().position(|e| *e == event).and_then(|n| u8::try_from(n).ok()).unwrap_or(0)
}

type Step<'py> = (u8, Option<Bound<'py, PyBytes>>);

/// The SMTP client of one connection, without I/O (see rust/smtp/client.rs).
#[pyclass(name = "SmtpClient", module = "deliverypool")]
pub struct PySmtpClient(Client);

impl PySmtpClient {
    fn step<'py>(&mut self, py: Python<'py>, event: Event) -> Step<'py> {
        let output = self.0.has_output().then(|| PyBytes::new(py, &self.0.take_output()));
        (number(event), output)
    }
}

#[pymethods]
impl PySmtpClient {
    /// `tls` is the pool's policy: "opportunistic", "required" or "none"; `peer` names the
    /// connection in lost recipients' replies ("host[ip]:port").
    #[new]
    #[pyo3(signature = (*, ehlo_name, tls, peer))]
    fn new(ehlo_name: &str, tls: &str, peer: &str) -> PyResult<Self> {
        let tls = match tls {
            "opportunistic" => TlsPolicy::Opportunistic,
            "required" => TlsPolicy::Required,
            "none" => TlsPolicy::Never,
            other => return Err(PyValueError::new_err(format!("tls must be opportunistic, required or none, not {other:?}"))),
        };
        if ehlo_name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(PyValueError::new_err(format!("ehlo_name {ehlo_name:?} holds a space or a control character")));
        }
        Ok(PySmtpClient(Client::new(ehlo_name, tls, peer)))
    }

    /// Reads what the server sent (one call per read): `(event, bytes to write now or None)`.
    fn receive<'py>(&mut self, py: Python<'py>, data: &[u8]) -> Step<'py> {
        let event = self.0.receive(data);
        self.step(py, event)
    }

    /// True when bytes of the last read were held back: call `receive(b"")` after acting.
    #[getter]
    fn holds_input(&self) -> bool {
        self.0.holds_input()
    }

    /// Starts a transaction: `(event, the commands to write)`. The event is SEND_BODY when the
    /// body follows the commands at once (BDAT), DONE when nothing was sent (see `outcome()`).
    #[pyo3(signature = (mail_from, recipients, *, size, eight_bit, in_memory, ends_with_crlf, ret=None, envid=None, notify=None, orcpt=None))]
    #[allow(clippy::too_many_arguments)]
    fn begin<'py>(
        &mut self,
        py: Python<'py>,
        mail_from: String,
        recipients: Vec<String>,
        size: u64,
        eight_bit: bool,
        in_memory: bool,
        ends_with_crlf: bool,
        ret: Option<String>,
        envid: Option<String>,
        notify: Option<Vec<Option<String>>>,
        orcpt: Option<Vec<Option<String>>>,
    ) -> Step<'py> {
        let envelope = Envelope {
            mail_from,
            recipients,
            size,
            eight_bit,
            in_memory,
            ends_with_crlf,
            ret,
            envid,
            notify: notify.unwrap_or_default(),
            orcpt: orcpt.unwrap_or_default(),
        };
        let event = self.0.begin(envelope);
        self.step(py, event)
    }

    /// TLS is up: returns the EHLO to write.
    fn tls_started<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.0.tls_started();
        PyBytes::new(py, &self.0.take_output())
    }

    /// Ends the session: returns the QUIT to write (empty when the connection is unusable).
    fn quit<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.0.quit();
        PyBytes::new(py, &self.0.take_output())
    }

    /// The connection ended; `why` goes into lost recipients' reply. Returns the event.
    fn connection_lost(&mut self, why: &str) -> u8 {
        number(self.0.connection_lost(why))
    }

    /// How to write the body now: `(dot_stuff, suffix)`; None when no body is due.
    fn body_frame<'py>(&self, py: Python<'py>) -> Option<(bool, Bound<'py, PyBytes>)> {
        self.0.body_frame().map(|frame| (frame.dot_stuff, PyBytes::new(py, frame.suffix())))
    }

    /// What the last transaction gave (after DONE), or None.
    fn outcome(&mut self, py: Python<'_>) -> PyResult<Option<PyClientOutcome>> {
        let Some(outcome) = self.0.take_outcome() else {
            return Ok(None);
        };
        // One str per distinct reply, shared by the recipients that got it.
        let texts: Vec<Bound<'_, PyString>> = outcome.replies.iter().map(|reply| PyString::new(py, &reply.to_string())).collect();
        let lost = outcome.lost.as_deref().map(|text| PyString::new(py, text));
        let mut replies = Vec::with_capacity(outcome.recipients.len());
        for rcpt in &outcome.recipients {
            let entry: Option<(Bound<'_, PyString>, bool)> = match rcpt {
                Rcpt::Reply(index) => texts.get(*index).map(|text| (text.clone(), true)),
                Rcpt::Untried => None,
                Rcpt::Local(local) => Some((PyString::new(py, &local.text()), false)),
                Rcpt::Lost => Some((
                    lost.clone().unwrap_or_else(|| PyString::new(py, "451 4.4.2 Connection lost")),
                    false,
                )),
            };
            replies.push(entry);
        }
        let last = outcome.last.and_then(|index| texts.get(index)).map(|text| text.clone().unbind());
        Ok(Some(PyClientOutcome {
            replies: PyTuple::new(py, replies)?.unbind(),
            last,
            reconnect: outcome.reconnect,
            lost: lost.map(Bound::unbind),
        }))
    }

    /// Why the session could not be set up, as text (a reply as "code text"), or None.
    #[getter]
    fn refusal(&self) -> Option<String> {
        self.0.refusal().map(Refusal::text)
    }

    /// The code of the reply that refused the session, if a reply did.
    #[getter]
    fn refusal_code(&self) -> Option<u16> {
        match self.0.refusal() {
            Some(Refusal::Reply(reply)) => Some(reply.code),
            _ => None,
        }
    }

    /// The server's greeting ("220 text"), once it came.
    #[getter]
    fn greeting(&self) -> Option<String> {
        self.0.greeting().map(ToString::to_string)
    }

    /// The extension keywords of the last EHLO reply, in upper case.
    #[getter]
    fn extensions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.extensions().keywords)
    }

    #[getter]
    fn tls_active(&self) -> bool {
        self.0.tls_active()
    }

    /// True while a transaction can begin.
    #[getter]
    fn ready(&self) -> bool {
        self.0.is_ready()
    }

    /// Transactions begun on this connection.
    #[getter]
    fn transactions(&self) -> u32 {
        self.0.transactions()
    }

    /// Why no further transaction can begin, once none can.
    #[getter]
    fn broken(&self) -> Option<&str> {
        self.0.broken()
    }
}

/// What one transaction gave. `replies` has one entry per recipient given to `begin`: `(reply,
/// remote)` (remote False for a reply the client gave itself: an address that cannot be sent
/// to this server, or a lost connection), or None for a recipient not tried in this
/// transaction (452 too many recipients). `last` is the server reply that ended the transaction;
/// `reconnect` is true when a reused connection was closed before anything was attempted;
/// `lost` says why the connection ended, when it did.
#[pyclass(frozen, name = "ClientOutcome", module = "deliverypool")]
pub struct PyClientOutcome {
    #[pyo3(get)]
    replies: Py<PyTuple>,
    #[pyo3(get)]
    last: Option<Py<PyString>>,
    #[pyo3(get)]
    reconnect: bool,
    #[pyo3(get)]
    lost: Option<Py<PyString>>,
}
