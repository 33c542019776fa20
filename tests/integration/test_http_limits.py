"""The HTTP(S) connection limits and timeouts (servers/connlimits.py, servers/httpconn.py), on
the real HttpServer in process on loopback: what a slow, idle, stalled, crowding or malformed
client gets, and that a long download that makes progress is not cut.

Source addresses 127.0.0.2... stand for distinct clients (all of 127/8 is loopback). Deadlines
are set to ~1 s so a test waits seconds; the assertions leave generous room for a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.identity import tls
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.tls import ServerTls
from netbootd.identity.vault import Vault
from netbootd.model import MacAddress
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.http import STORE, HttpServer, IdentityService
from netbootd.store import Store

REPO = Path(__file__).resolve().parents[2]
MAC = MacAddress.parse("52:54:00:12:34:56")
BLOB_SIZE = 4 << 20
pytestmark = pytest.mark.timeout(120)


@dataclass
class Served:
    server: HttpServer
    sha: str
    blob: bytes
    ca: Path

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def guard(self) -> Any:
        return getattr(self.server, "connections", None)


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, blob_size: int = BLOB_SIZE, **http: Any,
                ) -> AsyncIterator[Served]:
    state = tmp_path / "state"
    store = Store(state)
    blob = os.urandom(blob_size)
    (tmp_path / "blob").write_bytes(blob)
    art = Artifacts(state).import_file(tmp_path / "blob")
    store.add_generation("web", art, [art], "console=ttyS0", "import")
    store.enroll(MAC, "web", hostname="web1")
    tls.ensure(state, ["127.0.0.1"])
    keys = Vault(state)
    ident = IdentityService(keys=keys, tls=ServerTls(state), arp=ArpVerifier("never"),
                            secret=keys.token_secret(), token_ttl=600)
    cfg = Config.model_validate({
        "state_dir": str(state), "advertise_address": "127.0.0.1",
        "templates_dir": str(REPO / "ipxe-templates"),
        "http": {"listen": "127.0.0.1", "port": 0, **http},
        "https": {"listen": "127.0.0.1", "port": 0},
    })
    server = HttpServer(cfg, store, Artifacts(state), ScriptRenderer(cfg.templates_dir), ident)
    await server.start()
    try:
        yield Served(server, art.sha256, blob, tls.tls_dir(state) / tls.CA_CERT)
    finally:
        await server.stop()
        store.close()


async def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None,
                  ) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def read_until_closed(s: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """(seconds until the server closed the connection, or None if it was still open after
    `limit`; what was received)."""
    loop, t0, got = asyncio.get_running_loop(), time.monotonic(), b""
    while (left := limit - (time.monotonic() - t0)) > 0:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 65536), left)
        except TimeoutError:
            return None, got
        except ConnectionResetError:
            return time.monotonic() - t0, got
        if not chunk:
            return time.monotonic() - t0, got
        got += chunk
    return None, got


async def request(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    s = await connect(port, source)
    try:
        await asyncio.get_running_loop().sock_sendall(s, raw)
        return (await read_until_closed(s, 10))[1]
    finally:
        s.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad[:3]]


# -- timeouts ---------------------------------------------------------------------------------


async def test_slow_loris_head_is_closed_after_the_header_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with serve(tmp_path, header_timeout=1, idle_timeout=30) as srv:
        loop = asyncio.get_running_loop()
        half = await connect(srv.port)
        await loop.sock_sendall(half, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        drip = await connect(srv.port)  # a byte every 0.3 s: progress does not extend the head
        t0 = time.monotonic()

        async def dripping() -> None:
            with contextlib.suppress(OSError):
                for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa":
                    await loop.sock_sendall(drip, bytes([b]))
                    await asyncio.sleep(0.3)

        task = asyncio.create_task(dripping())
        closed, _ = await read_until_closed(half, 10)
        dripped, _ = await read_until_closed(drip, 10)
        task.cancel()
        assert closed is not None and 0.8 < closed < 5, closed
        assert dripped is not None and 0.8 < time.monotonic() - t0 < 5, dripped
        assert srv.guard.events["closed on header timeout"] == 2
        half.close()
        drip.close()
    no_tracebacks(caplog)


async def test_idle_connections_are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    async with serve(tmp_path, idle_timeout=1, header_timeout=30) as srv:
        loop = asyncio.get_running_loop()
        silent = await connect(srv.port)  # never sends a byte
        kept = await connect(srv.port)  # one request, then keeps the connection
        await loop.sock_sendall(kept, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        head = b""
        while b'"ok"' not in head:
            head += await asyncio.wait_for(loop.sock_recv(kept, 4096), 5)
        assert head.startswith(b"HTTP/1.1 200")
        t_response = time.monotonic()
        closed, _ = await read_until_closed(silent, 10)
        kept_closed, rest = await read_until_closed(kept, 10)
        assert closed is not None and 0.8 < closed + (t0 - t0) < 5, closed
        assert kept_closed is not None and rest == b""
        assert 0.8 < time.monotonic() - t_response < 5
        assert srv.guard.events["closed idle"] == 2
        silent.close()
        kept.close()


async def test_a_body_that_stalls_is_closed_after_the_body_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(tmp_path, body_timeout=1, idle_timeout=30) as srv:
        s = await connect(srv.port)  # the head promises a body that never comes
        await asyncio.get_running_loop().sock_sendall(
            s, b"POST /api/v1/hosts/52-54-00-12-34-56/events HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        closed, got = await read_until_closed(s, 10)
        assert closed is not None and 0.8 < closed < 5, closed
        assert got == b""  # cut, not answered: the handler never saw a whole body
        assert srv.guard.events["closed on body timeout"] == 1
        s.close()
        assert srv.server.app[STORE].events() == []  # nothing was recorded
    no_tracebacks(caplog)


async def test_a_long_download_that_makes_progress_is_not_cut(tmp_path: Path) -> None:
    """4 MiB read in 16 KiB steps 10 ms apart through an 8 KiB receive buffer: seconds, against
    1 s deadlines."""
    async with serve(tmp_path, idle_timeout=1, header_timeout=1, body_timeout=1,
                     send_timeout=1) as srv:
        loop = asyncio.get_running_loop()
        s = await connect(srv.port, rcvbuf=8192)
        await loop.sock_sendall(s, get(f"/artifacts/{srv.sha}/kernel"))
        got, t0 = b"", time.monotonic()
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 16384), 10)
            if not chunk:
                break
            got += chunk
            await asyncio.sleep(0.01)
        s.close()
        head, body = got.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - t0 > 2.5  # it really was slower than every deadline
        assert hashlib.sha256(body).hexdigest() == srv.sha
        assert not [k for k in getattr(srv.guard, "events", {}) if "timeout" in k]


async def test_a_stalled_download_is_cut_after_the_send_timeout(tmp_path: Path) -> None:
    """The client asks for 32 MiB (more than the kernel's send and receive buffers hold) and
    stops reading: its window closes, nothing more is acknowledged, and TCP_USER_TIMEOUT
    (send_timeout) aborts the connection."""
    async with serve(tmp_path, blob_size=32 << 20, send_timeout=1, idle_timeout=60) as srv:
        loop = asyncio.get_running_loop()
        s = await connect(srv.port, rcvbuf=4096)
        await loop.sock_sendall(s, get(f"/artifacts/{srv.sha}/kernel"))
        await asyncio.sleep(6)  # not reading: a second of send_timeout, probes back off
        _, got = await read_until_closed(s, 10)
        assert len(got) < len(srv.blob), "the stalled download was not cut"
        assert srv.guard.table.total == 0
        # the kernel's doing (ETIMEDOUT under sendfile), not a deadline of ours nor a bug
        assert srv.guard.events == {"closed on send timeout": 1}, srv.guard.events
        s.close()


async def test_tls_handshake_that_never_comes_is_closed(tmp_path: Path) -> None:
    async with serve(tmp_path, header_timeout=1, idle_timeout=30) as srv:
        assert srv.server.https_port is not None
        s = await connect(srv.server.https_port)
        closed, _ = await read_until_closed(s, 10)
        assert closed is not None and 0.8 < closed < 5, closed
        s.close()
        assert srv.guard.events["closed on TLS handshake timeout"] == 1
        # and TLS still works through the same path (a thread: the client is blocking code)
        ctx = ssl.create_default_context(cafile=str(srv.ca))

        def fetch() -> bytes:
            with socket.create_connection(("127.0.0.1", srv.server.https_port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                t.sendall(get("/healthz"))
                data = b""
                while chunk := t.recv(4096):
                    data += chunk
                return data

        assert (await asyncio.to_thread(fetch)).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while srv.guard.table.total and time.monotonic() < deadline:  # TLS shutdown takes a turn
            await asyncio.sleep(0.05)
        assert srv.guard.table.total == 0


# -- limits -----------------------------------------------------------------------------------


async def test_per_client_limit_evicts_the_clients_idle_then_refuses(tmp_path: Path) -> None:
    async with serve(tmp_path, max_connections_per_client=3, body_timeout=30) as srv:
        loop = asyncio.get_running_loop()
        idle = [await connect(srv.port) for _ in range(3)]
        other = await connect(srv.port, "127.0.0.2")  # another client is not affected
        await asyncio.sleep(0.2)
        newcomer = await connect(srv.port)  # takes the place of the oldest idle one
        closed, _ = await read_until_closed(idle[0], 5)
        assert closed is not None
        # three connections busy with a request (a body still coming): nothing to evict
        busy = [newcomer, idle[1], idle[2]]
        for s in busy:
            await loop.sock_sendall(
                s, b"POST /api/v1/hosts/52-54-00-12-34-56/events HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Length: 50\r\n\r\n")
        await asyncio.sleep(0.2)
        refused = await request(srv.port, get("/healthz"))
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert (await request(srv.port, get("/healthz"), "127.0.0.2")).startswith(b"HTTP/1.1 200")
        assert srv.guard.events["closed idle for a newcomer (per-client limit)"] == 1
        assert srv.guard.events["refused (per-client limit)"] == 1
        assert srv.guard.table.total == 4  # three busy + the other client's idle one
        for s in [*idle, other, newcomer]:
            s.close()


async def test_global_limit_evicts_the_oldest_idle_connection(tmp_path: Path) -> None:
    async with serve(tmp_path, max_connections=5) as srv:
        crowd = []
        for i in range(5):
            crowd.append(await connect(srv.port, f"127.0.0.{10 + i}"))
            await asyncio.sleep(0.05)
        # a sixth client gets in: the oldest idle connection (127.0.0.10) makes room
        assert (await request(srv.port, get("/healthz"), "127.0.0.20")).startswith(b"HTTP/1.1 200")
        closed, _ = await read_until_closed(crowd[0], 5)
        assert closed is not None
        for s in crowd[1:]:
            assert (await read_until_closed(s, 0.2))[0] is None  # the others stay
        assert srv.guard.table.total == 4
        for s in crowd:
            s.close()


# -- logging ----------------------------------------------------------------------------------


async def test_malformed_requests_get_400_without_a_traceback_each(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    junk = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"]
    caplog.set_level(logging.INFO)
    async with serve(tmp_path, log_interval=3600) as srv:
        for i in range(200):
            answer = await request(srv.port, junk[i % len(junk)], f"127.0.1.{i % 50 + 1}")
            assert answer[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400"), answer[:80]
        assert (await request(srv.port, get("/healthz"))).startswith(b"HTTP/1.1 200")
    no_tracebacks(caplog)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 1, loud  # the summary, written when the server stops
    assert re.fullmatch(r"http: 200 malformed requests from 50 addresses in the last \d+ s, "
                        r"answered 400 \(the first 10 at debug level\)", loud[0]), loud


async def test_accept_failing_for_want_of_descriptors_is_one_line_an_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """accept() fails with EMFILE 30 times (as when the process is out of descriptors): one
    warning, one summary line -- asyncio alone logs a traceback for each -- and accepting
    resumes once descriptors are back."""
    real_accept = socket.socket.accept
    failures = [30]

    def accept(self: socket.socket) -> Any:
        if failures[0] > 0 and self.getsockname()[1] == port:
            failures[0] -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(self)

    async with serve(tmp_path, log_interval=3600) as srv:
        port = srv.port
        monkeypatch.setattr(socket.socket, "accept", accept)
        waiting = [await connect(port) for _ in range(3)]  # queued in the kernel meanwhile
        deadline = time.monotonic() + 30
        while failures[0] and time.monotonic() < deadline:
            s = await connect(port)
            waiting.append(s)
            await asyncio.sleep(0.01)
        assert failures[0] == 0
        answer = await request(port, get("/healthz"))
        assert answer.startswith(b"HTTP/1.1 200")
        for s in waiting:
            s.close()
    no_tracebacks(caplog)
    lines = [r.getMessage() for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("http: accept() failed: [Errno 24] Too many open files")
    assert lines[1].startswith("http: accept() failed 29 more times")
