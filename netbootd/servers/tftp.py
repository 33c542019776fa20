"""The TFTP adapter: iPXE binaries (undionly.kpxe, ipxe.efi, ...) for firmware PXE clients.

Read-only, RRQ only, with the blksize (RFC 2348) and tsize (RFC 2349) options.

tftpy supplies the protocol: the packet codec (TftpPacketFactory), the per-transfer context and
its DATA/ACK state machine (TftpContextServer, TftpStateExpectACK: lock-step, duplicate-ACK
handling without the Sorcerer's Apprentice bug, block-number rollover) and the packet senders.

netbootd does NOT run `tftpy.TftpServer.listen()`. In tftpy 0.8.7 that loop (probed with
packets; test_tftp.py keeps the first three points as a canary):
  - dies (the exception escapes listen(), the server is gone) on a 3-byte ACK or DATA packet,
    an RRQ with a non-ASCII name, an RRQ with `blksize=abc`, and an RRQ naming a directory;
  - serves files through symlinks that point out of the root (its check is lexical:
    `abspath(root + name).startswith(root + "/")`);
  - accepts WRQ and writes the file into the root;
  - notices stop() only when its select() times out (5 s by default);
and, read in its source:
  - logs "Discarding" for a packet from a stranger on a transfer's port, then handles it
    as if the client had sent it;
  - re-sends a timed-out packet on every loop pass (any traffic), not once per timeout;
  - answers from whichever local address routing picks, not the one the client asked.
So this module owns a small selector loop over tftpy's contexts, in one thread beside asyncio:
any bad datagram is logged at debug and the loop goes on; every name is resolved with
realpath() and must stay inside the root; WRQ is refused; stop() wakes the loop at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import selectors
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketERR, TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import TftpException, TftpTimeoutExpectACK
from tftpy.TftpStates import TftpState, TftpStateExpectACK

from netbootd.errors import NetbootdError
from netbootd.fmt import human_size

# RFC 1350 error codes.
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_UNKNOWN_TID = 5

MIN_BLKSIZE = 8
# RFC 2348's maximum. tftpy would grant 65536, which does not fit in a UDP datagram.
MAX_BLKSIZE = 65464
RECV_SIZE = 65536
STOP_TIMEOUT = 2.0

# Linux: learn which local address a request was sent to, so the transfer answers from it
# (firmware PXE stacks drop replies from another address of a multi-homed server).
# Python 3.11 lacks the constant; its value on Linux is 8.
_IP_PKTINFO: int | None = getattr(socket, "IP_PKTINFO", 8 if sys.platform == "linux" else None)



def _printable(name: str) -> str:
    """A requested name as it may appear in a log line (no control characters, bounded)."""
    shown = name if name.isprintable() else repr(name)
    return shown if len(shown) <= 200 else shown[:200] + "..."


def error_packet(code: int, message: str) -> bytes:
    """An RFC 1350 ERROR packet. (tftpy's encoder knows only its fixed texts, and not code 0.)"""
    return struct.pack("!HH", 5, code) + message.encode("ascii", "replace")[:200] + b"\0"


# What tftpy's packet decoders raise on bad input (besides its own TftpException).
_MALFORMED = (TftpException, struct.error, UnicodeError, ValueError, IndexError)


class _Refused(Exception):
    def __init__(self, code: int, message: str, reason: str, level: int = logging.WARNING):
        super().__init__(reason)
        self.code, self.message, self.reason, self.level = code, message, reason, level


@dataclass
class _Transfer:
    ctx: Any  # tftpy TftpContextServer
    name: str
    peer: str
    size: int
    started: float
    deadline: float
    retries: int = 0


class TftpServer:
    """Serves the files under `root` over TFTP. `await start()`, `await stop()`.

    `trusted_symlinks` names files in the root (normally the configured boot files) that may
    be symlinks leading out of it: Debian ships /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi.
    Their targets are resolved once, at start(); any other name that resolves outside the
    root is refused.
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
        trusted_symlinks: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        self.listen = str(listen)
        self._port = port
        self.log = log or logging.getLogger("netbootd.tftp")
        self.timeout = timeout
        self.retries = retries
        self.max_transfers = max_transfers
        self.trusted_symlinks = tuple(trusted_symlinks)
        self._real_root = self.root
        self._trusted_targets: frozenset[Path] = frozenset()
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._transfers: dict[tuple[str, int], _Transfer] = {}
        self._factory = TftpPacketFactory()
        _quiet_tftpy()

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
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            except OSError:
                pass
        self._port = sock.getsockname()[1]
        self._real_root = real_root
        self._trusted_targets = self._pin_trusted(real_root)
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
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass
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
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                ready = [key for key, _ in sel.select(self._select_timeout())]
                # Transfers first: a client that ACKs its last block and at once sends a new
                # request from the same port must find the old transfer finished.
                for key in ready:
                    if key.data is not None and not self._stopping.is_set():
                        self._on_transfer_packet(sel, key.data)
                if self._stopping.is_set():
                    break
                if any(key.fileobj is self._sock for key in ready):
                    self._on_request(sel)
                self._check_timeouts(sel)
        except Exception:
            self.log.exception("tftp: server loop failed; TFTP is no longer serving")
        finally:
            for t in list(self._transfers.values()):
                self._send_quietly(t.ctx.sock, (t.ctx.host, t.ctx.tidport),
                                   error_packet(ERR_UNDEFINED, "Server shutting down"))
                self._finish(sel, t)
            sel.close()
            self._sock.close()
            self._wake_r.close()

    def _select_timeout(self) -> float | None:
        if not self._transfers:
            return None  # idle: sleep until a request or stop()
        nearest = min(t.deadline for t in self._transfers.values())
        return max(0.0, nearest - time.monotonic())

    def _on_request(self, sel: selectors.BaseSelector) -> None:
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
            pkt = self._factory.parse(buf)
        except _MALFORMED as e:
            self.log.debug("tftp: peer=%s ignored malformed request (%d bytes): %s",
                           peer, len(buf), e)
            return
        current = self._transfers.get((peer, port))
        if current is not None:
            if isinstance(pkt, TftpPacketRRQ) and pkt.filename == current.name:
                return  # a retransmitted request: the transfer's own timer re-sends
            self.log.debug("tftp: peer=%s new request from the port of a transfer in progress; "
                           "dropping that transfer", peer)
            self._finish(sel, current)
        local = self._local_address(anc)
        if isinstance(pkt, TftpPacketWRQ):
            self.log.warning("tftp: refused write of %s from %s: read-only server",
                             _printable(pkt.filename), peer)
            self._reply_error(local, (peer, port), ERR_ACCESS, "Write requests are not accepted")
            return
        if not isinstance(pkt, TftpPacketRRQ):
            self.log.debug("tftp: peer=%s ignored %s on the request port", peer, type(pkt).__name__)
            return
        try:
            self._start_transfer(sel, pkt, peer, port, local)
        except _Refused as r:
            self.log.log(r.level, "tftp: refused %s for %s: %s", _printable(pkt.filename), peer,
                         r.reason)
            self._reply_error(local, (peer, port), r.code, r.message)
        except Exception:
            self.log.exception("tftp: peer=%s failed to start sending %s", peer,
                               _printable(pkt.filename))
            self._reply_error(local, (peer, port), ERR_UNDEFINED, "Internal error")

    def _start_transfer(self, sel: selectors.BaseSelector, pkt: Any, peer: str, port: int,
                        local: str) -> None:
        if len(self._transfers) >= self.max_transfers:
            raise _Refused(ERR_UNDEFINED, "Server busy, try again",
                           f"{self.max_transfers} transfers already in progress")
        name: str = pkt.filename
        fileobj, size = self._open(self.resolve(name))
        try:
            options = negotiate(pkt.options, size)
            ctx = TftpContextServer(peer, port, self.timeout, str(self._real_root), flock=False)
        except BaseException:
            fileobj.close()
            raise
        try:
            if local != "0.0.0.0":
                try:
                    ctx.sock.bind((local, 0))
                except OSError:
                    pass  # e.g. a broadcast destination: let the kernel choose
            now = time.monotonic()
            ctx.tidport = port
            ctx.fileobj = fileobj
            ctx.file_to_transfer = name
            ctx.options = dict(options)  # the OACK echoes exactly these; blksize defaults to 512
            ctx.metrics.start_time = ctx.last_update = time.time()
            sender = TftpState(ctx)
            if options:
                ctx.next_block = 0  # the client ACKs the OACK with block 0
                sender.sendOACK()
            else:
                ctx.next_block = 1
                ctx.pending_complete = sender.sendDAT()
            ctx.state = TftpStateExpectACK(ctx)
        except BaseException:
            ctx.end()
            raise
        t = _Transfer(ctx, name, peer, size, now, now + self.timeout)
        self._transfers[(peer, port)] = t
        sel.register(ctx.sock, selectors.EVENT_READ, t)
        self.log.debug("tftp: peer=%s sending %s (%d bytes, options %s)",
                       peer, _printable(name), size, options)

    def _on_transfer_packet(self, sel: selectors.BaseSelector, t: _Transfer) -> None:
        ctx = t.ctx
        try:
            buf, src = ctx.sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as e:
            self.log.debug("tftp: peer=%s receive failed: %s", t.peer, e)
            return
        if (src[0], src[1]) != (ctx.address, ctx.tidport):
            # RFC 1350: a packet from an unknown TID gets ERROR 5; the transfer goes on.
            self._send_quietly(ctx.sock, src, error_packet(ERR_UNKNOWN_TID, "Unknown transfer ID"))
            return
        try:
            pkt = ctx.factory.parse(buf)
        except _MALFORMED as e:
            self.log.debug("tftp: peer=%s ignored malformed packet (%d bytes) during %s: %s",
                           t.peer, len(buf), _printable(t.name), e)
            return
        ctx.last_update = time.time()
        try:
            ctx.state = ctx.state.handle(pkt, src[0], src[1])
        except TftpTimeoutExpectACK:
            self._resend(sel, t)  # duplicate ACKs and our DATA is overdue: send it again
            return
        except TftpException as e:
            self._log_failure(t, pkt, e)
            self._finish(sel, t)
            return
        except Exception:
            self.log.exception("tftp: peer=%s failed while sending %s", t.peer, _printable(t.name))
            self._finish(sel, t)
            return
        t.retries = 0
        t.deadline = time.monotonic() + self.timeout
        if ctx.state is None:
            elapsed = time.monotonic() - t.started
            self.log.info("tftp: served %s %s to %s in %.2f s",
                          _printable(t.name), human_size(t.size), t.peer, elapsed)
            self._finish(sel, t)

    def _log_failure(self, t: _Transfer, pkt: Any, e: Exception) -> None:
        if isinstance(pkt, TftpPacketERR):
            msg = pkt.errmsg.decode("ascii", "replace") if isinstance(pkt.errmsg, bytes) else ""
            if t.ctx.next_block == 0:  # an ERROR in answer to the OACK: a size probe
                self.log.debug("tftp: peer=%s ended after the option reply for %s (code %d %s)",
                               t.peer, _printable(t.name), pkt.errorcode, msg)
            else:
                self.log.info("tftp: %s aborted the transfer of %s at block %d (code %d %s)",
                              t.peer, _printable(t.name), t.ctx.next_block, pkt.errorcode,
                              _printable(msg))
        else:
            self.log.info("tftp: transfer of %s to %s failed: %s", _printable(t.name), t.peer, e)

    def _check_timeouts(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for t in [t for t in self._transfers.values() if t.deadline <= now]:
            if t.retries >= self.retries:
                self.log.warning("tftp: gave up sending %s to %s: no answer after %d tries",
                                 _printable(t.name), t.peer, t.retries + 1)
                self._finish(sel, t)
            else:
                self._resend(sel, t)

    def _resend(self, sel: selectors.BaseSelector, t: _Transfer) -> None:
        t.retries += 1
        t.deadline = time.monotonic() + self.timeout
        try:
            t.ctx.state.resendLast()
        except (TftpException, OSError) as e:  # tftpy gives up after 20 duplicates
            self.log.info("tftp: transfer of %s to %s failed: %s", _printable(t.name), t.peer, e)
            self._finish(sel, t)

    def _finish(self, sel: selectors.BaseSelector, t: _Transfer) -> None:
        self._transfers.pop((t.peer, t.ctx.port), None)
        try:
            sel.unregister(t.ctx.sock)
        except (KeyError, ValueError):
            pass
        try:
            t.ctx.end()  # closes the transfer's socket and file
        except OSError as e:
            self.log.debug("tftp: peer=%s cleanup: %s", t.peer, e)

    # -- paths ------------------------------------------------------------------------------

    def resolve(self, name: str) -> Path:
        """The file a requested name designates, or _Refused.

        A name spelling an absolute path under the root is taken as is (as tftpy and dnsmasq
        do); any other leading "/" is relative to the root, so PXE ROMs that send
        "/undionly.kpxe" and those that send "undionly.kpxe" get the same file. The name is
        then resolved with realpath() -- "..", symlinks and all -- and must stay in the root.
        """
        if not name:
            raise _Refused(ERR_NOT_FOUND, "File not found", "empty file name", logging.INFO)
        root = self._real_root
        requested = PurePosixPath(name)
        rel = name.lstrip("/")
        if requested.is_absolute():
            for base in (PurePosixPath(self.root), PurePosixPath(root)):
                if requested.is_relative_to(base):
                    rel = str(requested.relative_to(base))
                    break
        target = Path(os.path.realpath(root / rel))
        if not target.is_relative_to(root) and target not in self._trusted_targets:
            raise _Refused(ERR_ACCESS, "Access violation", "outside the TFTP root")
        return target

    def _open(self, path: Path) -> tuple[IO[bytes], int]:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise _Refused(ERR_NOT_FOUND, "File not found", "not found", logging.INFO) from None
        except PermissionError:
            raise _Refused(ERR_ACCESS, "Access violation", "permission denied") from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink appeared after realpath()
                raise _Refused(ERR_ACCESS, "Access violation", "symlink") from None
            if e.errno == errno.ENAMETOOLONG:
                raise _Refused(ERR_NOT_FOUND, "File not found", "name too long", logging.INFO) from None
            raise _Refused(ERR_UNDEFINED, "Cannot read file", f"cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(ERR_NOT_FOUND, "Not a regular file", "not a regular file",
                               logging.INFO)
            return os.fdopen(fd, "rb"), st.st_size
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
                    try:
                        s.bind((local, 0))
                    except OSError:
                        pass
                s.sendto(error_packet(code, message), dest)
        except OSError as e:
            self.log.debug("tftp: peer=%s could not send error: %s", dest[0], e)

    def _send_quietly(self, sock: socket.socket, dest: Any, data: bytes) -> None:
        try:
            sock.sendto(data, dest)
        except OSError:
            pass


def negotiate(requested: dict[str, str], size: int) -> dict[str, int]:
    """The options granted for an RRQ: blksize (clamped to RFC 2348's maximum) and tsize.
    Anything else (windowsize, timeout, ...) and malformed values are ignored, as RFC 2347
    allows."""
    granted: dict[str, int] = {}
    for key, value in requested.items():
        option = key.lower()
        if option == "blksize":
            try:
                n = int(value)
            except ValueError:
                continue
            if n >= MIN_BLKSIZE:
                granted["blksize"] = min(n, MAX_BLKSIZE)
        elif option == "tsize":
            granted["tsize"] = size
    return granted


def _quiet_tftpy() -> None:
    """tftpy logs at INFO per packet. Keep it at WARNING, and silence the two modules whose
    warnings and errors fire per packet or on every PXE size probe (an ERROR answering the
    option reply); this module logs those events itself, with the peer and the file.
    A level set explicitly by the operator is left alone."""
    for name, level in (("tftpy", logging.WARNING),
                        ("tftpy.TftpStates", logging.CRITICAL),
                        ("tftpy.TftpPacketTypes", logging.CRITICAL)):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
