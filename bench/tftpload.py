"""TFTP transfer timing (runs in the benchmark namespace; the last stdout line is JSON).

    python -m bench.tftpload --server 127.0.0.1 --file ipxe.efi --size N --sha256 HEX \
        --blksize 1468 [--windowsize 8] --reps 5 [--floor-file tiny.bin]

The client is atftp (C; of the Debian TFTP clients the only one that can ask for RFC 7440
windowsize: curl, busybox tftp and tftp-hpa cannot), one process per transfer, writing to
/dev/null, timed from spawn to exit. Before timing: an OACK probe (which options the server
grants: a server that ignores windowsize answers lock-step) and one download to a file, checked
against --sha256. With --cpu the client runs on that CPU (the caller pins the server there too:
a lock-step transfer on loopback is otherwise dominated by cross-CPU wake-up latency, which
varies several-fold with whatever else the machine runs). --floor-file (a 1-byte file) measures
the fixed cost of a transfer as this client sees it (process start + request + one block), so
small-file times can be read net of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import median


def probe(
    server: str, name: str, options: dict[str, str], timeout: float = 3.0
) -> dict[str, str] | str:
    """The options the server's OACK grants for an RRQ with `options` ({} when it answers with
    DATA, i.e. no option support), or an error string."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        parts = [name.encode(), b"octet"] + [
            x for k, v in options.items() for x in (k.encode(), v.encode())
        ]
        s.sendto(struct.pack("!H", 1) + b"\0".join(parts) + b"\0", (server, 69))
        try:
            pkt, src = s.recvfrom(65536)
        except TimeoutError:
            return "no answer"
        op = struct.unpack("!H", pkt[:2])[0]
        # Abort the transfer politely (code 8: option negotiation refused / we only probed).
        s.sendto(struct.pack("!HH", 5, 0) + b"probe only\0", src)
        if op == 6:
            f = pkt[2:].split(b"\0")
            return {
                f[i].decode().lower(): f[i + 1].decode() for i in range(0, len(f) - 1, 2) if f[i]
            }
        if op == 3:
            return {}
        if op == 5:
            return "ERROR " + pkt[4:].split(b"\0", 1)[0].decode("latin-1")
        return f"opcode {op}"
    finally:
        s.close()


def atftp(
    server: str,
    name: str,
    out: str,
    blksize: int,
    windowsize: int | None,
    timeout: float,
    cpu: int | None = None,
) -> float:
    argv = (["taskset", "-c", str(cpu)] if cpu is not None else []) + [
        "atftp",
        "--get",
        "--remote-file",
        name,
        "--local-file",
        out,
        "--option",
        f"blksize {blksize}",
    ]
    if windowsize:
        argv += ["--option", f"windowsize {windowsize}"]
    argv += [server, "69"]
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(
            f"atftp {name} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}"
        )
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.tftpload")
    ap.add_argument("--server", default="127.0.0.1")
    ap.add_argument("--file", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--sha256", required=True)
    ap.add_argument("--blksize", type=int, default=1468)
    ap.add_argument("--windowsize", type=int)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--floor-file")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--cpu", type=int, help="run the client on this CPU (taskset)")
    a = ap.parse_args(argv)
    opts = {"blksize": str(a.blksize), "tsize": "0"}
    if a.windowsize:
        opts["windowsize"] = str(a.windowsize)
    granted = probe(a.server, a.file, opts)
    time.sleep(0.2)
    with tempfile.NamedTemporaryFile(prefix="nbdbench-tftp-") as tmp:
        atftp(a.server, a.file, tmp.name, a.blksize, a.windowsize, a.timeout, a.cpu)
        data = Path(tmp.name).read_bytes()
    ok = len(data) == a.size and hashlib.sha256(data).hexdigest() == a.sha256
    times = (
        [
            atftp(a.server, a.file, "/dev/null", a.blksize, a.windowsize, a.timeout, a.cpu)
            for _ in range(a.reps)
        ]
        if ok
        else []
    )
    floor = []
    if a.floor_file and ok:
        floor = [
            atftp(a.server, a.floor_file, "/dev/null", a.blksize, a.windowsize, a.timeout, a.cpu)
            for _ in range(3)
        ]
    print(
        json.dumps(
            {
                "file": a.file,
                "size": a.size,
                "windowsize": a.windowsize,
                "granted": granted,
                "verified": ok,
                "got_bytes": len(data),
                "times_s": times,
                "median_s": median(times) if times else None,
                "floor_s": median(floor) if floor else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
