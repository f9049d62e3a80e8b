"""Log lines that a client can make the relay write over and over (a refused connection, a
failed AUTH, an accept error) are rate-limited, so that a flood cannot fill the disk with them.

`RateLimit` is a `logging.Filter` for a handler: per key it lets `burst` records through in each
`interval`, marks the last of them with a note that more are being suppressed, drops the rest,
and says how many it dropped on the first record of that key it lets through again. A record's
key is its ``rate_limit`` attribute (``log.warning(..., extra={"rate_limit": "refused
too-many-connections"})``, keys from closed sets); records from the loggers in `templates`
(aiosmtpd's and asyncio's) are keyed by their format string; every other record passes
untouched. `deliverypool relay` puts one on its stderr handler; an application that configures
logging itself can add one to its own handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final, TextIO

__all__ = ["BatchedStreamHandler", "LineFormatter", "RateLimit", "info_line"]

# Loggers of other packages whose lines a client can cause (aiosmtpd: "unrecognised command"
# warnings; asyncio: accept errors).
FOREIGN: Final = frozenset({"mail.log", "asyncio"})
# Keys remembered at most; windows that are over are dropped first.
_MAX_KEYS: Final = 1024


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RateLimit(logging.Filter):
    """At most `burst` + 1 records per key per `interval` seconds (see the module)."""

    def __init__(
        self,
        burst: int = 10,
        interval: float = 60.0,
        *,
        templates: Collection[str] = FOREIGN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.templates = frozenset(templates)
        self.clock = clock
        self._windows: dict[object, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # (From the record's dict: getattr with a default builds an AttributeError for every
        # record without the key, which is nearly all of them.)
        key: object = record.__dict__.get("rate_limit")
        if key is None:
            if record.name not in self.templates:
                return True
            key = (record.name, record.msg)
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.interval:
            dropped = window.suppressed if window is not None else 0
            if window is None and len(self._windows) >= _MAX_KEYS:
                self._forget(now)
            window = self._windows[key] = _Window(now)
            if dropped:
                _annotate(record, f" ({dropped} more like this suppressed in the {self.interval:g}s before)")
        window.passed += 1
        if window.passed <= self.burst:
            return True
        if window.passed == self.burst + 1:
            _annotate(record, f" (more like this suppressed for up to {self.interval:g}s)")
            return True
        window.suppressed += 1
        return False

    def _forget(self, now: float) -> None:
        over = [key for key, window in self._windows.items() if now - window.start >= self.interval and not window.suppressed]
        for key in over or list(self._windows)[: _MAX_KEYS // 2]:
            del self._windows[key]


def _annotate(record: logging.LogRecord, note: str) -> None:
    record.msg = record.getMessage() + note
    record.args = None


class LineFormatter(logging.Formatter):
    """``logging.Formatter("%(asctime)s %(name)s %(message)s")``, the same text, for less: the
    date and time are formatted once per second (``time.strftime`` of a second does not change
    within it), and the line is put together directly rather than through the format string.
    The relay writes two lines per message; the stock formatter was a third of their cost."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        """The time as ``%(asctime)s`` writes it."""
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return "%s,%03d" % (self._stamp, msecs)  # logging's default_msec_format

    def line(self, created: float, name: str, message: str) -> str:
        """The line of a record without exception or stack (`info_line`'s)."""
        return f"{self.stamp(created, int((created - int(created)) * 1000))} {name} {message}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        line = f"{record.asctime} {record.name} {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = (line if line[-1:] == "\n" else line + "\n") + record.exc_text
        if record.stack_info:
            line = (line if line[-1:] == "\n" else line + "\n") + self.formatStack(record.stack_info)
        return line


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A `logging.StreamHandler` that writes its lines in batches rather than one write (and
    flush) per line: the relay logs a line per message accepted and per delivery attempt, and a
    write per line was a system call per line. A record at WARNING or above is written at once
    with the lines before it; other lines wait at most `interval` seconds (a timer thread) or
    until `max_bytes` are buffered. `logging.shutdown` (at exit) writes what is left; a process
    killed with SIGKILL loses at most the last `interval` of INFO lines."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.25, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._due = threading.Event()
        self._direct_filters: list[object] = []
        threading.Thread(target=self._timer, name="log-batches", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno >= logging.WARNING)

    def _add(self, line: str, urgent: bool) -> None:
        self._lines.append(line)
        self._size += len(line)
        if urgent or self._size >= self.max_bytes:
            self.flush()
        elif len(self._lines) == 1:
            self._due.set()

    def direct(self) -> None:
        """Makes this the handler `info_line` writes to directly while its filters are the ones
        it has now (those `configure_logging` put on it, which pass such lines untouched)."""
        global _direct
        self._direct_filters = list(self.filters)
        _direct = self

    def _takes(self, logger: logging.Logger) -> bool:
        """Whether an INFO record of `logger` would reach this handler, and only this handler,
        with nothing on the way that could change or drop it: the handlers and filters of the
        logger and of its ancestors up to the root, which has this handler alone."""
        if (
            not logger.isEnabledFor(logging.INFO)
            or self.level > logging.INFO
            or self.filters != self._direct_filters
            or not isinstance(self.formatter, LineFormatter)
        ):
            return False
        node: logging.Logger | None = logger
        while node is not None:
            if node.filters:
                return False
            if node.parent is None:  # the root logger
                return len(node.handlers) == 1 and node.handlers[0] is self
            if node.handlers or not node.propagate:
                return False
            node = node.parent
        return False

    def _line(self, name: str, message: str) -> None:
        assert isinstance(self.formatter, LineFormatter)
        line = self.formatter.line(time.time(), name, message) + self.terminator
        with self.lock:  # type: ignore[union-attr]  # (made by Handler.__init__)
            self._add(line, False)

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                batch = "".join(self._lines)
                self._lines.clear()
                self._size = 0
                try:
                    self.stream.write(batch)
                except Exception:
                    pass  # as StreamHandler: a log that cannot be written does not stop the relay
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()

    def _timer(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.interval)
            self._due.clear()
            self.flush()


# The handler `info_line` writes to directly (`BatchedStreamHandler.direct`), if any.
_direct: BatchedStreamHandler | None = None


def info_line(logger: logging.Logger, msg: str, *args: object, extra: dict[str, object] | None = None) -> None:
    """``logger.info(msg, *args, extra=extra)``, for the lines the relay writes per message
    (accepted, attempt). When the record would go to the relay's own batched handler and
    nowhere else (`deliverypool relay`'s workers: `configure_logging(batched=True)`), the line is
    put in that handler's batch directly: the same text, without a LogRecord, the logger's
    and the handler's dispatch and the formatter's record plumbing (about 50,000 instructions
    a line). Anywhere else (another handler or filter added, a logger's level raised, an
    application's own logging) it is ``logger.info``, `extra` and all."""
    handler = _direct
    if handler is None or not handler._takes(logger):
        logger.info(msg, *args, extra=extra)
        return
    try:
        message = msg % args if args else msg
    except Exception:
        logger.info(msg, *args, extra=extra)  # logging reports the bad format its own way
        return
    handler._line(logger.name, message)
