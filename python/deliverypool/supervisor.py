"""The relay on every core: one supervisor process and N worker processes.

The supervisor binds the listening socket once and hands it to every worker (an inherited
descriptor: all workers accept on the same socket, so a worker that dies takes no queued
connection with it and the port never closes). Each worker is a whole relay (`app.Relay`: SMTP
front end, router, delivery) with a spool *shard* of its own, ``SPOOL/shard-K``; a message
stays in the shard of the worker that accepted it until it is delivered or bounced.

The socket is bound but not listening until a worker is ready: each worker calls ``listen()``
on it when it has recovered its shard and is about to serve, and tells the supervisor so
through a pipe (``--ready-fd``). Until then a client's connection is refused at once instead of
waiting in the backlog for a greeting that may never come.

When a worker exits unexpectedly the supervisor starts a new one for the same shard at once
(after a pause that doubles, up to 30 s, while workers keep dying within seconds of their
start); the new worker recovers the shard like any relay start (what was in flight is sent
again: at-least-once). A worker that dies before it is ready, `MAX_START_FAILURES` times in a
row, while no other worker serves, makes the supervisor give up: it closes the socket, stops
the workers and exits with status 1 (the workers' own lines say why), rather than hold a port
nobody serves. SIGTERM or SIGINT to the supervisor stops the workers (each finishes its
transactions for a few seconds) and then the supervisor. Workers die with the supervisor
(``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphan holding a shard.

What must be the same for every worker (sender counters, restrictions, surge windows, drained
source addresses) lives in the shared state database ``SPOOL/state.sqlite3``
(:mod:`deliverypool.state`), which every worker opens; with ``[state] redis`` it lives in Redis and is shared by nodes too.
The open connections per client address, which change at every connection, are in a shared
memory region the supervisor creates and passes to each worker (:mod:`deliverypool.ingress.client_counts`),
and so is each shard's low-space flag (:mod:`deliverypool.queue.space`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deliverypool.config import RelayConfig
from deliverypool.ingress.client_counts import ClientCounts
from deliverypool.queue.space import SpaceFlags

__all__ = ["MAX_START_FAILURES", "Supervisor", "default_workers", "listen_socket", "shard_directory", "shared_client_counts"]

log = logging.getLogger("deliverypool.supervisor")

# A worker that dies sooner than this after its start counts as crashing: the next start waits.
_STABLE_AFTER = 10.0
_MAX_PAUSE = 30.0
_STOP_GRACE = 15.0
# A worker that dies before it is ready this many times in a row, with no other worker serving:
# the supervisor gives up (exit status 1) instead of holding a socket nobody serves.
MAX_START_FAILURES = 5


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def shard_directory(spool: Path, shard: int) -> Path:
    return spool / f"shard-{shard}"


def listen_socket(host: str, port: int, backlog: int, *, wait: float = 10.0, listen: bool = True) -> socket.socket:
    """The relay's socket, bound once by the supervisor (with `listen` false: each worker calls
    ``listen(listener.backlog)`` when it is ready to serve), or listening at once for a relay
    that listens on its own. While the address is in use it tries again for up to `wait`
    seconds: after a killed supervisor, its workers (which the kernel kills too) may hold the
    socket for a moment."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait
    while True:
        try:
            sock = _bound(family, host, port)
            break
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    if listen:
        try:
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    sock.set_inheritable(True)
    somaxconn = _somaxconn()
    if somaxconn is not None and backlog > somaxconn:
        log.warning("listener.backlog = %d, but the kernel caps it at net.core.somaxconn = %d", backlog, somaxconn)
    return sock


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), as `socket.create_server` makes it, not listening."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


@dataclass
class _Worker:
    shard: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    # The read end of the pipe the worker writes to once it serves (--ready-fd).
    ready_pipe: int | None = None
    ready: bool = False
    # Exits before being ready, in a row.
    start_failures: int = 0


@dataclass
class Supervisor:
    """Starts, watches and stops the workers of one relay configuration."""

    config_path: Path
    config: RelayConfig
    workers: int
    loop: str | None = None
    _children: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    # The workers' connections per client address (ingress/client_counts.py); None where the
    # system has no memfd or refuses one (each worker then counts its own).
    _counts: ClientCounts | None = None
    # Each shard's low-space flag (queue/space.py); None without memfd (each shard on its own).
    _space: SpaceFlags | None = None
    # Why the supervisor gave up (workers that never became ready), if it did.
    _gave_up: str | None = None

    def run(self) -> int:
        """Runs until SIGTERM or SIGINT (0), or until it gives up on workers that cannot start
        (1). The listening address is bound first: an error binding it is an `OSError`."""
        listener = self.config.listener
        sock = listen_socket(listener.host, listener.port, listener.backlog, listen=False)
        adopt_unsharded_spool(self.config.spool.directory)
        self._counts = shared_client_counts(self.workers)
        self._space = shared_space_flags(self.workers)
        log.info("supervisor: %d worker(s) on %s:%d, spool %s", self.workers, listener.host, listener.port, self.config.spool.directory)
        previous = {signum: signal.signal(signum, self._stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        try:
            self._children = [_Worker(shard) for shard in range(self.workers)]
            for worker in self._children:
                self._start(worker, sock)
            while not self._stopping:
                self._watch(sock)
                time.sleep(0.1)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            sock.close()  # first: from now on a client is refused rather than kept waiting
            self._stop_all()
            for worker in self._children:
                self._close_ready_pipe(worker)
            if self._counts is not None:
                self._counts.close()
            if self._space is not None:
                self._space.close()
        if self._gave_up is not None:
            log.error("supervisor: %s", self._gave_up)
            return 1
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _hangup(self, signum: int, frame: object) -> None:
        """SIGHUP: every worker reloads (its DKIM and SRS keys, from the configuration file)."""
        for worker in self._children:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGHUP)

    def _start(self, worker: _Worker, sock: socket.socket) -> None:
        command = [sys.executable, "-m", "deliverypool.cli", "relay", "--config", str(self.config_path)]
        command += ["--worker", str(worker.shard), "--listen-fd", str(sock.fileno()), "--workers", str(self.workers)]
        fds = [sock.fileno()]
        if self._counts is not None:
            command += ["--client-counts-fd", str(self._counts.fd)]
            fds.append(self._counts.fd)
        if self._space is not None:
            command += ["--space-fd", str(self._space.fd)]
            fds.append(self._space.fd)
        read_end, write_end = os.pipe()
        command += ["--ready-fd", str(write_end)]
        fds.append(write_end)
        if self.loop:
            command += ["--loop", self.loop]
        environment = dict(os.environ, DELIVERYPOOL_SUPERVISOR=str(os.getpid()))
        try:
            # SIGHUP blocked from the start (the mask survives exec): a worker still starting keeps
            # it pending until its handler is in place (run_relay), instead of dying of it.
            worker.process = subprocess.Popen(command, pass_fds=fds, env=environment, preexec_fn=_block_hangup)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        worker.ready_pipe, worker.ready = read_end, False
        worker.started = time.monotonic()
        log.info("supervisor: worker %d started (pid %d)", worker.shard, worker.process.pid)

    def _close_ready_pipe(self, worker: _Worker) -> None:
        if worker.ready_pipe is not None:
            os.close(worker.ready_pipe)
            worker.ready_pipe = None

    def _check_ready(self, worker: _Worker) -> None:
        if worker.ready or worker.ready_pipe is None:
            return
        try:
            said = os.read(worker.ready_pipe, 1)
        except BlockingIOError:
            return
        if said:
            worker.ready = True
            worker.start_failures = 0
            self._close_ready_pipe(worker)

    def _watch(self, sock: socket.socket) -> None:
        now = time.monotonic()
        for worker in self._children:
            self._check_ready(worker)
            process = worker.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                worker.process = None
                self._check_ready(worker)  # it may have served, then died
                self._close_ready_pipe(worker)
                if self._counts is not None:
                    # The kernel closed its connections: they stop counting now, not at its restart.
                    self._counts.clear(worker.shard)
                if self._space is not None:
                    self._space.clear(worker.shard)
                if not worker.ready:
                    worker.start_failures += 1
                    serving = any(w.ready and w.process is not None for w in self._children if w is not worker)
                    if worker.start_failures >= MAX_START_FAILURES and not serving:
                        self._gave_up = (
                            f"worker {worker.shard} exited before it was ready {worker.start_failures} times in a row "
                            f"(last exit status {code}) and no other worker serves: stopping (the lines above say why)"
                        )
                        self._stopping = True
                        return
                worker.restarts += 1
                if now - worker.started < _STABLE_AFTER:
                    worker.pause = min(_MAX_PAUSE, max(0.5, worker.pause * 2))
                else:
                    worker.pause = 0.0
                worker.restart_at = now + worker.pause
                log.error("supervisor: worker %d (pid %d) exited with %s; restarting in %.1fs", worker.shard, process.pid, code, worker.pause)
            if worker.process is None and now >= worker.restart_at and not self._stopping:
                self._start(worker, sock)

    def _stop_all(self) -> None:
        running = [w.process for w in self._children if w.process is not None and w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _block_hangup() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def shared_client_counts(workers: int) -> ClientCounts | None:
    """The region the workers count their connections per client in; None (each worker then
    counts its own, as an embedded relay does) where the system has no memfd or refuses one."""
    if not hasattr(os, "memfd_create"):
        log.warning("supervisor: no memfd on this system: connections per client are counted per worker")
        return None
    try:
        return ClientCounts.create(workers)
    except OSError as exc:
        log.warning("supervisor: cannot create the shared connection counts (%s): connections per client are counted per worker", exc)
        return None


def shared_space_flags(workers: int) -> SpaceFlags | None:
    """The shards' low-space flags; None (each shard then decides alone) without memfd."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return SpaceFlags.create(workers)
    except OSError as exc:
        log.warning("supervisor: cannot create the shared low-space flags (%s): each shard decides alone", exc)
        return None


def adopt_unsharded_spool(spool: Path) -> None:
    """A spool written before shards existed (``SPOOL/spool.sqlite3``) becomes shard 0, once,
    before any worker starts."""
    from deliverypool.queue.spool import DATABASE

    legacy = spool / DATABASE
    shard = shard_directory(spool, 0)
    if legacy.exists() and not (shard / DATABASE).exists():
        shard.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            source = spool / f"{DATABASE}{suffix}"
            if source.exists():
                source.rename(shard / source.name)
        log.info("supervisor: the unsharded spool in %s is now shard 0", spool)


# glibc's mallopt(3) parameters and what a worker sets them to (see keep_freed_memory).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """In a worker: keep freed memory for the next message instead of giving it back to the
    kernel at once. With glibc's defaults a message body of a few hundred KiB and more, and
    the DATA reader's parts, were mapped and unmapped per message, or the heap was trimmed
    and grown again: 50 to 140 page faults per 1 MiB message, each a fresh page the kernel
    zeroes. Here buffers up to 32 MiB come from the heap and up to 64 MiB of free heap is kept
    (about one page fault per message). The cost: a worker's resident memory stays near its
    peak. True when set (glibc); False elsewhere (musl and others keep their defaults)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def die_with_supervisor() -> None:
    """In a worker: get SIGKILL when the supervisor dies (Linux ``PR_SET_PDEATHSIG``), and exit
    now if it is already gone."""
    supervisor = int(os.environ.get("DELIVERYPOOL_SUPERVISOR", "0"))
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if supervisor and os.getppid() != supervisor:
        os._exit(1)
