"""HTTP(S) connection limits and timeouts: how many connections, from whom, for how long.

Limits: at most `max_connections` (HTTP and HTTPS together) and `max_connections_per_client`
per source address. A new connection over a limit takes the place of the oldest *idle* one
(no request being handled: waiting for one, or with a head still incomplete) of that client,
or of anyone at the global limit; if none is idle it is refused (plain HTTP: a 503 first). So
a crowd of idle or half-open connections cannot keep a real client out, and a connection that
is serving a request is never closed for a newcomer.

Timeouts, one deadline per connection by phase: `idle_timeout` waiting for the next request
(from the connection's start or the previous response), `header_timeout` from a request's
first byte to the end of its head (the TLS handshake gets the same), `body_timeout` from the
end of the head to the end of the body. A response being sent has no deadline, so a long
artifact download that makes progress is never cut; one that stalls (the client stops reading)
is cut by the kernel: TCP_USER_TIMEOUT = `send_timeout` on every socket.

Here: the limits (`HttpLimits`), who holds a connection (`ConnectionTable`, pure) and what all
connections of a server share (`ConnectionGuard`: the table, counters, one summary line per
interval, the event loop's rate-limited exception handler). The aiohttp side -- listening,
admission, TLS, the per-connection deadlines -- is servers/httpconn.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from netbootd.config import HttpConfig
from netbootd.ratelimit import LogBudget, Summary, Tally

log = logging.getLogger("netbootd.http")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int
    per_client: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    send_timeout: float
    log_interval: float

    @classmethod
    def of(cls, http: HttpConfig, cap: int | None = None) -> HttpLimits:
        """The [http] section's limits; `cap` lowers max_connections (the descriptor budget)."""
        total = http.max_connections if cap is None else min(cap, http.max_connections)
        return cls(total, min(http.max_connections_per_client, total), http.header_timeout,
                   http.body_timeout, http.idle_timeout, http.send_timeout, http.log_interval)


# -- who may connect (pure) -----------------------------------------------------------------


class Slot:
    """One admitted connection; `close` drops it (set by whoever owns the transport now)."""

    __slots__ = ("close", "idle", "open", "peer")

    def __init__(self, peer: str, close: Callable[[], None]) -> None:
        self.peer, self.close = peer, close
        self.open, self.idle = True, True


@dataclass(frozen=True)
class Admission:
    slot: Slot | None  # None: refused
    refused: str | None = None  # "per-client limit" | "server full"
    evicted: str | None = None  # an idle connection was closed for this one: whose limit


class ConnectionTable:
    """Open connections by client, and the idle ones oldest first (the eviction order)."""

    def __init__(self, max_total: int, per_client: int) -> None:
        self.max_total, self.per_client = max_total, per_client
        self.total = 0
        self._count: dict[str, int] = {}
        self._idle: OrderedDict[Slot, None] = OrderedDict()
        self._peer_idle: dict[str, OrderedDict[Slot, None]] = {}

    def admit(self, peer: str, close: Callable[[], None]) -> Admission:
        evicted = None
        if self._count.get(peer, 0) >= self.per_client:
            if not self._evict(self._peer_idle.get(peer)):
                return Admission(None, "per-client limit")
            evicted = "per-client limit"
        if self.total >= self.max_total:
            if not self._evict(self._idle):
                return Admission(None, "server full")
            evicted = evicted or "server full"
        slot = Slot(peer, close)
        self.total += 1
        self._count[peer] = self._count.get(peer, 0) + 1
        self._idle[slot] = None
        self._peer_idle.setdefault(peer, OrderedDict())[slot] = None
        return Admission(slot, evicted=evicted)

    def busy(self, slot: Slot) -> None:
        if slot.open and slot.idle:
            slot.idle = False
            self._forget_idle(slot)

    def idle(self, slot: Slot) -> None:
        """The slot handles no request now: evictable, newest last."""
        if slot.open and not slot.idle:
            slot.idle = True
            self._idle[slot] = None
            self._peer_idle.setdefault(slot.peer, OrderedDict())[slot] = None

    def release(self, slot: Slot) -> None:
        if not slot.open:
            return
        slot.open = False
        if slot.idle:
            self._forget_idle(slot)
        self.total -= 1
        left = self._count[slot.peer] - 1
        if left:
            self._count[slot.peer] = left
        else:
            del self._count[slot.peer]

    def clients(self) -> int:
        return len(self._count)

    def _evict(self, idle: OrderedDict[Slot, None] | None) -> bool:
        if not idle:
            return False
        victim = next(iter(idle))
        self.release(victim)
        victim.close()
        return True

    def _forget_idle(self, slot: Slot) -> None:
        self._idle.pop(slot, None)
        mine = self._peer_idle.get(slot.peer)
        if mine is not None:
            mine.pop(slot, None)
            if not mine:
                del self._peer_idle[slot.peer]


# -- the guard: limits, counters, summary lines ---------------------------------------------


class Abortable(Protocol):
    def abort(self) -> None: ...


class ConnectionGuard:
    """The state every connection of one HttpServer shares: the table, the limits, the counters
    and their summary lines, and the loop's exception handler while serving."""

    def __init__(self, server: web.Server, limits: HttpLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server, self.limits = server, limits
        self.table = ConnectionTable(limits.max_connections, limits.per_client)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: Counter[str] = Counter()  # since start: tests and the summary lines read it
        self._window: Counter[str] = Counter()
        self.handshaking: set[Abortable] = set()  # TLS handshakes in progress
        iv = limits.log_interval
        self._conns = Summary(LogBudget(iv, 0), clock, self._connections_line,
                              self._schedule)
        self._malformed = Summary(LogBudget(iv, 10), clock, self._malformed_line, self._schedule,
                                  report_all=True)
        self._bugs = Summary(LogBudget(iv, 10), clock, self._bugs_line, self._schedule)
        self._accept = Summary(LogBudget(iv, 1), clock, self._accept_line, self._schedule)
        self.loop_errors = LoopErrors(iv, clock, self._schedule)
        self._previous_handler: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.loop_errors)

    def stop(self) -> None:
        for intake in list(self.handshaking):  # aiohttp does not know these yet
            intake.abort()
        for s in (self._conns, self._malformed, self._bugs, self._accept,
                  self.loop_errors.summary):
            s.flush(force=True)
        if self.loop is not None and self.loop.get_exception_handler() is self.loop_errors:
            self.loop.set_exception_handler(self._previous_handler)

    def _schedule(self, delay: float, callback: Callable[[], None]) -> object:
        return self.loop.call_later(delay, callback) if self.loop is not None else None

    # -- counting
    def count(self, what: str, peer: str) -> None:
        """A connection event for the summary: refused, evicted, a timeout."""
        self.events[what] += 1
        self._window[what] += 1
        self._conns.admit(peer)

    def _connections_line(self, t: Tally) -> None:
        window, self._window = self._window, Counter()
        what = ", ".join(f"{n:,} {k}" for k, n in sorted(window.items()))
        quiet = set(window) <= {"closed idle"}  # keep-alive connections ending: normal
        log.log(logging.DEBUG if quiet else logging.INFO,
                "http: %s in the last %.0f s from %s (open now %d of %d, at most %d per "
                "client)", what, t.seconds, t.key_count("address", "addresses"), self.table.total,
                self.limits.max_connections, self.limits.per_client)

    def accept_failed(self, exc: OSError, pause: float) -> None:
        self.events["accept failed"] += 1
        if self._accept.admit():
            log.warning("http: accept() failed: %s; not accepting for %.1f s (descriptor limits: "
                        "README \"Limits\")", exc, pause)

    def _accept_line(self, t: Tally) -> None:
        log.warning("http: accept() failed %s more times in the last %.0f s (running out of "
                    "descriptors: README \"Limits\")", f"{t.held:,}", t.seconds)

    def request_error(self, peer: str, status: int, exc: BaseException | None,
                      message: str | None) -> None:
        """What aiohttp's handle_error would log, without a traceback per peer's mistake."""
        if isinstance(exc, HttpProcessingError) or (exc is None and 400 <= status < 500):
            self.events["malformed"] += 1
            if self._malformed.admit(peer):
                log.debug("peer=%s malformed request answered %d: %s", peer, status,
                          (message or str(exc))[:200])
        elif isinstance(exc, ConnectionError) or exc is None:
            log.debug("peer=%s request ended early (%d): %s", peer, status, exc)
        else:
            self.unexpected(f"peer={peer} error handling request", exc)

    def unexpected(self, what: str, exc: BaseException | None) -> None:
        """A bug at the adapter edge: logged with its traceback, at most 10 an interval."""
        self.events["unexpected"] += 1
        if self._bugs.admit():
            log.error("%s", what, exc_info=exc if exc is not None else False)

    def _malformed_line(self, t: Tally) -> None:
        log.info("http: %s malformed requests from %s in the last %.0f s, answered 400 (the "
                 "first %d at debug level)", f"{t.events:,}", t.key_count("address", "addresses"),
                 t.seconds, t.logged)

    def _bugs_line(self, t: Tally) -> None:
        log.error("http: %s more errors handling requests in the last %.0f s (tracebacks of the "
                  "first %d above)", f"{t.held:,}", t.seconds, t.logged)


class LoopErrors:
    """The loop's exception handler: the first context of each message per interval goes to
    asyncio's default handler (with its traceback), the rest are counted and summarised."""

    def __init__(self, interval: float, clock: Callable[[], float],
                 schedule: Callable[[float, Callable[[], None]], object]) -> None:
        self.summary = Summary(LogBudget(interval, 5), clock, self._line, schedule)
        self.last = ""

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "unhandled exception in the event loop"))
        exc = context.get("exception")
        self.last = f"{message}: {exc}" if exc is not None else message
        if self.summary.admit(message):
            loop.default_exception_handler(context)

    def _line(self, t: Tally) -> None:
        logging.getLogger("asyncio").error(
            "%s more event loop errors in the last %.0f s (%s; the first of each above), the "
            "last: %s", f"{t.held:,}", t.seconds, t.key_count("kind", "kinds"), self.last)
