"""The aiohttp side of the HTTP(S) connection limits (servers/connlimits.py): listening,
admission, TLS, one deadline per connection, quiet error handling.

Where this hooks into aiohttp (3.14: web_runner.TCPSite, web_server.Server,
web_protocol.RequestHandler), and why there rather than in middleware or site parameters:

- TCPSite passes aiohttp's Server to loop.create_server, and with an SSL context asyncio wraps
  each accepted socket in its TLS layer before aiohttp's protocol exists: a connection that
  never completes its handshake holds a descriptor for 60 s unseen. And asyncio accepts up to
  the listen backlog in one go, every socket holding a descriptor before any protocol can count
  it; an accept() that fails with EMFILE is logged with a traceback and retried at once
  (CPython 3.11: thousands a second). So `LimitedSite` (a web.BaseSite) has its own
  `Listener`: at most ACCEPT_BATCH accept()s a wake-up, EMFILE counted and accepting paused
  for ACCEPT_RETRY. `Intake`, each accepted socket's first protocol, admits it (ConnectionTable),
  sets TCP_USER_TIMEOUT, does TLS itself (loop.start_tls, timeout header_timeout) and hands the
  connection to a `LimitedHandler`. Every descriptor is counted before a byte is read.
- Middleware runs once a request is parsed: too late for a trickling head, blind to a
  connection that sends nothing; aiohttp's keepalive_timeout is one timer from the last
  response, with no header or body timeout. So LimitedHandler, a RequestHandler subclass, keeps
  the phase (idle, head, body, busy) from public hooks (connection_made, data_received,
  finish_response, connection_lost) and two private fields (_request_count, _messages; the
  tests in tests/integration/test_http_limits.py fail if they change meaning).
- RequestHandler.handle_error logs every malformed request as an ERROR with a traceback; the
  override answers it (400) and counts it for one summary line per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from netbootd.servers.connlimits import ConnectionGuard, Slot

log = logging.getLogger("netbootd.http")

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux
BACKLOG = 1024  # the listen queue: a burst of connections waits in the kernel, not refused
ACCEPT_BATCH = 16  # accept()s per wake-up of a listening socket
ACCEPT_RETRY = 0.1  # seconds without accepting after accept() failed for want of descriptors
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
           b"Content-Length: 22\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
           b"too many connections\r\n")
IDLE, HEAD, BODY, BUSY = "idle", "header", "body", "busy"


def handler(guard: ConnectionGuard, slot: Slot) -> LimitedHandler:
    assert guard.loop is not None
    lim = guard.limits
    # aiohttp's own keep-alive timer only as a backstop: ours closes idle connections first
    backstop = lim.idle_timeout + lim.header_timeout + 1
    return LimitedHandler(guard.server, guard, slot, loop=guard.loop,
                          keepalive_timeout=backstop, access_log=None)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "?"


class Intake(asyncio.Protocol):
    """An accepted socket's first protocol: admission, socket options, TLS, then the handler.
    While TLS is being set up it is also the TLS layer's application protocol, keeping what
    arrives before the handler takes over."""

    def __init__(self, guard: ConnectionGuard, ssl_context: ssl.SSLContext | None) -> None:
        self.guard, self.ssl_context = guard, ssl_context
        self.slot: Slot | None = None
        self._raw: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._lost = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        guard, peer = self.guard, _peer(raw)
        adm = guard.table.admit(peer, raw.abort)
        if adm.evicted:
            guard.count(f"closed idle for a newcomer ({adm.evicted})", peer)
        if adm.slot is None:
            guard.count(f"refused ({adm.refused})", peer)
            if self.ssl_context is None:
                raw.write(REFUSED)
            raw.close()
            return
        self.slot = adm.slot
        sock = raw.get_extra_info("socket")
        if sock is not None:
            # a stalled send (nothing acknowledged for this long) ends the connection
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT,
                                int(guard.limits.send_timeout * 1000))
        conn = handler(guard, adm.slot)
        if self.ssl_context is None:
            raw.set_protocol(conn)
            conn.connection_made(raw)
            return
        self._raw = raw
        raw.pause_reading()  # the ClientHello waits for start_tls
        guard.handshaking.add(self)
        assert guard.loop is not None
        self._task = guard.loop.create_task(self._tls(raw, conn, peer))

    async def _tls(self, raw: asyncio.Transport, conn: LimitedHandler, peer: str) -> None:
        guard = self.guard
        assert guard.loop is not None and self.ssl_context is not None and self.slot is not None
        if self._lost:  # gone before the handshake began
            guard.handshaking.discard(self)
            return
        try:
            tls = await guard.loop.start_tls(
                raw, self, self.ssl_context, server_side=True,
                ssl_handshake_timeout=guard.limits.header_timeout,
                ssl_shutdown_timeout=guard.limits.header_timeout)
        except asyncio.CancelledError:
            raw.abort()
            raise
        except Exception as e:  # a peer's fault: its handshake failed or timed out
            what = ("closed on TLS handshake timeout" if isinstance(e, ConnectionAbortedError)
                    else "TLS handshake failed" if isinstance(e, ssl.SSLError)
                    else "gone during the TLS handshake")
            if self.slot.open:  # not closed for a newcomer (that is counted already)
                guard.count(what, peer)
            log.debug("peer=%s %s: %s", peer, what, e)
            guard.table.release(self.slot)
            raw.abort()
            return
        finally:
            guard.handshaking.discard(self)
        if self._lost or tls is None:
            guard.table.release(self.slot)
            return
        tls.set_protocol(conn)
        conn.connection_made(tls)
        for chunk in self._early:
            conn.data_received(chunk)
        self._early.clear()

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    # the TLS layer's application protocol, until the handler takes over
    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.slot is not None:
            self.guard.table.release(self.slot)


class LimitedHandler(RequestHandler):
    """aiohttp's RequestHandler with one deadline per connection, by phase (see the module
    docstring), its slot in the ConnectionTable kept idle or busy, and quiet error handling."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, slot: Slot,
                 **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._guard, self._slot = guard, slot
        self._phase = IDLE
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._slot.close = self._drop
        self._enter(IDLE)

    def data_received(self, data: bytes) -> None:
        if data and self._phase == IDLE:
            self._enter(HEAD)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before and self._phase in (IDLE, HEAD):
            self._after_head(self._messages[-1][1] if self._messages else None)

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            if self._messages:  # pipelined: the next request's head is already here
                self._after_head(self._messages[0][1])
            else:
                self._enter(IDLE)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.table.release(self._slot)

    def _after_head(self, payload: Any) -> None:
        if payload is not None and not payload.is_eof():
            self._enter(BODY)
            payload.on_eof(self._body_done)
        else:
            self._enter(BUSY)

    def _body_done(self) -> None:
        if self._phase == BODY:
            self._enter(BUSY)

    def _enter(self, phase: str) -> None:
        if self.transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        table, lim = self._guard.table, self._guard.limits
        if phase in (IDLE, HEAD):
            table.idle(self._slot)
        else:
            table.busy(self._slot)
        timeout = {IDLE: lim.idle_timeout, HEAD: lim.header_timeout,
                   BODY: lim.body_timeout}.get(phase)
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self._phase == phase and self.transport is not None:
            self._guard.count(f"closed {phase}" if phase == IDLE else f"closed on {phase} "
                              "timeout", self._slot.peer)
            self._drop()

    def _drop(self) -> None:
        """Close now: nothing is flushed and TLS sends no close_notify (a peer that stalls
        must not hold the descriptor any longer)."""
        if self.transport is not None:
            self.transport.abort()
        self.force_close()

    # -- errors: answered and counted, no traceback per peer's mistake
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        self._guard.request_error(request.remote or "?", status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error response")
        if status == 500:
            text = "500 Internal Server Error\n\nServer got itself in trouble\n"
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            text = message or f"{status} {phrase}\n"
        resp = web.Response(status=status, text=text, content_type="text/plain")
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        what = (str(args[0]) % args[1:]) if args else "unexpected error"
        exc = kw.get("exc_info")
        if isinstance(exc, OSError):  # the socket failed under a response: the peer's doing
            why = ("closed on send timeout" if isinstance(exc, TimeoutError)  # TCP_USER_TIMEOUT
                   else "connection failed while sending")
            self._guard.count(why, self._slot.peer)
            log.debug("peer=%s %s: %s", self._slot.peer, why, exc)
            return
        self._guard.unexpected(what, exc if isinstance(exc, BaseException) else None)


class LimitedSite(web.BaseSite):
    """A TCP site of its own listening sockets (a `Listener`), whose accepted sockets go
    through an `Intake` (plain socket; TLS is done there)."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._guard, self._host, self._port = guard, host, port

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        socks = _listen(self._host, self._port, self._backlog)
        self._server = Listener(loop, socks, self._guard, self._ssl_context)


def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (as loop.create_server binds them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener(asyncio.AbstractServer):
    """Accepts connections itself rather than through loop.create_server: at most ACCEPT_BATCH
    per wake-up (asyncio accepts up to the listen backlog in one go, each holding a descriptor
    before any protocol can count it), and an accept() that fails for want of descriptors
    (EMFILE) pauses accepting for ACCEPT_RETRY and is counted -- asyncio 3.11 logs it with a
    traceback, and retries at once, thousands of times a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                 guard: ConnectionGuard, ssl_context: ssl.SSLContext | None) -> None:
        self._loop, self._socks, self._guard, self._ssl = loop, socks, guard, ssl_context
        self._serving = True
        self._connecting: set[asyncio.Task[None]] = set()
        for sock in socks:
            loop.add_reader(sock.fileno(), self._readable, sock)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._socks)

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                self._guard.accept_failed(e, ACCEPT_RETRY)
                if self._serving:  # let descriptors free up; the kernel queues the rest
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(ACCEPT_RETRY, self._resume, sock)
                return
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._readable, sock)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: Intake(self._guard, self._ssl), conn)
        except OSError as e:  # gone before its transport was made
            log.debug("accepted connection lost at once: %s", e)
            conn.close()

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("serve_forever: netbootd's sites are driven by the runner")

    async def wait_closed(self) -> None:
        return None
