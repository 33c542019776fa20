"""Valid PXE clients during a DHCP junk flood (runs in the client namespace; the last stdout line
is JSON). Issue #13, finding 14: at 21,000 packets/s only 49% of valid clients were answered.

    python -m bench.dhcpflood --iface eth0 --hosts 10000 --flood-rate 20000 --valid-rate 1000 \
        --seconds 10

One thread sends pre-built Ethernet frames (AF_PACKET, as bench/dhcpload.py), paced at
flood-rate + valid-rate, interleaving:

- valid: firmware PXE DISCOVERs (OVMF's options, arch 7) from the enrolled MACs
  bench.common.mac_for(0..hosts-1) in turn, xid = base + k: matched with their replies;
- junk, in this mix (`MIX`, fractions of the flood):
    pxe-random-mac    30%  PXE DISCOVERs, a new MAC every packet (never enrolled)
    pxe-unknown-mac   20%  PXE DISCOVERs from a pool of 1,000 unenrolled MACs, in turn
    non-pxe           20%  DHCP DISCOVER/REQUEST of an OS client (vendor class MSFT 5.0 or
                           none), random MACs
    malformed         20%  truncated, option lengths past the end, random bytes, BOOTREPLYs,
                           no magic cookie, no option 53, odd option 93; random MACs
    enrolled-non-pxe   5%  DHCP DISCOVER/REQUEST without PXEClient from enrolled MACs (their OS)
    enrolled-malformed 5%  malformed packets carrying enrolled MACs (a spoofing flooder)
  all broadcast to port 67, xids outside the valid range.

Replies to junk (a server that answers any PXE client does) are drained and counted. Latency of
a valid reply = its kernel receive timestamp - the time just before its DISCOVER was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import struct
import sys
import time
from array import array

from bench.common import mac_for, percentile
from bench.packets import (
    BOOTP_OFFSET,
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
    set_xid,
)

SOL_PACKET, PACKET_STATISTICS = 263, 6
MIX = (
    ("pxe-random-mac", 0.30),
    ("pxe-unknown-mac", 0.20),
    ("non-pxe", 0.20),
    ("malformed", 0.20),
    ("enrolled-non-pxe", 0.05),
    ("enrolled-malformed", 0.05),
)
VALID_XID = 0x4E420000
JUNK_XID = 0x0BAD0000
ETH_SRC = slice(6, 12)
CHADDR = slice(BOOTP_OFFSET + 28, BOOTP_OFFSET + 34)


def _os_client(mac: bytes, msg: int, vendor: bytes | None) -> bytes:
    """What an operating system's DHCP client sends (no PXE options)."""
    p = bytearray(bootp(mac, 0, msg, 7))
    del p[240:]
    p += bytes((53, 1, msg, 61, 7, 1)) + mac + bytes((12, 6)) + b"host01"
    if vendor is not None:
        p += bytes((60, len(vendor))) + vendor
    if msg == REQUEST:
        p += bytes((50, 4, 10, 213, 9, 9))
    p += bytes((55, 4, 1, 3, 6, 15, 255))
    return bytes(p)


def _malformed(rng: random.Random, mac: bytes) -> list[bytes]:
    good = bootp(mac, 0, DISCOVER, 7)
    no53 = bytearray(good)
    no53[240:243] = bytes((12, 1, 120))  # option 53 -> a hostname
    odd93 = good.replace(bytes((93, 2, 0, 7)), bytes((93, 3, 0, 7, 0)))
    return [
        good[: rng.randrange(34, 240)],  # truncated inside the header
        good[:240] + bytes((53, 200, 1)),  # option length past the end
        mac_pad(rng.randbytes(300), mac),  # random bytes
        bytes([2]) + good[1:],  # a BOOTREPLY
        good[:236] + b"\0\0\0\0" + good[240:],  # no magic cookie
        bytes(no53),
        odd93,
        good[:250],  # cut inside the options
    ]


def mac_pad(data: bytes, mac: bytes) -> bytes:
    return data[:28] + mac + data[34:]


class Flood:
    def __init__(self, iface: str, hosts: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.macs = [mac_bytes(mac_for(i)) for i in range(hosts)]
        self.valid = [broadcast_frame(m, bootp(m, 0, DISCOVER, 7)) for m in self.macs]
        unknown = [bytes((2, 0x4E, 0x43, 0, i >> 8, i & 0xFF)) for i in range(1000)]
        rand_mac = bytes((0x0A, 0, 0, 0, 0, 0))
        self.templates: dict[str, list[bytearray]] = {
            "pxe-random-mac": [broadcast_frame(rand_mac, bootp(rand_mac, 0, DISCOVER, 7))],
            "pxe-unknown-mac": [broadcast_frame(m, bootp(m, 0, DISCOVER, 7)) for m in unknown],
            "non-pxe": [broadcast_frame(rand_mac, _os_client(rand_mac, t, v))
                        for t in (DISCOVER, REQUEST) for v in (b"MSFT 5.0", None)],
            "malformed": [broadcast_frame(rand_mac, p) for p in _malformed(rng, rand_mac)],
            "enrolled-non-pxe": [broadcast_frame(m, _os_client(m, t, b"udhcp 1.36.1"))
                                 for m in self.macs[:256] for t in (DISCOVER, REQUEST)],
            "enrolled-malformed": [broadcast_frame(m, p) for m in self.macs[:64]
                                   for p in _malformed(rng, m)],
        }
        names = [n for n, _ in MIX]
        self.schedule = rng.choices(names, weights=[w for _, w in MIX], k=1 << 16)
        self.next_of = dict.fromkeys(names, 0)
        self.random_mac = {"pxe-random-mac", "non-pxe", "malformed"}
        self.tx = send_socket(iface)
        self.rx = reply_socket(iface)
        self.sent_ns = array("q")
        self.replies: dict[int, int] = {}  # valid k -> receive ns
        self.junk_replies = 0
        self.bad = 0
        self.mac_counter = rng.randrange(1 << 32)

    def junk_frame(self, j: int) -> tuple[str, bytearray]:
        kind = self.schedule[j & 0xFFFF]
        frames = self.templates[kind]
        i = self.next_of[kind]
        self.next_of[kind] = i + 1
        frame = frames[i % len(frames)]
        if kind in self.random_mac and len(frame) >= CHADDR.stop:
            self.mac_counter += 1
            mac = b"\x0a" + (self.mac_counter & 0xFFFFFFFFFF).to_bytes(5, "big")
            frame[ETH_SRC] = mac
            frame[CHADDR] = mac
        return kind, frame

    def drain(self, budget: int = 1024) -> None:
        for _ in range(budget):
            r = recv_reply(self.rx)
            if r is None:
                return
            info = parse_reply(r[0])
            if info is None:
                self.bad += 1
                continue
            k = (int(info["xid"]) - VALID_XID) & 0xFFFFFFFF  # type: ignore[call-overload]
            if k >= len(self.sent_ns):
                self.junk_replies += 1
                continue
            if info["chaddr"] != self.macs[k % len(self.macs)] or info["msg"] != OFFER:
                self.bad += 1
                continue
            self.replies.setdefault(k, r[1])

    def run(self, flood_rate: float, valid_rate: float, seconds: float) -> dict[str, object]:
        self.cpu0 = time.process_time()
        rate = flood_rate + valid_rate
        every = max(1, round(rate / valid_rate)) if valid_rate > 0 else 0
        n = int(rate * seconds)
        sent: dict[str, int] = {"valid": 0}
        t0 = time.perf_counter()
        i = j = 0
        sock, sent_ns = self.tx, self.sent_ns
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            burst = 0
            while i < due and burst < 64:
                if every and i % every == 0:
                    k = len(sent_ns)
                    frame = self.valid[k % len(self.valid)]
                    set_xid(frame, (VALID_XID + k) & 0xFFFFFFFF)
                    sent_ns.append(time.time_ns())
                    sock.send(frame)
                    sent["valid"] += 1
                else:
                    kind, frame = self.junk_frame(j)
                    if len(frame) >= 14 + 20 + 8 + 8:
                        set_xid(frame, (JUNK_XID + j) & 0xFFFFFFFF)
                    sock.send(frame)
                    sent[kind] = sent.get(kind, 0) + 1
                    j += 1
                i += 1
                burst += 1
            self.drain(256)
            if i >= due and i < n:
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0.0002:
                    select.select([self.rx], [], [], wait)
        send_s = time.perf_counter() - t0
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end and len(self.replies) < len(sent_ns):
            select.select([self.rx], [], [], 0.05)
            self.drain()
        lat = [(self.replies[k] - sent_ns[k]) / 1e6 for k in self.replies]
        valid = len(sent_ns)
        return {
            "seconds": seconds,
            "flood_rate": flood_rate,
            "valid_rate": valid_rate,
            "sent": sent,
            "sent_total": i,
            "send_s": round(send_s, 3),
            "achieved_rate": i / send_s if send_s else 0.0,
            "valid_sent": valid,
            "valid_answered": len(self.replies),
            "answer_rate": len(self.replies) / valid if valid else None,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "junk_replies": self.junk_replies,
            "bad": self.bad,
            "generator_drops": self._rx_drops(),
            "generator_cpu_s": round(time.process_time() - self.cpu0, 3),
            "mix": dict(MIX),
        }

    def _rx_drops(self) -> int:
        try:
            _p, drops = struct.unpack("II", self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return -1
        return int(drops)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.dhcpflood")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--flood-rate", type=float, default=20000)
    ap.add_argument("--valid-rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    a = ap.parse_args(argv)
    f = Flood(a.iface, a.hosts, a.seed)
    f._rx_drops()  # reading resets it
    out = f.run(a.flood_rate, a.valid_rate, a.seconds)
    out["seed"] = a.seed
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
