"""What one worker lets in: connections in all and per client address, with a reserve of file
descriptors for delivery and the spool, and failed AUTH per connection and per client address.

Each worker is a process of its own, with its own open-file limit, so ``max_connections`` is
the worker's: the relay as a whole serves up to workers x ``max_connections``. A client's
connections are counted across the workers of ``deliverypool relay`` (the supervisor's shared
counts, `deliverypool.ingress.client_counts`); an embedded relay counts its own. Failed AUTH
is counted across the workers too: each adds the other workers' counts, which the relay
exchanges through the state database every ``observe.flush_interval``
(`deliverypool.state.auth_failures`).

A *client* is its IPv4 address, or the /64 of its IPv6 address (what one host usually holds).
Clients in ``listener.allowed_networks`` (the relay's own applications) are not limited per
client and never refused for failed AUTH; ``max_connections`` and the per-connection AUTH limit
apply to everyone.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from deliverypool.config import ListenerConfig
from deliverypool.ingress.client_counts import ClientCounts
from deliverypool.ingress.handler import in_networks, peer_ip

__all__ = [
    "AUTH_FAILURE_CLIENTS",
    "Admission",
    "AuthFailures",
    "Limits",
    "Refusal",
    "client_key",
    "open_file_limit",
    "raise_open_file_limit",
    "refusal_reply",
]

log = logging.getLogger("deliverypool.relay")

# The reasons a connection or an AUTH is refused: a closed set (log lines and metrics use them).
Refusal = Literal["too-many-connections", "too-many-from-client", "auth-failures"]
_REFUSAL_TEXT: Final[dict[Refusal, str]] = {
    "too-many-connections": "Too many connections; try again later",
    "too-many-from-client": "Too many connections from your address; try again later",
    "auth-failures": "Too many failed authentication attempts from your address; try again later",
}

# Client addresses whose AUTH failures are remembered (least recently failed forgotten first).
AUTH_FAILURE_CLIENTS = 10_000
# The default max_connections never goes above this: an idle session costs ~10 KiB.
DEFAULT_MAX_CONNECTIONS: Final = 10_000
# The delay before a failed AUTH's answer grows with the failures on the connection up to here.
_MAX_DELAY_STEPS: Final = 30


def refusal_reply(hostname: str, reason: Refusal) -> str:
    """The 421 a refused client gets (RFC 5321 §3.8: the server closes the channel)."""
    return f"421 4.7.0 {hostname} {_REFUSAL_TEXT[reason]}"


@functools.lru_cache(maxsize=8192)
def client_key(peer: str | None) -> str:
    """Who a connection counts against: the IPv4 address, or the IPv6 /64. Cached: asked when
    a connection comes and when it goes, and clients come back."""
    if not peer:
        return ""
    ip = peer_ip(peer)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else peer


def open_file_limit() -> int:
    """This process's soft RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> int:
    """Raises the soft open-file limit to the hard one (what an unprivileged process may do);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - a platform that refuses
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


@dataclass(frozen=True)
class Limits:
    """The listener limits of one worker, with the defaults that depend on its open-file limit
    worked out (:meth:`for_listener`)."""

    max_connections: int
    max_connections_per_client: int
    max_auth_failures: int
    max_auth_failures_per_client: int
    auth_failure_delay: float
    auth_failure_window: float
    open_files: int
    fd_reserve: int

    @classmethod
    def for_listener(cls, listener: ListenerConfig, open_files: int | None = None) -> Limits:
        """`open_files` is the worker's open-file limit (default: this process's)."""
        files = open_file_limit() if open_files is None else open_files
        reserve = listener.fd_reserve
        if reserve is None:
            reserve = min(max(128, files // 4), files // 2)
        room = max(1, files - reserve)
        if room < 16:
            log.warning("an open-file limit of %d leaves %d connection(s) after reserving %d: raise the limit", files, room, reserve)
        wanted = listener.max_connections
        if wanted is None:
            connections = min(room, DEFAULT_MAX_CONNECTIONS)
        else:
            connections = min(wanted, room)
            if connections < wanted:
                log.warning(
                    "listener.max_connections = %d does not fit in %d open files with %d reserved: using %d",
                    wanted, files, reserve, connections,
                )
        return cls(
            max_connections=connections,
            max_connections_per_client=listener.max_connections_per_client,
            max_auth_failures=listener.max_auth_failures,
            max_auth_failures_per_client=listener.max_auth_failures_per_client,
            auth_failure_delay=listener.auth_failure_delay,
            auth_failure_window=listener.auth_failure_window,
            open_files=files,
            fd_reserve=reserve,
        )

    def auth_delay(self, failures: int) -> float:
        """Seconds to wait before answering the `failures`-th failed AUTH of a connection."""
        return self.auth_failure_delay * min(failures, _MAX_DELAY_STEPS)


class AuthFailures:
    """Failed AUTH attempts per client, in bounded memory: an LRU of at most `capacity`
    clients, each with a count that is forgotten `window` seconds after its latest failure."""

    def __init__(self, window: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.capacity = capacity
        self.clock = clock
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Failures counted since the last exchange with the other workers, and theirs (with the
        # end of their window on `clock`), set by the exchange.
        self.pending: collections.Counter[str] = collections.Counter()
        self.others: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def record(self, key: str) -> int:
        """Counts one failure of `key`; returns its count within the window."""
        now = self.clock()
        count, until = self._clients.pop(key, (0, 0.0))
        if until <= now:
            count = 0
        self._clients[key] = (count + 1, now + self.window)
        while len(self._clients) > self.capacity:
            self._clients.popitem(last=False)
        if len(self.pending) < self.capacity or key in self.pending:
            self.pending[key] += 1
        return count + 1 + self._others(key, now)

    def _others(self, key: str, now: float) -> int:
        entry = self.others.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0

    def count(self, key: str) -> int:
        """`key`'s failures within the window. Asking keeps a client that is still knocking
        from being the first forgotten."""
        now = self.clock()
        others = self._others(key, now) if self.others else 0
        entry = self._clients.get(key)
        if entry is None:
            return others
        if entry[1] <= now:
            del self._clients[key]
            return others
        self._clients.move_to_end(key)
        return entry[0] + others


class Admission:
    """The connection and AUTH-failure counts of one worker's listener."""

    def __init__(self, listener: ListenerConfig, limits: Limits, shared: ClientCounts | None = None) -> None:
        self.limits = limits
        self.hostname = listener.hostname
        self._exempt = listener.allowed_networks
        self.open = 0
        self._per_client: dict[str, int] = {}
        # A worker of `deliverypool relay`: the connections per client at every worker.
        self.shared = shared
        self.auth_failures = AuthFailures(limits.auth_failure_window, AUTH_FAILURE_CLIENTS)

    def exempt(self, peer: str | None) -> bool:
        return in_networks(peer, self._exempt)

    def admit(self, peer: str | None) -> Refusal | None:
        """Counts a new connection from `peer` and returns None, or returns why it is refused
        (and counts nothing). Every admitted connection is `release`d once when it ends."""
        limits = self.limits
        if self.open >= limits.max_connections:
            return "too-many-connections"
        key = client_key(peer)
        if not self.exempt(peer):
            shared = self.shared
            current = shared.count(key) if shared is not None else self._per_client.get(key, 0)
            if current >= limits.max_connections_per_client:
                return "too-many-from-client"
            if self.auth_failures.count(key) >= limits.max_auth_failures_per_client:
                return "auth-failures"
            if shared is not None:
                shared.add(key, 1)
        self.open += 1
        self._per_client[key] = self._per_client.get(key, 0) + 1
        return None

    def release(self, peer: str | None) -> None:
        key = client_key(peer)
        if self.shared is not None and not self.exempt(peer):
            self.shared.add(key, -1)
        self.open -= 1
        left = self._per_client.get(key, 1) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)

    def auth_failed(self, peer: str | None) -> bool:
        """Counts a failed AUTH from `peer` (not from an exempt one); True when the client is
        now refused."""
        if self.exempt(peer):
            return False
        return self.auth_failures.record(client_key(peer)) >= self.limits.max_auth_failures_per_client

    def auth_refused(self, peer: str | None) -> bool:
        """True while `peer` is refused for failed AUTH."""
        if self.exempt(peer):
            return False
        return self.auth_failures.count(client_key(peer)) >= self.limits.max_auth_failures_per_client
