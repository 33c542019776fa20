"""HTTP load generators (run inside a benchmark namespace; the last stdout line is JSON).

python -m bench.httpload download --url URL --clients 64 --size BYTES [--timeout S]
    N concurrent connections, each GETs URL once. The body goes socket -> pipe -> /dev/null
    with splice(2), so the generator itself copies nothing and costs little CPU: the server
    is what is measured. Checks every response: status 200, Content-Length == --size, and
    exactly that many bytes received. Reports aggregate throughput and its own CPU time.

python -m bench.httpload verify --url URL --sha256 HEX
    One plain GET, hashed: the content check done once per server before the timed run.

python -m bench.httpload rate --base URL --macs FILE --rate R --duration S [--conns C]
    wrk2-style open loop: request i is due at t0 + i/R, for a random MAC from FILE
    (/boot/<mac>.ipxe); C keep-alive connections take due requests in order. Latency is
    measured from the time a request was DUE (not sent), so a stalled server cannot hide
    its queueing (no coordinated omission). Bounded: R*S requests, then at most --grace s.

python -m bench.httpload closed --base URL --macs FILE --conns C --duration S
    Closed loop (as fast as C connections go): the script endpoint's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

F_SETPIPE_SZ = 1031
SPLICE_CHUNK = 1 << 20


def _split(url: str) -> tuple[str, int, str]:
    u = urlsplit(url)
    return (
        u.hostname or "127.0.0.1",
        u.port or 80,
        (u.path or "/") + (f"?{u.query}" if u.query else ""),
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- download


@dataclass
class _Conn:
    idx: int
    sock: socket.socket
    state: str = "connect"
    head: bytes = b""
    need: int = -1  # body bytes still expected
    got: int = 0  # body bytes received
    status: int = 0
    error: str = ""
    t_start: float = 0.0
    t_done: float = 0.0


def download(url: str, clients: int, size: int, timeout: float) -> dict[str, object]:
    host, port, path = _split(url)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: nbdbench\r\nConnection: close\r\n\r\n"
    ).encode()
    pipe_r, pipe_w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe_w, F_SETPIPE_SZ, SPLICE_CHUNK)
    devnull = os.open(os.devnull, os.O_WRONLY)
    sel = selectors.DefaultSelector()
    conns = []
    cpu0, t0 = _cpu(), time.monotonic()
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c = _Conn(i, s, t_start=time.monotonic())
        with contextlib.suppress(BlockingIOError):
            s.connect((host, port))
        sel.register(s, selectors.EVENT_WRITE, c)
        conns.append(c)
    pending = clients
    deadline = t0 + timeout
    while pending and time.monotonic() < deadline:
        for key, _ev in sel.select(0.5):
            c: _Conn = key.data
            try:
                if c.state == "connect":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    c.sock.sendall(request)  # small: fits the empty send buffer
                    c.state = "head"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                elif c.state == "head":
                    data = c.sock.recv(65536)
                    if not data:
                        raise OSError(errno.ECONNRESET, "closed before the response head")
                    c.head += data
                    if b"\r\n\r\n" in c.head:
                        head, body = c.head.split(b"\r\n\r\n", 1)
                        lines = head.decode("latin-1").split("\r\n")
                        c.status = int(lines[0].split()[1])
                        length = next(
                            (
                                int(x.split(":", 1)[1])
                                for x in lines[1:]
                                if x.lower().startswith("content-length:")
                            ),
                            -1,
                        )
                        if c.status != 200 or length != size:
                            raise OSError(
                                0,
                                f"status {c.status}, Content-Length {length}, expected 200/{size}",
                            )
                        c.need, c.got = length - len(body), len(body)
                        c.state = "body"
                        if c.need <= 0:
                            c.state = "done"
                elif c.state == "body":
                    while c.need > 0:
                        try:
                            n = os.splice(
                                c.sock.fileno(),
                                pipe_w,
                                min(SPLICE_CHUNK, c.need),
                                flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                            )
                        except BlockingIOError:
                            break
                        if n == 0:
                            raise OSError(
                                errno.ECONNRESET, f"connection closed with {c.need} bytes missing"
                            )
                        c.need -= n
                        c.got += n
                        while n:
                            n -= os.splice(pipe_r, devnull, n, flags=os.SPLICE_F_MOVE)
                    if c.need <= 0:
                        c.state = "done"
            except OSError as e:
                c.error = e.strerror or str(e)
                c.state = "done"
            if c.state == "done":
                c.t_done = time.monotonic()
                sel.unregister(c.sock)
                c.sock.close()
                pending -= 1
    wall = time.monotonic() - t0
    cpu = _cpu() - cpu0
    for c in conns:
        if c.state != "done":
            c.error = c.error or f"timed out after {timeout:.0f}s ({c.got} bytes)"
            c.sock.close()
    errors = [f"client {c.idx}: {c.error}" for c in conns if c.error]
    total = sum(c.got for c in conns if not c.error)
    times = sorted(c.t_done - c.t_start for c in conns if not c.error)
    return {
        "clients": clients,
        "ok": clients - len(errors),
        "errors": errors[:10],
        "error_count": len(errors),
        "bytes": total,
        "wall_s": wall,
        "throughput_Bps": total / wall if wall else 0.0,
        "client_time_min_s": times[0] if times else None,
        "client_time_max_s": times[-1] if times else None,
        "generator_cpu_s": cpu,
    }


def verify(url: str, sha256: str, timeout: float) -> dict[str, object]:
    host, port, path = _split(url)
    h = hashlib.sha256()
    n = 0
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        h.update(body)
        n += len(body)
        while d := s.recv(1 << 20):
            h.update(d)
            n += len(d)
    ok = status == 200 and h.hexdigest() == sha256
    return {"ok": ok, "status": status, "bytes": n, "sha256": h.hexdigest()}


# ---------------------------------------------------------------------------------- scripts


@dataclass
class _Stats:
    lat: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: int = 0


async def _http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nbdbench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (int(x.split(":", 1)[1]) for x in lines[1:] if x.lower().startswith("content-length:")),
        None,
    )
    if length is None:
        raise OSError(0, "no Content-Length")
    return status, await reader.readexactly(length)


def _check_script(status: int, body: bytes, mac: str) -> str | None:
    if status != 200:
        return f"status {status}"
    if not body.startswith(b"#!ipxe") or mac.replace("-", ":").encode() not in body:
        return f"unexpected body {body[:60]!r}"
    return None


async def _rate(
    base: str, macs: list[str], rate: float, duration: float, conns: int, grace: float
) -> dict[str, object]:
    host, port, prefix = _split(base)
    prefix = prefix.rstrip("/")
    total = int(rate * duration)
    queue: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    st = _Stats()
    rnd = random.Random(4)

    async def worker() -> None:
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            due, mac = item
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                status, body = await _http_get(reader, writer, host, f"{prefix}/boot/{mac}.ipxe")
                why = _check_script(status, body, mac)
                if why:
                    st.errors.append(f"{mac}: {why}")
                else:
                    st.lat.append(time.monotonic() - due)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                st.errors.append(f"{mac}: {type(e).__name__}: {e}")
                if writer is not None:
                    writer.close()
                reader = writer = None
            st.done += 1
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(conns)]
    cpu0 = _cpu()
    t0 = time.monotonic() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, macs[rnd.randrange(len(macs))]))
    for _ in tasks:
        queue.put_nowait(None)
    sent_by = time.monotonic()
    _done, stuck = await asyncio.wait(tasks, timeout=grace)
    for t in stuck:
        t.cancel()
    wall = time.monotonic() - t0
    lat = st.lat
    return {
        "requests": total,
        "ok": len(lat),
        "error_count": len(st.errors) + (total - st.done),
        "errors": st.errors[:10],
        "rate": rate,
        "duration_s": duration,
        "conns": conns,
        "schedule_lag_s": sent_by - (t0 + (total - 1) / rate),
        "p50_ms": _pct(lat, 50) * 1e3,
        "p90_ms": _pct(lat, 90) * 1e3,
        "p99_ms": _pct(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3 if lat else None,
        "wall_s": wall,
        "generator_cpu_s": _cpu() - cpu0,
    }


async def _closed(base: str, macs: list[str], conns: int, duration: float) -> dict[str, object]:
    host, port, prefix = _split(base)
    prefix = prefix.rstrip("/")
    st = _Stats()
    rnd = random.Random(5)
    end = time.monotonic() + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < end:
                mac = macs[rnd.randrange(len(macs))]
                t = time.monotonic()
                status, body = await _http_get(reader, writer, host, f"{prefix}/boot/{mac}.ipxe")
                why = _check_script(status, body, mac)
                if why:
                    st.errors.append(why)
                else:
                    st.lat.append(time.monotonic() - t)
        finally:
            writer.close()

    t0 = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(conns)), return_exceptions=True), duration + 30
    )
    wall = time.monotonic() - t0
    st.errors += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {
        "ok": len(st.lat),
        "error_count": len(st.errors),
        "errors": st.errors[:10],
        "conns": conns,
        "req_per_s": len(st.lat) / wall,
        "p50_ms": _pct(st.lat, 50) * 1e3,
        "p99_ms": _pct(st.lat, 99) * 1e3,
    }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))]


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.httpload")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("--url", required=True)
    d.add_argument("--clients", type=int, default=64)
    d.add_argument("--size", type=int, required=True)
    d.add_argument("--timeout", type=float, default=300)
    v = sub.add_parser("verify")
    v.add_argument("--url", required=True)
    v.add_argument("--sha256", required=True)
    v.add_argument("--timeout", type=float, default=60)
    for name in ("rate", "closed"):
        r = sub.add_parser(name)
        r.add_argument("--base", required=True)
        r.add_argument("--macs", required=True, help="file with one MAC per line")
        r.add_argument("--duration", type=float, default=10)
        r.add_argument("--conns", type=int, default=16)
        if name == "rate":
            r.add_argument("--rate", type=float, required=True)
            r.add_argument("--grace", type=float, default=10)
    a = ap.parse_args(argv)
    _raise_nofile()
    if a.cmd == "download":
        out = download(a.url, a.clients, a.size, a.timeout)
    elif a.cmd == "verify":
        out = verify(a.url, a.sha256, a.timeout)
    else:
        with open(a.macs) as f:
            macs = [m.strip() for m in f if m.strip()]
        if a.cmd == "rate":
            out = asyncio.run(_rate(a.base, macs, a.rate, a.duration, a.conns, a.grace))
        else:
            out = asyncio.run(_closed(a.base, macs, a.conns, a.duration))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
