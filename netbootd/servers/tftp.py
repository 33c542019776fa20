"""The TFTP adapter: iPXE binaries (undionly.kpxe, ipxe.efi, ...) for firmware PXE clients.

Read-only, RRQ only, blksize/tsize/windowsize (packets and negotiation: codec/tftp.py). Its own
epoll loop in one thread beside asyncio; why not tftpy's server loop, and the measurements
behind the data path, are in ARCHITECTURE.md ("TFTP").

Rules:
  - any bad datagram is dropped with a debug line and the loop goes on; WRQ is refused; a name
    is first judged without touching the file system (codec/tftp.name_refusal: at most 255
    bytes and 16 components, no trailing "/", "/." or "/.." -- why those caps: see there),
    then opened relative to the root's descriptor (O_NOFOLLOW) or resolved with realpath() and
    must stay inside the root (only the configured boot files may be symlinks out of it);
  - per transfer, a UDP socket connected to the client (an ICMP port unreachable ends it) plus
    an unconnected one on the same port (SO_REUSEPORT) that answers strangers with ERROR 5;
    the file mmap()ed (os.preadv() where it cannot be), its length fixed by fstat() at the
    request; per block one sendmsg() of a 4-byte header and a slice of the mapping;
  - blocks count from 1 without wrapping (on the wire the number rolls over after 65535); an
    ACK for a block of the current window moves on (RFC 7440: the client may acknowledge the
    last block it got in order); any other ACK is ignored -- only the timer re-sends, after
    `timeout` without progress, `retries` times, so duplicate ACKs cannot double the traffic;
  - windows hold at most MAX_WINDOWSIZE blocks and MAX_WINDOW_BYTES; a file that shrinks under
    a transfer ends it with ERROR 0; an ERROR from the client ends it;
  - at most `max_transfers` run at once; a request that finds every slot taken waits up to
    `timeout` for one, then gets "Server busy" (a PXE ROM answered ERROR gives up);
  - at most `max_per_source` transfers and waiting requests per client address (a PXE client
    fetches one file at a time); a request past that is dropped unanswered (no reflection);
  - nothing is re-sent toward a client that has not acknowledged the first window (or the
    OACK): its transfer ends after `timeout`. A real PXE ROM whose first DATA was lost re-sends
    its RRQ, and each re-sent RRQ (from the same port, for the same name) gets the first window
    again, at most `retries` times. So a request from a spoofed address costs one reply
    (x23 for a 22-byte RRQ and a 516-byte block, was x141: six of them) and holds a slot for
    `timeout` (was (retries + 1) x timeout, ~6 s); timer re-sends begin with the first ACK;
  - stop() wakes the loop at once (a pipe), and the loop answers from the local address the
    request was sent to (IP_PKTINFO).

`TftpServer` is one piece (~680 lines) on purpose: one loop owns every transfer's state, and the
per-block path is kept free of calls between modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from netbootd import stats
from netbootd.codec.tftp import (
    DEFAULT_BLKSIZE,
    ERR_ACCESS,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    OP_ACK,
    OP_ERROR,
    OP_RRQ,
    OP_WRQ,
    error_packet,
    name_refusal,
    negotiate,
    oack_packet,
    parse_request,
)
from netbootd.errors import NetbootdError, TftpDropped
from netbootd.fmt import human_size, printable

RECV_SIZE = 65536
# Requests that find every transfer slot taken wait (up to `timeout`) for one; at least this
# many may wait, and at least max_transfers.
MIN_WAITING = 256
# Transfers plus waiting requests from one client address (see the module docstring).
MAX_PER_SOURCE = 8
STOP_TIMEOUT = 2.0

# Linux: learn which local address a request was sent to, so the transfer answers from it
# (firmware PXE stacks drop replies from another address of a multi-homed server).
# Python 3.11 lacks the constant; its value on Linux is 8.
_IP_PKTINFO: int | None = getattr(socket, "IP_PKTINFO", 8 if sys.platform == "linux" else None)

_SO_REUSEPORT: int | None = getattr(socket, "SO_REUSEPORT", None)
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)

_NEVER = float("inf")
_monotonic = time.monotonic
_preadv = os.preadv


class _Refused(Exception):
    def __init__(self, code: int, message: str, reason: str, level: int = logging.WARNING):
        super().__init__(reason)
        self.code, self.message, self.reason, self.level = code, message, reason, level


class _Unreadable(Exception):
    """The file could not be read during a transfer (an I/O error, or it shrank)."""


class _Transfer:
    """One RRQ being served. Blocks are numbered from 1 and never wrap here (`acked`, `sent`,
    `last`); only their number on the wire does. Block 0 is the OACK."""

    __slots__ = ("acked", "addr", "blksize", "buf", "closed", "data", "deadline", "fd", "last",
                 "last_len", "mm", "name", "oack", "peer", "recv_into", "retries", "send",
                 "sendmsg", "sent", "size", "sock", "started", "stray", "view", "window")

    def __init__(self, sock: socket.socket, stray: socket.socket | None, fd: int,
                 mm: mmap.mmap | None, name: str, addr: tuple[str, int], size: int,
                 options: dict[str, int], now: float, deadline: float) -> None:
        self.sock = sock  # connected to the client (unless `stray` is None)
        self.stray = stray  # unconnected, on the same port: receives everyone else's packets
        self.recv_into = sock.recv_into
        self.send: Callable[[Any], int]
        self.sendmsg: Callable[[list[Any]], int]
        if stray is None:  # one unconnected socket for everything
            self.send = lambda data: sock.sendto(data, addr)
            self.sendmsg = lambda parts: sock.sendmsg(parts, (), 0, addr)
        else:
            self.send, self.sendmsg = sock.send, sock.sendmsg
        self.name = name
        self.peer = addr[0]
        self.addr = addr  # the client's (address, port): its TID
        self.size = size
        self.blksize = blksize = options.get("blksize", DEFAULT_BLKSIZE)
        self.window = options.get("windowsize", 1)
        self.oack = oack_packet(options) if options else b""
        # The file: mapped (then `data` is a view of it, no descriptor is kept, and `buf` is
        # the DATA header, sent with sendmsg() before a slice of `data`), or, where mmap()
        # failed, read block by block from `fd` into `buf`, the whole DATA packet. Python never
        # reads the mapping: only the kernel does, in sendmsg(), so a file truncated under a
        # transfer makes sendmsg() fail with EFAULT rather than the process die of SIGBUS.
        self.fd = fd
        self.mm = mm
        self.data: memoryview | None = memoryview(mm) if mm is not None else (
            memoryview(b"") if size == 0 else None)
        self.buf = bytearray(4 if self.data is not None else 4 + blksize)
        self.buf[1] = 3  # opcode DATA; bytes 2-3: the block number
        self.view = memoryview(self.buf)
        self.last = size // blksize + 1  # the final block: short, maybe empty
        self.last_len = size % blksize
        self.acked = -1 if options else 0  # the newest block acknowledged in order
        self.sent = 0  # the newest block sent
        self.started = now
        self.deadline = deadline
        self.retries = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        if self.stray is not None:
            self.stray.close()
        if self.data is not None:
            self.data.release()
        if self.mm is not None:
            self.mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _heard(t: _Transfer) -> bool:
    """Has the client acknowledged anything (the OACK, or block 1 and on)?"""
    return t.acked >= (0 if t.oack else 1)


def _judge_name(name: str) -> None:
    """_Refused for a name codec/tftp.name_refusal refuses (no file system call made)."""
    why = name_refusal(name)
    if why is not None:
        raise _Refused(ERR_NOT_FOUND, "File not found", why, logging.INFO)


def _map_file(fd: int, size: int) -> mmap.mmap | None:
    """The file mapped read-only, or None (empty, or a file system that cannot map it)."""
    if size == 0:
        return None
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None


def _transfer_sockets(local: str, addr: tuple[str, int]) -> tuple[socket.socket,
                                                                  socket.socket | None]:
    """A new transfer's sockets, on one fresh local port: one connected to the client, which
    carries the transfer (the kernel then routes once, and hands it only the client's packets),
    and an unconnected one that receives whatever anyone else sends to the port, to be answered
    with ERROR 5 (RFC 1350). They share the port through SO_REUSEPORT, which only sockets of the
    same user can join; it is set after the first socket is bound, so the port the kernel picks
    is one no other socket uses. Where that fails: (one unconnected socket, None)."""
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | _SOCK_NONBLOCK)
    try:
        stray.setblocking(False)  # (already, where SOCK_NONBLOCK exists)
        try:
            stray.bind((local, 0))
        except OSError:  # e.g. a broadcast destination: let the kernel choose
            stray.bind(("0.0.0.0", 0))
    except BaseException:
        stray.close()
        raise
    if _SO_REUSEPORT is None:
        return stray, None
    conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | _SOCK_NONBLOCK)
    try:
        stray.setsockopt(socket.SOL_SOCKET, _SO_REUSEPORT, 1)
        conn.setsockopt(socket.SOL_SOCKET, _SO_REUSEPORT, 1)
        conn.setblocking(False)
        conn.bind(stray.getsockname())
        conn.connect(addr)
    except OSError:
        conn.close()
        with contextlib.suppress(OSError):
            stray.setsockopt(socket.SOL_SOCKET, _SO_REUSEPORT, 0)
        return stray, None
    return conn, stray


class TftpServer:
    """Serves the files under `root` over TFTP. `await start()`, `await stop()`.

    `trusted_symlinks` names files in the root (normally the configured boot files) that may
    be symlinks leading out of it: Debian ships /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi.
    Their targets are resolved once, at start(); any other name that resolves outside the
    root is refused. `overlay` maps a name to a file outside the root that is served instead
    (netbootd's own iPXE build: ipxe/served.py), or None.
    """

    def __init__(
        self,
        root: Path,
        listen: str = "0.0.0.0",
        port: int = 69,
        log: logging.Logger | None = None,
        *,
        timeout: float = 1.0,
        retries: int = 5,
        max_transfers: int = 256,
        max_per_source: int = MAX_PER_SOURCE,
        trusted_symlinks: Iterable[str] = (),
        overlay: Callable[[str], Path | None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.overlay = overlay
        self.listen = str(listen)
        self._port = port
        self.log = log or logging.getLogger("netbootd.tftp")
        self.timeout = timeout
        self.retries = retries
        self.max_transfers = max_transfers
        self.max_per_source = max_per_source
        self.trusted_symlinks = tuple(trusted_symlinks)
        self._real_root = str(self.root)  # realpath() of the root, once started
        self._root_fd = -1  # the root directory, open, while serving
        self._root_names: frozenset[str] = frozenset()  # the root's spellings, as paths
        self._trusted_targets: frozenset[str] = frozenset()
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._transfers: dict[tuple[str, int], _Transfer] = {}  # by the client's TID
        # Requests that found every transfer slot taken, oldest first, by the client's TID:
        # (file name, options, local address, deadline). See _on_request.
        self._waiting: dict[tuple[str, int], tuple[str, dict[str, str], str, float]] = {}
        # Transfers + waiting requests per client address (entries > 0 only).
        self._per_source: dict[str, int] = {}
        # By socket descriptor: the transfer, and None for its socket connected to the client
        # or the socket itself for an unconnected one (whose sender must be checked).
        self._by_fd: dict[int, tuple[_Transfer, socket.socket | None]] = {}
        self._poller: Any = None  # select.epoll (or select.poll), the server thread's
        # No transfer's deadline is earlier than this; the timer (or poll's timeout) wakes the
        # loop then. Deadlines are always set to now + timeout, so they only move later.
        self._next_scan = _NEVER
        self._timer: _Timer | None = None
        self._rbuf = bytearray(RECV_SIZE)

    @property
    def port(self) -> int:
        """The bound UDP port once started (useful with port=0), else the configured one."""
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle (event-loop side) --------------------------------------------------------

    async def start(self) -> None:
        """Bind, then serve in a thread. Returns once the socket is bound; raises
        NetbootdError if the root is unusable or the address cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("TftpServer already started")
        try:
            real_root = Path(os.path.realpath(self.root))
            if not real_root.is_dir():
                raise NetbootdError(f"TFTP: root {self.root} is not a directory")
            os.listdir(real_root)
        except OSError as e:
            raise NetbootdError(f"TFTP: root {self.root}: {e.strerror or e}") from None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.listen, self._port))
        except OSError as e:  # includes socket.gaierror for a bad address
            sock.close()
            why = e.strerror or str(e)
            raise NetbootdError(f"TFTP: cannot bind {self.listen}:{self._port}: {why}") from None
        sock.setblocking(False)
        if _IP_PKTINFO is not None and self.listen in ("", "0.0.0.0"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._port = sock.getsockname()[1]
        self._real_root = str(real_root)
        self._root_names = frozenset({str(PurePosixPath(self.root)), str(real_root)})
        self._trusted_targets = frozenset(map(str, self._pin_trusted(real_root)))
        try:
            self._root_fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._root_fd = -1  # (resolve() serves every name then)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name=f"tftp:{self._port}", daemon=True)
        self._thread.start()
        self.log.info("tftp: serving %s on %s:%d", real_root, self.listen, self._port)

    async def stop(self) -> None:
        """Abort transfers in progress, close every socket, join the thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")
        await asyncio.to_thread(thread.join, STOP_TIMEOUT)
        if thread.is_alive():
            self.log.error("tftp: server thread did not stop within %.0f s", STOP_TIMEOUT)
            return
        if self._wake_w is not None:
            self._wake_w.close()
        self._thread = self._sock = self._wake_r = self._wake_w = None

    def _pin_trusted(self, root: Path) -> frozenset[Path]:
        """Resolve the trusted names; warn about other top-level symlinks that leave the root."""
        pinned: set[Path] = set()
        for name in self.trusted_symlinks:
            target = Path(os.path.realpath(root / name.lstrip("/")))
            if not target.is_relative_to(root) and target.is_file():
                self.log.info("tftp: %s is a symlink out of the root to %s; serving it as a "
                              "configured boot file", name, target)
                pinned.add(target)
        try:
            entries = list(root.iterdir())
        except OSError:
            entries = []
        for entry in sorted(entries):
            if entry.is_symlink():
                target = Path(os.path.realpath(entry))
                if not target.is_relative_to(root) and target not in pinned:
                    self.log.info("tftp: %s leads out of the root (to %s); requests for it "
                                     "will be refused", entry.name, target)
        return frozenset(pinned)

    # -- the loop (server thread) -----------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        request_fd, wake_fd = self._sock.fileno(), self._wake_r.fileno()
        poller, poll = _make_poller()
        self._poller = poller
        poller.register(request_fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        timer = self._timer = _make_timer()
        timer_fd = -1
        if timer is not None:
            timer_fd = timer.fileno()
            poller.register(timer_fd, select.POLLIN)
        transfers, waiting, by_fd, rbuf = self._transfers, self._waiting, self._by_fd, self._rbuf
        on_datagram = self._on_datagram
        timeout: float | None = None  # none: sleep until a packet, stop() or the timer
        try:
            while True:
                events = poll(timeout, 64)
                now = _monotonic()
                request = stop = expired = False
                # Transfers first: a client that ACKs its last block and at once sends a new
                # request from the same port must find the old transfer finished.
                for fd, _ in events:
                    entry = by_fd.get(fd)
                    if entry is not None:
                        t, shared = entry
                        try:
                            if shared is None:
                                n = t.recv_into(rbuf)
                            else:
                                n = self._receive_shared(t, shared)
                            if n >= 0:
                                on_datagram(t, n, now)
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError as e:
                            if e.errno == errno.ECONNREFUSED and shared is None:
                                self._went_away(t)  # ICMP port unreachable from the client
                            else:
                                self.log.debug("tftp: peer=%s receive failed: %s", t.peer, e)
                        except Exception:
                            self.log.exception("tftp: peer=%s failed while sending %s", t.peer,
                                               printable(t.name))
                            self._finish(t)
                    elif fd == request_fd:
                        request = True
                    elif fd == timer_fd:
                        expired = True
                    elif fd == wake_fd:
                        stop = True  # only stop() writes to it
                if stop:
                    break
                if request:
                    self._on_request()
                if waiting and len(transfers) < self.max_transfers:
                    self._admit_waiting()
                if expired and timer is not None:
                    timer.clear()
                if expired or now >= self._next_scan:
                    self._check_timeouts(now)
                if self._timer is None and self._next_scan != _NEVER:
                    timeout = max(0.0, self._next_scan - now)
                else:
                    timeout = None
        except Exception:
            self.log.exception("tftp: server loop failed; TFTP is no longer serving")
        finally:
            for t in list(transfers.values()):
                self._tell(t, ERR_UNDEFINED, "Server shutting down")
                self._finish(t)
            for addr, (_, _, local, _) in waiting.items():
                self._reply_error(local, addr, ERR_UNDEFINED, "Server shutting down")
            waiting.clear()
            self._per_source.clear()
            poller.close()
            self._poller = None
            if timer is not None:
                timer.close()
            self._timer = None
            self._sock.close()
            self._wake_r.close()
            if self._root_fd >= 0:
                os.close(self._root_fd)
                self._root_fd = -1

    def _on_request(self) -> None:
        assert self._sock is not None
        try:
            buf, anc, _flags, src = self._sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(12))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.log.debug("tftp: receive failed: %s", e)
            return
        peer, port = src[0], src[1]
        try:
            request = parse_request(buf)
        except TftpDropped as e:
            self.log.debug("tftp: peer=%s ignored malformed request (%d bytes): %s",
                           peer, len(buf), e.reason)
            return
        if request is None:
            self.log.debug("tftp: peer=%s ignored a %d-byte packet (opcode %s) on the request "
                           "port", peer, len(buf), int.from_bytes(buf[:2], "big") if buf else "-")
            return
        opcode, name, requested = request
        addr = (peer, port)
        current = self._transfers.get(addr)
        if current is not None:
            if opcode == OP_RRQ and name == current.name:
                self._on_repeated_request(current)
                return
            self.log.debug("tftp: peer=%s new request from the port of a transfer in progress; "
                           "dropping that transfer", peer)
            self._finish(current)
        waiting = self._waiting.get(addr)
        if waiting is not None:
            if opcode == OP_RRQ and name == waiting[0]:
                return  # a retransmitted request: it keeps its place
            self._unwait(addr)  # superseded
        local = self._local_address(anc)
        if opcode == OP_WRQ:
            self.log.warning("tftp: refused write of %s from %s: read-only server",
                             printable(name), peer)
            self._reply_error(local, addr, ERR_ACCESS, "Write requests are not accepted")
            return
        if self._per_source.get(peer, 0) >= self.max_per_source:
            self.log.debug("tftp: peer=%s dropped a request for %s: %d transfers from this "
                           "address already", peer, printable(name), self.max_per_source)
            return
        if len(self._transfers) >= self.max_transfers:
            # Every slot taken: wait up to `timeout` for one (a boot storm's requests come all
            # at once, and a PXE ROM answered ERROR gives up), then refuse.
            if len(self._waiting) < max(self.max_transfers, MIN_WAITING):
                deadline = _monotonic() + self.timeout
                self._waiting[addr] = (name, requested, local, deadline)
                self._count(peer, 1)
                if deadline < self._next_scan:
                    self._wake_at(deadline)
            else:
                self._refuse_busy(name, addr, local)
            return
        self._begin(name, requested, addr, local)

    def _count(self, peer: str, delta: int) -> None:
        """Move `peer`'s count of transfers + waiting requests by `delta`."""
        n = self._per_source.get(peer, 0) + delta
        if n > 0:
            self._per_source[peer] = n
        else:
            self._per_source.pop(peer, None)

    def _unwait(self, addr: tuple[str, int]) -> tuple[str, dict[str, str], str, float]:
        entry = self._waiting.pop(addr)
        self._count(addr[0], -1)
        return entry

    def _on_repeated_request(self, t: _Transfer) -> None:
        """The client re-sent the RRQ of its transfer. Before it acknowledged anything, that is
        how a PXE ROM says the first window (or the OACK) was lost: send it again, at most
        `retries` times (nothing else re-sends it). Afterwards: ignored, the timer re-sends."""
        if _heard(t) or t.retries >= self.retries:
            return
        t.retries += 1
        t.deadline = _monotonic() + self.timeout  # (later: _next_scan stays a lower bound)
        if t.oack:
            self._send(t, t.oack)
            return
        try:
            self._send_window(t, 1)
        except _Unreadable as e:
            self._unreadable(t, str(e))

    def _begin(self, name: str, requested: dict[str, str], addr: tuple[str, int],
               local: str) -> None:
        """Start a transfer, or answer the refusal."""
        try:
            self._start_transfer(name, requested, addr, local)
        except _Refused as r:
            self.log.log(r.level, "tftp: refused %s for %s: %s", printable(name), addr[0],
                         r.reason)
            stats.inc("tftp_errors", "refused")
            self._reply_error(local, addr, r.code, r.message)
        except Exception:
            self.log.exception("tftp: peer=%s failed to start sending %s", addr[0],
                               printable(name))
            self._reply_error(local, addr, ERR_UNDEFINED, "Internal error")

    def _refuse_busy(self, name: str, addr: tuple[str, int], local: str) -> None:
        stats.inc("tftp_errors", "busy")
        self.log.warning("tftp: refused %s for %s: %d transfers already in progress",
                         printable(name), addr[0], self.max_transfers)
        self._reply_error(local, addr, ERR_UNDEFINED, "Server busy, try again")

    def _admit_waiting(self) -> None:
        """Start waiting requests, oldest first, while there are free slots."""
        while self._waiting and len(self._transfers) < self.max_transfers:
            addr = next(iter(self._waiting))
            name, requested, local, _ = self._unwait(addr)
            self._begin(name, requested, addr, local)

    def _start_transfer(self, name: str, requested: dict[str, str], addr: tuple[str, int],
                        local: str) -> None:
        fd, size = self._open_name(name)
        mm = None
        try:
            options = negotiate(requested, size)
            mm = _map_file(fd, size)
            sock, stray = _transfer_sockets(local, addr)
        except BaseException:
            if mm is not None:
                mm.close()
            os.close(fd)
            raise
        if mm is not None or size == 0:
            os.close(fd)  # the mapping is all a transfer needs
            fd = -1
        now = _monotonic()
        t = _Transfer(sock, stray, fd, mm, name, addr, size, options, now, now + self.timeout)
        try:
            if t.oack:  # the client ACKs it with block 0
                self._send(t, t.oack)
            else:
                self._send_window(t, 1)
            for s in (sock, stray):
                if s is not None:
                    self._poller.register(s.fileno(), select.POLLIN)
                    self._by_fd[s.fileno()] = (t, None if s is sock and stray is not None else s)
        except _Unreadable as e:
            self._finish(t)
            raise _Refused(ERR_UNDEFINED, "Cannot read file", f"cannot read: {e}") from None
        except BaseException:
            self._finish(t)
            raise
        self._transfers[addr] = t
        self._count(addr[0], 1)
        if t.deadline < self._next_scan:
            self._wake_at(t.deadline)
        self.log.debug("tftp: peer=%s sending %s (%d bytes, options %s)",
                       addr[0], printable(name), size, options)

    def _receive_shared(self, t: _Transfer, sock: socket.socket) -> int:
        """Receive on an unconnected transfer socket: the client's datagram's length, or -1 for
        one from anyone else, which gets ERROR 5 (RFC 1350; the transfer goes on)."""
        n, src = sock.recvfrom_into(self._rbuf)
        if src == t.addr:  # (the only socket, or a kernel that hands the client's packets here)
            return int(n)
        self._send_quietly(sock, src, error_packet(ERR_UNKNOWN_TID, "Unknown transfer ID"))
        return -1

    def _on_datagram(self, t: _Transfer, n: int, now: float) -> None:
        """The client's datagram of `n` bytes, in self._rbuf. The hot path: one per block (or
        window), so it is written for speed: for an in-order ACK in lock-step, no Python call,
        no object but the data's slice and the list sendmsg() takes, nothing logged."""
        b = self._rbuf
        if n < 4 or b[0] or b[1] != OP_ACK:
            self._on_other_packet(t, n)
            return
        # An ACK: for the newest block sent with this wire number.
        sent = t.sent
        block = sent - ((sent - ((b[2] << 8) | b[3])) & 0xFFFF)
        if block <= t.acked:
            return  # a duplicate (or for a block never sent): only the timer re-sends
        t.acked = block
        t.retries = 0
        t.deadline = now + self.timeout
        block += 1  # the next to send
        data = t.data
        if block < t.last and t.window == 1 and data is not None:  # a full block, mapped
            hdr = t.buf
            hdr[2] = (block >> 8) & 0xFF
            hdr[3] = block & 0xFF
            t.sent = block
            offset = t.blksize * (block - 1)
            try:
                t.sendmsg([hdr, data[offset:offset + t.blksize]])
            except OSError as e:
                if e.errno == errno.EFAULT:
                    self._unreadable(t, "the file shrank")
                else:  # e.g. ENOBUFS: the timer re-sends
                    self.log.debug("tftp: peer=%s send failed: %s", t.peer, e)
            return
        if block > t.last:
            self.log.info("tftp: served %s %s to %s in %.2f s", printable(t.name),
                          human_size(t.size), t.peer, now - t.started)
            stats.inc("tftp_transfers", "served")
            stats.inc("tftp_bytes", n=t.size)
            self._finish(t)
            return
        try:
            self._send_window(t, block)
        except _Unreadable as e:
            self._unreadable(t, str(e))

    def _on_other_packet(self, t: _Transfer, n: int) -> None:
        """Not an ACK, from the client: an ERROR ends the transfer, anything else is ignored."""
        b = self._rbuf
        if n >= 4 and b[0] == 0 and b[1] == OP_ERROR:
            self._on_error(t, (b[2] << 8) | b[3], bytes(b[4:n]))
            self._finish(t)
            return
        self.log.debug("tftp: peer=%s ignored a %d-byte packet (opcode %s) during %s",
                       t.peer, n, int.from_bytes(b[:2], "big") if n >= 2 else "-",
                       printable(t.name))

    def _send_window(self, t: _Transfer, first: int) -> None:
        """Send blocks `first`, ...: a window of them, or up to the last. Raises _Unreadable
        when the file cannot be read; a failed send is left to the timer."""
        end = min(first + t.window, t.last + 1)
        for block in range(first, end):
            n = t.blksize if block < t.last else t.last_len
            offset = t.blksize * (block - 1)
            hdr = t.buf
            hdr[2] = (block >> 8) & 0xFF
            hdr[3] = block & 0xFF
            try:
                if t.data is not None:
                    t.sendmsg([hdr, t.data[offset:offset + n]])
                else:
                    try:
                        got = _preadv(t.fd, [t.view[4:4 + n]], offset)
                    except OSError as e:
                        raise _Unreadable(e.strerror or str(e)) from None
                    if got < n:
                        raise _Unreadable("the file shrank")
                    t.send(t.view[:4 + n])
            except OSError as e:
                if e.errno == errno.EFAULT:  # the mapping reaches past the end of the file
                    raise _Unreadable("the file shrank") from None
                self.log.debug("tftp: peer=%s send failed: %s", t.peer, e)
        t.sent = end - 1

    def _send(self, t: _Transfer, data: bytes) -> None:
        try:
            t.send(data)
        except OSError as e:  # the timer re-sends
            self.log.debug("tftp: peer=%s send failed: %s", t.peer, e)

    def _tell(self, t: _Transfer, code: int, message: str) -> None:
        """Send the client an ERROR (the transfer ends)."""
        self._send(t, error_packet(code, message))

    def _unreadable(self, t: _Transfer, why: str) -> None:
        self.log.warning("tftp: transfer of %s to %s failed: cannot read the file: %s",
                         printable(t.name), t.peer, why)
        stats.inc("tftp_transfers", "failed")
        self._tell(t, ERR_UNDEFINED, "Cannot read file")
        self._finish(t)

    def _went_away(self, t: _Transfer) -> None:
        level = logging.DEBUG if t.acked < 0 else logging.INFO  # (after the OACK: a probe)
        self.log.log(level, "tftp: %s went away during the transfer of %s at block %d (its port "
                     "is closed)", t.peer, printable(t.name), t.sent)
        self._finish(t)

    def _on_error(self, t: _Transfer, code: int, raw: bytes) -> None:
        msg = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if t.acked < 0:  # an ERROR in answer to the OACK: a size probe
            self.log.debug("tftp: peer=%s ended after the option reply for %s (code %d %s)",
                           t.peer, printable(t.name), code, msg)
        else:
            self.log.info("tftp: %s aborted the transfer of %s at block %d (code %d %s)",
                          t.peer, printable(t.name), t.sent, code, printable(msg))
            stats.inc("tftp_transfers", "aborted")

    def _check_timeouts(self, now: float) -> None:
        """Re-send what is overdue, give up on what was re-sent `retries` times, and note when
        the next deadline falls (deadlines only move later: see _next_scan)."""
        nearest = _NEVER
        for t in list(self._transfers.values()):
            if t.deadline <= now:
                if not _heard(t):
                    # Never acknowledged: a probe, a client that moved on, or a spoofed source.
                    # No re-send toward it (a real client re-sends its RRQ: _on_repeated_request).
                    self.log.debug("tftp: peer=%s never acknowledged the first %s of %s; "
                                   "dropped without re-sending", t.peer,
                                   "option reply" if t.oack else "window", printable(t.name))
                    self._finish(t)
                    continue
                if t.retries >= self.retries:
                    self.log.warning("tftp: gave up sending %s to %s: no answer after %d tries",
                                     printable(t.name), t.peer, t.retries + 1)
                    stats.inc("tftp_transfers", "timed-out")
                    self._finish(t)
                    continue
                t.retries += 1
                t.deadline = now + self.timeout
                if t.acked < 0:
                    self._send(t, t.oack)
                else:
                    try:
                        self._send_window(t, t.acked + 1)
                    except _Unreadable as e:
                        self._unreadable(t, str(e))
                        continue
            nearest = min(nearest, t.deadline)
        for addr, (name, _, local, deadline) in list(self._waiting.items()):
            if deadline > now:
                nearest = min(nearest, deadline)
                break  # (oldest first: the rest are later)
            self._unwait(addr)
            self._refuse_busy(name, addr, local)
        self._next_scan = _NEVER
        if nearest != _NEVER:
            self._wake_at(nearest)

    def _wake_at(self, when: float) -> None:
        """Have the loop check the transfers' deadlines at `when` (monotonic)."""
        self._next_scan = when
        if self._timer is not None:
            try:
                self._timer.arm(when)
            except OSError as e:
                self.log.warning("tftp: timerfd failed (%s); using poll timeouts", e)
                self._timer = None  # (left registered: it will not fire)

    def _finish(self, t: _Transfer) -> None:
        if t.closed:
            return
        if self._transfers.get(t.addr) is t:
            del self._transfers[t.addr]
            self._count(t.peer, -1)
        for s in (t.sock, t.stray):
            if s is not None and self._by_fd.pop(s.fileno(), None) is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._poller.unregister(s.fileno())
        try:
            t.close()
        except (OSError, BufferError) as e:
            self.log.debug("tftp: peer=%s cleanup: %s", t.peer, e)

    # -- paths ------------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The file a requested name designates, or _Refused.

        A name spelling an absolute path under the root is taken as is (as tftpy and dnsmasq
        do); any other leading "/" is relative to the root, so PXE ROMs that send
        "/undionly.kpxe" and those that send "undionly.kpxe" get the same file. The name is
        then resolved with realpath() -- "..", symlinks and all -- and must stay in the root.
        """
        if not name:
            raise _Refused(ERR_NOT_FOUND, "File not found", "empty file name", logging.INFO)
        _judge_name(name)
        root = self._real_root
        rel = name.lstrip("/")
        if name[0] == "/":
            requested = PurePosixPath(name)
            for base in (PurePosixPath(self.root), PurePosixPath(root)):
                if requested.is_relative_to(base):
                    rel = str(requested.relative_to(base))
                    break
        target = os.path.realpath(os.path.join(root, rel))
        inside = target == root or target.startswith(root if root == "/" else root + "/")
        if not inside and target not in self._trusted_targets:
            raise _Refused(ERR_ACCESS, "Access violation", "outside the TFTP root")
        return target

    def _open_name(self, name: str) -> tuple[int, int]:
        """The requested file, open (see _open), or _Refused.

        A name for a file directly in the root (the usual "undionly.kpxe", "/ipxe.efi") is
        opened relative to the root's descriptor, without following a symlink: it cannot leave
        the root, and costs one system call where resolve() costs a Python loop with an lstat()
        per path component (~0.1 ms of the request's ~0.3 ms). A symlink there, and any other
        name, goes through resolve(). Either way the name is judged first (_judge_name), before
        any file system call."""
        _judge_name(name)
        if self.overlay is not None and (built := self.overlay(name)) is not None:
            opened = self._open(str(built))
            if opened is None:
                raise _Refused(ERR_ACCESS, "Access violation", "symlink")
            return opened
        rel = name.lstrip("/")
        if (self._root_fd >= 0 and rel and "/" not in rel and rel not in (".", "..")
                and not (name[0] == "/" and "/" + rel in self._root_names)):
            opened = self._open(rel, self._root_fd)
            if opened is not None:
                return opened
        opened = self._open(self.resolve(name))
        assert opened is not None
        return opened

    def _open(self, path: str, dir_fd: int | None = None) -> tuple[int, int] | None:
        """The file's descriptor, open read-only, and its size; None if `path` (relative to
        `dir_fd`) is a symlink, which the caller then resolves."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            raise _Refused(ERR_NOT_FOUND, "File not found", "not found", logging.INFO) from None
        except PermissionError:
            raise _Refused(ERR_ACCESS, "Access violation", "permission denied") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                if dir_fd is not None:
                    return None
                # (a symlink appeared after realpath())
                raise _Refused(ERR_ACCESS, "Access violation", "symlink") from None
            if e.errno == errno.ENAMETOOLONG:
                raise _Refused(ERR_NOT_FOUND, "File not found", "name too long",
                               logging.INFO) from None
            raise _Refused(ERR_UNDEFINED, "Cannot read file",
                           f"cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(ERR_NOT_FOUND, "Not a regular file", "not a regular file",
                               logging.INFO)
            return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise

    # -- sending ----------------------------------------------------------------------------

    def _local_address(self, anc: list[tuple[int, int, bytes]]) -> str:
        """The local address to answer from: the bound one, else the request's destination."""
        if self.listen not in ("", "0.0.0.0"):
            return self.listen
        for level, kind, data in anc:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
                return socket.inet_ntoa(data[4:8])  # in_pktinfo.ipi_spec_dst
        return "0.0.0.0"

    def _reply_error(self, local: str, dest: tuple[str, int], code: int, message: str) -> None:
        """Answer a refused request from a fresh port, as RFC 1350 transfers do."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                if local != "0.0.0.0":
                    with contextlib.suppress(OSError):
                        s.bind((local, 0))
                s.sendto(error_packet(code, message), dest)
        except OSError as e:
            self.log.debug("tftp: peer=%s could not send error: %s", dest[0], e)

    def _send_quietly(self, sock: socket.socket, dest: Any, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(data, dest)


class _Timer:
    """A one-shot CLOCK_MONOTONIC timerfd (Linux), armed at the next deadline, so that the loop
    waits in epoll without a timeout (a timeout costs a clock read per wake-up). Through
    os.timerfd_* where Python has them (3.13), else libc's through ctypes."""

    def __init__(self) -> None:
        flags = os.O_NONBLOCK | os.O_CLOEXEC  # = TFD_NONBLOCK | TFD_CLOEXEC
        if hasattr(os, "timerfd_create"):
            self._fd: int = os.timerfd_create(time.CLOCK_MONOTONIC, flags=flags)
            return

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        libc = ctypes.CDLL(None, use_errno=True)
        create, self._settime = libc.timerfd_create, libc.timerfd_settime
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        self._settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(Itimerspec),
            ctypes.c_void_p,
        ]
        self._spec = Itimerspec()
        self._get_errno = ctypes.get_errno
        self._fd = create(time.CLOCK_MONOTONIC, flags)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def fileno(self) -> int:
        return self._fd

    def arm(self, when: float) -> None:
        """Fire once at `when` (time.monotonic()'s clock; already past: at once)."""
        when = max(when, 1e-6)  # (zero would disarm it)
        if hasattr(os, "timerfd_settime"):
            os.timerfd_settime(self._fd, flags=1, initial=when)  # 1: TFD_TIMER_ABSTIME
            return
        sec = int(when)
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = sec, int((when - sec) * 1e9)
        if self._settime(self._fd, 1, self._spec, None) < 0:
            raise OSError(self._get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        with contextlib.suppress(OSError):  # nothing to read: a spurious wake-up
            os.read(self._fd, 8)

    def close(self) -> None:
        os.close(self._fd)


def _make_timer() -> _Timer | None:
    if sys.platform != "linux":
        return None
    try:
        return _Timer()
    except (ImportError, AttributeError, OSError):  # no ctypes, no such libc symbol, ...:
        # the loop uses poll timeouts
        return None


def _make_poller() -> tuple[Any, Callable[[float | None, int], list[tuple[int, int]]]]:
    """select.epoll (Linux), else select.poll; and its poll function, taking seconds."""
    if hasattr(select, "epoll"):
        ep = select.epoll()
        return ep, ep.poll
    p = select.poll()
    p.close = lambda: None  # type: ignore[attr-defined]

    def poll(timeout: float | None, _maxevents: int = -1) -> list[tuple[int, int]]:
        return p.poll(None if timeout is None else timeout * 1000)

    return p, poll
