"""Boot-storm clients (run in the client namespace; the last stdout line is JSON).

    python -m bench.storm --server 10.213.0.1 --clients 500 --tftp-file undionly.kpxe \
        --tftp-sha256 HEX --kernel-size N --initrd-size N [--ramp S] [--timeout S]

Each simulated client i (MAC bench.common.mac_for(i), address 10.213.<1+i//250>.<1+i%250>,
which the caller has added to eth0) boots the way a BIOS PXE ROM + iPXE does, all concurrently:

  1. firmware DHCPDISCOVER (broadcast, raw frame from 0.0.0.0:68) -> proxy OFFER naming the
     boot file; retransmitted after 4, 8, 16, 32 s (+-1 s) as PXE ROMs do, then it fails;
  2. DHCPREQUEST to <server>:4011 -> ACK naming the same file (same schedule);
  3. TFTP RRQ for it (blksize 1468, tsize), lock-step ACKs, 1 s timeout, 5 retransmissions;
     the content is checked against --tftp-sha256;
  4. iPXE's DHCPDISCOVER (user class iPXE) -> OFFER naming http://.../boot/<mac>.ipxe;
  5. GET the script; GET its kernel URL; GET its initrd URL (new connection each, as iPXE does).
     Bodies go socket -> pipe -> /dev/null (splice); status, Content-Length and byte counts
     are checked against --kernel-size / --initrd-size.

A client fails at the first step that does not succeed; the output counts failures per step
with example reasons, retransmissions, per-client boot times and the total bytes moved.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import resource
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.common import mac_for, percentile
from bench.packets import (
    ACK,
    DISCOVER,
    OFFER,
    REQUEST,
    bootp,
    broadcast_frame,
    mac_bytes,
    parse_reply,
    recv_reply,
    reply_socket,
    send_socket,
)

# A PXE ROM's DHCP retransmission schedule (PXE 2.1: 4, 8, 16, 32 s, then it gives up), each
# randomised by +-1 s as RFC 2131 4.1 asks, so a herd does not retransmit in lock-step.
DHCP_TIMEOUTS = (4.0, 8.0, 16.0, 32.0)
TFTP_TIMEOUT, TFTP_RETRIES = 1.0, 5
HTTP_TIMEOUT = 120.0
F_SETPIPE_SZ = 1031


def client_ip(i: int) -> str:
    return f"10.213.{1 + i // 250}.{1 + i % 250}"


class StepFailed(Exception):
    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"{step}: {why}")
        self.step, self.why = step, why


@dataclass
class Result:
    idx: int
    ok: bool = False
    step: str = ""
    why: str = ""
    t_start: float = 0.0
    t_end: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    retransmits: Counter[str] = field(default_factory=Counter)


class Storm:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.loop = asyncio.get_running_loop()
        self.tx = send_socket(a.iface)
        self.rx = reply_socket(a.iface)
        self.waiters: dict[int, asyncio.Future[dict[str, object]]] = {}
        self.loop.add_reader(self.rx.fileno(), self._on_reply)
        self.pipe_r, self.pipe_w = os.pipe()
        fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, 1 << 20)
        self.devnull = os.open(os.devnull, os.O_WRONLY)
        self.rnd = random.Random(7)
        self.used_xids: set[int] = set()
        self.stray = 0

    def _on_reply(self) -> None:
        for _ in range(512):
            r = recv_reply(self.rx)
            if r is None:
                return
            info = parse_reply(r[0])
            if info is None:
                continue
            fut = self.waiters.get(int(info["xid"]))  # type: ignore[call-overload]
            if fut is not None and not fut.done():
                fut.set_result(info)
            else:
                self.stray += 1

    def _xid(self) -> int:
        while True:
            x = self.rnd.getrandbits(32)
            if x not in self.used_xids:
                self.used_xids.add(x)
                return x

    async def _dhcp(self, res: Result, step: str, mac: bytes, ipxe: bool) -> dict[str, object]:
        xid = self._xid()
        frame = broadcast_frame(mac, bootp(mac, xid, DISCOVER, 0, ipxe=ipxe))
        fut = self.loop.create_future()
        self.waiters[xid] = fut
        try:
            for n, timeout in enumerate(DHCP_TIMEOUTS):
                if n:
                    res.retransmits[step] += 1
                self.tx.send(frame)
                try:
                    info = await asyncio.wait_for(
                        asyncio.shield(fut), timeout + self.rnd.uniform(-1, 1)
                    )
                except TimeoutError:
                    continue
                if info["msg"] != OFFER or info["chaddr"] != mac:
                    raise StepFailed(step, f"unexpected reply {info}")
                return info
            raise StepFailed(step, f"no OFFER after {len(DHCP_TIMEOUTS)} DISCOVERs")
        finally:
            self.waiters.pop(xid, None)

    async def _pxe_request(self, res: Result, mac: bytes, ip: str) -> dict[str, object]:
        step = "4011"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((ip, 0))
        try:
            xid = self._xid()
            pkt = bootp(mac, xid, REQUEST, 0, ciaddr=socket.inet_aton(ip), broadcast=False)
            for n, timeout in enumerate(DHCP_TIMEOUTS):
                if n:
                    res.retransmits[step] += 1
                await self.loop.sock_sendto(s, pkt, (self.a.server, 4011))
                end = time.monotonic() + timeout + self.rnd.uniform(-1, 1)
                while time.monotonic() < end:
                    try:
                        data, _ = await asyncio.wait_for(
                            self.loop.sock_recvfrom(s, 4096), end - time.monotonic()
                        )
                    except TimeoutError:
                        break
                    info = parse_reply(data)
                    if info and info["xid"] == xid:
                        if info["msg"] != ACK:
                            raise StepFailed(step, f"reply is message type {info['msg']}, not ACK")
                        return info
            raise StepFailed(step, f"no ACK on 4011 after {len(DHCP_TIMEOUTS)} REQUESTs")
        finally:
            s.close()

    async def _tftp(self, res: Result, ip: str, name: str) -> bytes:
        step = "tftp"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((ip, 0))
        blksize = 1468
        rrq = (
            struct.pack("!H", 1)
            + b"\0".join(
                [name.encode(), b"octet", b"blksize", str(blksize).encode(), b"tsize", b"0"]
            )
            + b"\0"
        )
        data = bytearray()
        peer: tuple[str, int] | None = None
        last_sent, dest = rrq, (self.a.server, 69)
        expect = 1
        retries = 0
        try:
            await self.loop.sock_sendto(s, last_sent, dest)
            while True:
                try:
                    pkt, src = await asyncio.wait_for(
                        self.loop.sock_recvfrom(s, 65536), TFTP_TIMEOUT
                    )
                except TimeoutError:
                    retries += 1
                    res.retransmits[step] += 1
                    if retries > TFTP_RETRIES:
                        raise StepFailed(
                            step,
                            f"timed out at block {expect} after {TFTP_RETRIES} retransmissions",
                        ) from None
                    await self.loop.sock_sendto(s, last_sent, dest)
                    continue
                if peer is None:
                    peer = src
                    dest = src
                elif src != peer:
                    continue
                op = struct.unpack("!H", pkt[:2])[0]
                if op == 5:
                    msg = pkt[4:].split(b"\0", 1)[0].decode("latin-1")
                    raise StepFailed(step, f"ERROR {struct.unpack('!H', pkt[2:4])[0]}: {msg}")
                if op == 6:  # OACK
                    opts = pkt[2:].rstrip(b"\0").split(b"\0")  # name\0value\0 pairs
                    granted = dict(zip(opts[0::2], opts[1::2], strict=True))
                    blksize = int(granted.get(b"blksize", b"512"))
                    last_sent = struct.pack("!HH", 4, 0)
                    await self.loop.sock_sendto(s, last_sent, dest)
                    continue
                if op != 3:
                    continue
                block = struct.unpack("!H", pkt[2:4])[0]
                if block == (expect & 0xFFFF):
                    data += pkt[4:]
                    last_sent = struct.pack("!HH", 4, block)
                    await self.loop.sock_sendto(s, last_sent, dest)
                    retries = 0
                    expect += 1
                    if len(pkt) - 4 < blksize:
                        return bytes(data)
                elif block == ((expect - 1) & 0xFFFF):  # a duplicate: our ACK was lost
                    await self.loop.sock_sendto(s, last_sent, dest)
        finally:
            s.close()

    async def _get(
        self, step: str, ip: str, url: str, expect_size: int | None, keep: bool
    ) -> tuple[int, bytes]:
        """GET url from source address ip. keep=True: return the body; else splice it away."""
        u = urlsplit(url)
        host, port = u.hostname or self.a.server, u.port or 80
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((ip, 0))
            await asyncio.wait_for(self.loop.sock_connect(s, (host, port)), 10)
            await self.loop.sock_sendall(
                s,
                f"GET {u.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"User-Agent: iPXE/1.0.0 (nbdbench)\r\nConnection: close\r\n\r\n".encode(),
            )
            head = b""
            while b"\r\n\r\n" not in head:
                d = await asyncio.wait_for(self.loop.sock_recv(s, 65536), HTTP_TIMEOUT)
                if not d:
                    raise StepFailed(step, "connection closed before the response head")
                head += d
            head, body = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next(
                (
                    int(x.split(":", 1)[1])
                    for x in lines[1:]
                    if x.lower().startswith("content-length:")
                ),
                -1,
            )
            if status != 200:
                raise StepFailed(step, f"HTTP {status}")
            if expect_size is not None and length != expect_size:
                raise StepFailed(step, f"Content-Length {length}, expected {expect_size}")
            if keep:
                while len(body) < length:
                    d = await asyncio.wait_for(self.loop.sock_recv(s, 65536), HTTP_TIMEOUT)
                    if not d:
                        raise StepFailed(step, f"closed after {len(body)} of {length} bytes")
                    body += d
                return length, body
            need = length - len(body)
            while need > 0:
                try:
                    n = os.splice(
                        s.fileno(),
                        self.pipe_w,
                        min(need, 1 << 20),
                        flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                    )
                except BlockingIOError:
                    fut = self.loop.create_future()
                    self.loop.add_reader(s.fileno(), lambda f=fut: f.done() or f.set_result(None))
                    try:
                        await asyncio.wait_for(fut, HTTP_TIMEOUT)
                    except TimeoutError:
                        raise StepFailed(step, f"stalled with {need} bytes missing") from None
                    finally:
                        self.loop.remove_reader(s.fileno())
                    continue
                if n == 0:
                    raise StepFailed(step, f"closed with {need} of {length} bytes missing")
                need -= n
                while n:
                    n -= os.splice(self.pipe_r, self.devnull, n, flags=os.SPLICE_F_MOVE)
            return length, b""
        except OSError as e:
            raise StepFailed(
                step, f"{errno.errorcode.get(e.errno or 0, '')} {e.strerror or e}"
            ) from None
        except TimeoutError:
            raise StepFailed(step, "timed out") from None
        finally:
            s.close()

    async def client(self, i: int, delay: float) -> Result:
        res = Result(i)
        await asyncio.sleep(delay)
        res.t_start = t = time.monotonic()
        mac_s, ip = mac_for(i), client_ip(i)
        mac = mac_bytes(mac_s)

        def mark(step: str) -> None:
            nonlocal t
            now = time.monotonic()
            res.steps[step] = now - t
            t = now

        try:
            offer = await self._dhcp(res, "dhcp", mac, ipxe=False)
            if offer["siaddr"] != self.a.server or not offer["file"]:
                raise StepFailed("dhcp", f"offer names {offer['siaddr']} {offer['file']!r}")
            mark("dhcp")
            ack = await self._pxe_request(res, mac, ip)
            if ack["file"] != offer["file"]:
                raise StepFailed("4011", f"ACK names {ack['file']!r}, the offer {offer['file']!r}")
            mark("4011")
            blob = await self._tftp(res, ip, str(ack["file"]))
            if hashlib.sha256(blob).hexdigest() != self.a.tftp_sha256:
                raise StepFailed("tftp", f"content mismatch ({len(blob)} bytes)")
            res.bytes += len(blob)
            mark("tftp")
            offer2 = await self._dhcp(res, "ipxe-dhcp", mac, ipxe=True)
            url = str(offer2["file"])
            if not url.startswith("http://") or mac_s.replace(":", "-") not in url:
                raise StepFailed("ipxe-dhcp", f"offer names {url!r}, not this host's script")
            mark("ipxe-dhcp")
            n, script = await self._get("script", ip, url, None, keep=True)
            res.bytes += n
            kernel = re.search(rb"^kernel (\S+)", script, re.MULTILINE)
            initrds = re.findall(rb"^initrd (?:--name \S+ )?(\S+)", script, re.MULTILINE)
            if not kernel or len(initrds) != 1:
                raise StepFailed("script", f"no kernel/initrd line in {script[:200]!r}")
            mark("script")
            n, _ = await self._get(
                "kernel", ip, kernel.group(1).decode(), self.a.kernel_size, keep=False
            )
            res.bytes += n
            mark("kernel")
            n, _ = await self._get(
                "initrd", ip, initrds[0].decode(), self.a.initrd_size, keep=False
            )
            res.bytes += n
            mark("initrd")
            res.ok = True
        except StepFailed as e:
            res.step, res.why = e.step, e.why
        except Exception as e:  # noqa: BLE001 (a harness bug is reported as such, per client)
            res.step, res.why = "harness", f"{type(e).__name__}: {e}"
        res.t_end = time.monotonic()
        return res


async def amain(a: argparse.Namespace) -> dict[str, object]:
    storm = Storm(a)
    rnd = random.Random(11)
    t0 = time.monotonic()
    tasks = [
        asyncio.create_task(storm.client(i, rnd.uniform(0, a.ramp) if a.ramp else 0.0))
        for i in range(a.clients)
    ]
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    results = [t.result() for t in done]
    wall = max((r.t_end for r in results), default=t0) - t0
    failed = [r for r in results if not r.ok]
    by_step = Counter(r.step for r in failed)
    examples: dict[str, list[str]] = {}
    for r in failed:
        examples.setdefault(r.step, [])
        if len(examples[r.step]) < 3:
            examples[r.step].append(f"client {r.idx} ({mac_for(r.idx)}): {r.why}")
    retrans: Counter[str] = Counter()
    for r in results:
        retrans.update(r.retransmits)
    boot = [r.t_end - r.t_start for r in results if r.ok]
    steps = {
        s: percentile([r.steps[s] for r in results if s in r.steps], 50)
        for s in ("dhcp", "4011", "tftp", "ipxe-dhcp", "script", "kernel", "initrd")
    }
    steps_max = {
        s: max((r.steps[s] for r in results if s in r.steps), default=None)
        for s in ("dhcp", "4011", "tftp", "ipxe-dhcp", "script", "kernel", "initrd")
    }
    return {
        "clients": a.clients,
        "ok": a.clients - len(failed) - len(pending),
        "failed": len(failed) + len(pending),
        "unfinished": len(pending),
        "failed_by_step": dict(by_step),
        "examples": examples,
        "retransmits": dict(retrans),
        "wall_s": wall,
        "bytes": sum(r.bytes for r in results),
        "boot_p50_s": percentile(boot, 50),
        "boot_p99_s": percentile(boot, 99),
        "boot_max_s": max(boot, default=None),
        "step_p50_s": steps,
        "step_max_s": steps_max,
        "stray_replies": storm.stray,
        "ramp_s": a.ramp,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.storm")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--server", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--tftp-sha256", required=True)
    ap.add_argument("--kernel-size", type=int, required=True)
    ap.add_argument("--initrd-size", type=int, required=True)
    ap.add_argument(
        "--ramp", type=float, default=0.0, help="start clients uniformly over this many seconds"
    )
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(amain(a))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
