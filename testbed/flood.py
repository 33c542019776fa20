"""A LAN attacker that holds many idle or half-sent TCP connections open (standard library only).

    python -m testbed.flood --target 10.0.0.1:8080 [--target tls:HOST:PORT ...] --count 5000
        [--source 10.0.1.1 --source 10.0.1.2 ...] [--partial 0.5] [--reopen-rate 500]
        [--duration 60] --stats FILE

Keeps `--count` connections to the targets (round-robin over targets and source addresses),
opened as fast as the kernel allows, then re-opened at up to --reopen-rate a second whenever
the server closes one: what a client does that wants to hold a server's connections. A fraction
`--partial` of them (on each target) send the start of a request head -- to a `tls:` target the
start of a TLS ClientHello -- and then nothing (slow loris); the rest send nothing at all.
Every second it writes its counters to --stats (JSON, replaced atomically): attempts,
established, open (established and not closed by the server), refused_503 (the server answered
"503" and closed), closed_by_server, connect_errors, max_open. Ends after
--duration seconds or on SIGTERM, writing the stats a last time.

Run it inside a namespace of its own (testbed.netns / Lab.add_host) with the source addresses
on its interface; it raises its own RLIMIT_NOFILE to fit --count.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import resource
import selectors
import signal
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

PARTIAL_HEAD = b"GET /boot/52-54-00-00-00-00.ipxe HTTP/1.1\r\nHost: netbootd\r\nX-Slow: "
# a TLS record header announcing a 512-byte handshake message, and its first bytes
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(16)


@dataclass
class Stats:
    attempts: int = 0
    established: int = 0
    open: int = 0
    refused_503: int = 0
    closed_by_server: int = 0
    connect_errors: int = 0
    max_open: int = 0
    seconds: float = 0.0


class Flood:
    def __init__(self, targets: list[tuple[str, int, bool]], sources: list[str], count: int,
                 partial: float, reopen_rate: float) -> None:
        self.targets, self.sources, self.count = targets, sources or [""], count
        self.partial, self.reopen_rate = partial, reopen_rate
        self.sel = selectors.DefaultSelector()
        self.stats = Stats()
        self.live: dict[int, tuple[socket.socket, bool]] = {}  # fd -> (socket, established)
        self.due: deque[int] = deque()  # slots to (re)open, by index
        self.n = 0
        self.tokens = float(count)  # the first `count` opens are not rate-limited

    def _open(self, i: int) -> None:
        host, port, _tls = self.targets[i % len(self.targets)]
        src = self.sources[(i // len(self.targets)) % len(self.sources)]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            if src:
                s.bind((src, 0))
            err = s.connect_ex((host, port))
        except OSError:
            err = errno.EADDRNOTAVAIL
        self.stats.attempts += 1
        if err not in (0, errno.EINPROGRESS):
            self.stats.connect_errors += 1
            s.close()
            self.due.append(i)
            return
        self.live[s.fileno()] = (s, False)
        self.sel.register(s, selectors.EVENT_WRITE, i)

    def _closed(self, fd: int, i: int) -> None:
        s, established = self.live.pop(fd)
        self.sel.unregister(s)
        s.close()
        if established:
            self.stats.open -= 1
            self.stats.closed_by_server += 1
        else:
            self.stats.connect_errors += 1
        self.due.append(i)

    def _event(self, key: selectors.SelectorKey, mask: int) -> None:
        fd, i = key.fd, key.data
        s, established = self.live[fd]
        if not established:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._closed(fd, i)
                return
            self.live[fd] = (s, True)
            self.stats.established += 1
            self.stats.open += 1
            self.stats.max_open = max(self.stats.max_open, self.stats.open)
            j = i // len(self.targets)  # the j-th connection to this target
            if int((j + 1) * self.partial) > int(j * self.partial):  # a `partial` share of them
                with contextlib.suppress(OSError):
                    s.send(PARTIAL_HELLO if self.targets[i % len(self.targets)][2]
                           else PARTIAL_HEAD)
            self.sel.modify(s, selectors.EVENT_READ, i)
            return
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 503"):
            self.stats.refused_503 += 1
        if not data or data.startswith(b"HTTP/"):
            self._closed(fd, i)

    def run(self, duration: float, stats_path: Path, stop: list[bool]) -> Stats:
        t0 = last_write = last = time.monotonic()
        self.due.extend(range(self.count))
        while not stop[0] and (now := time.monotonic()) - t0 < duration:
            self.tokens = min(max(self.tokens, 0.0) + (now - last) * self.reopen_rate,
                              max(self.tokens, self.reopen_rate))
            last = now
            while self.due and self.tokens >= 1:
                self.tokens -= 1
                self._open(self.due.popleft())
            for key, mask in self.sel.select(0.05):
                if key.fd in self.live:
                    self._event(key, mask)
            if now - last_write >= 1.0:
                last_write = now
                self._write(stats_path, now - t0)
        self._write(stats_path, time.monotonic() - t0)
        return self.stats

    def _write(self, path: Path, seconds: float) -> None:
        self.stats.seconds = round(seconds, 2)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self.stats)))
        os.replace(tmp, path)


def _target(text: str) -> tuple[str, int, bool]:
    tls = text.startswith("tls:")
    host, _, port = text.removeprefix("tls:").rpartition(":")
    return host, int(port), tls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", type=_target, required=True)
    ap.add_argument("--source", action="append", default=[])
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--partial", type=float, default=0.5)
    ap.add_argument("--reopen-rate", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--stats", type=Path, required=True)
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.count + 256
    try:  # root with CAP_SYS_RESOURCE may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want, hard if hard == resource.RLIM_INFINITY else max(hard, want)))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # as many as we may
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    flood = Flood(a.target, a.source, a.count, a.partial, a.reopen_rate)
    print(json.dumps(asdict(flood.run(a.duration, a.stats, stop))), flush=True)


if __name__ == "__main__":
    main()
