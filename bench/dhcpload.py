"""proxyDHCP load generator (runs in the client namespace; the last stdout line is JSON).

    python -m bench.dhcpload --iface eth0 --hosts 10000 --latency-rate 1000 --latency-seconds 5 \
        --rates 500,1000,2000,... --step-seconds 2 [--loss 0.01] [--arch 7]

Sends firmware PXE DISCOVERs (pre-built Ethernet frames, AF_PACKET; only the xid is patched) for
MACs bench.common.mac_for(0..hosts-1) in turn, paced at a fixed rate, and matches replies by xid
(and chaddr). Latency = kernel receive timestamp of the reply (SO_TIMESTAMPNS) - the time just
before the send, so the generator's own scheduling does not inflate it.

First one step at --latency-rate (p50/p99), then the rising ladder until a step loses more than
--loss of its replies (a lossy step is retried once: the machine is shared), or the generator
itself cannot keep the rate (then the result says so). Every step is bounded in packets and time.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import struct
import sys
import time
from array import array

from bench.common import mac_for, percentile
from bench.packets import (
    DISCOVER,
    OFFER,
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


class Generator:
    def __init__(self, iface: str, hosts: int, arch: int) -> None:
        self.macs = [mac_bytes(mac_for(i)) for i in range(hosts)]
        self.frames = [broadcast_frame(m, bootp(m, 0, DISCOVER, arch)) for m in self.macs]
        self.tx = send_socket(iface)
        self.rx = reply_socket(iface)
        self.xid_base = 0x4E420000
        self.counter = 0  # packets sent in total; packet k has xid xid_base + k
        self.sent_ns = array("q")
        self.first_reply: dict[int, int] = {}  # k -> receive ns
        self.unmatched = 0
        self.bad = 0
        self.files: dict[str, int] = {}

    def _drain(self, budget: int = 1024) -> int:
        n = 0
        while n < budget:
            r = recv_reply(self.rx)
            if r is None:
                break
            n += 1
            info = parse_reply(r[0])
            if info is None:
                self.bad += 1
                continue
            k = (int(info["xid"]) - self.xid_base) & 0xFFFFFFFF  # type: ignore[call-overload]
            if k >= self.counter:
                self.unmatched += 1
                continue
            if info["chaddr"] != self.macs[k % len(self.macs)] or info["msg"] != OFFER:
                self.bad += 1
                continue
            if k not in self.first_reply:
                self.first_reply[k] = r[1]
                f = str(info["file"]) or "(none)"
                self.files[f] = self.files.get(f, 0) + 1
        return n

    def _rx_drops(self) -> int:
        """Replies the kernel dropped because OUR receive queue was full (PACKET_STATISTICS;
        reading resets it). Non-zero means the generator, not the server, lost them."""
        try:
            _packets, drops = struct.unpack(
                "II", self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            )
        except OSError:
            return -1
        return int(drops)

    def step(self, rate: float, seconds: float, drain: float = 0.5) -> dict[str, object]:
        n = max(1, int(rate * seconds))
        self._rx_drops()
        k0 = self.counter
        t0 = time.perf_counter()
        i = 0
        sock, frames, nmac, sent = self.tx, self.frames, len(self.macs), self.sent_ns
        while i < n:
            now = time.perf_counter()
            due = min(n, int((now - t0) * rate) + 1)
            burst = 0
            while i < due and burst < 64:
                k = self.counter
                frame = frames[k % nmac]
                set_xid(frame, (self.xid_base + k) & 0xFFFFFFFF)
                sent.append(time.time_ns())
                sock.send(frame)
                self.counter += 1
                i += 1
                burst += 1
            self._drain(256)
            if i >= due and i < n:
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0.0002:
                    select.select([self.rx], [], [], wait)
        send_s = time.perf_counter() - t0
        end = time.perf_counter() + drain
        while time.perf_counter() < end:
            if sum(1 for k in range(k0, self.counter) if k in self.first_reply) == n:
                break
            select.select([self.rx], [], [], 0.05)
            self._drain()
        lat = [
            (self.first_reply[k] - self.sent_ns[k]) / 1e6
            for k in range(k0, self.counter)
            if k in self.first_reply
        ]
        replies = len(lat)
        # The slowest replies and when (ms into the step) their DISCOVER was sent: one cluster
        # means a stall of the server, spread ones mean queueing.
        slow = sorted(
            (
                (self.first_reply[k] - self.sent_ns[k]) / 1e6,
                (self.sent_ns[k] - self.sent_ns[k0]) / 1e6,
            )
            for k in range(k0, self.counter)
            if k in self.first_reply
        )[-5:]
        last_rx = max(
            (self.first_reply[k] for k in range(k0, self.counter) if k in self.first_reply),
            default=0,
        )
        span = (last_rx - self.sent_ns[k0]) / 1e9 if replies else 0.0
        return {
            "rate": rate,
            "sent": n,
            "send_s": round(send_s, 4),
            "achieved_rate": n / send_s if send_s else 0.0,
            "replies": replies,
            "loss": 1 - replies / n,
            "reply_rate": replies / max(span, send_s) if replies else 0.0,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "slowest": [(round(a, 2), round(b, 1)) for a, b in reversed(slow)],
            "generator_drops": self._rx_drops(),
            "over_5ms": sum(1 for x in lat if x > 5.0),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.dhcpload")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--arch", type=int, default=7, choices=(0, 7))
    ap.add_argument("--latency-rate", type=float, default=1000)
    ap.add_argument("--latency-seconds", type=float, default=5)
    ap.add_argument(
        "--rates", default="500,1000,2000,3000,4000,6000,8000,12000,16000,24000,32000,48000,64000"
    )
    ap.add_argument("--step-seconds", type=float, default=2)
    ap.add_argument("--max-packets", type=int, default=100_000, help="per step")
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument(
        "--warmup", type=int, default=1000, help="DISCOVERs sent at 500/s before measuring"
    )
    a = ap.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
    g = Generator(a.iface, a.hosts, a.arch)
    warm = (
        g.step(min(a.latency_rate, 500), a.warmup / min(a.latency_rate, 500), drain=1.0)
        if a.warmup
        else None
    )
    time.sleep(0.3)
    latency = (
        g.step(a.latency_rate, a.latency_seconds, drain=1.0) if a.latency_seconds > 0 else None
    )
    ladder: list[dict[str, object]] = []
    best = 0.0
    limit = ""
    rates = [] if a.rates in ("", "none") else [float(r) for r in a.rates.split(",")]
    for rate in rates:
        time.sleep(0.3)
        seconds = min(a.step_seconds, a.max_packets / rate)
        s = g.step(rate, seconds)
        if float(s["loss"]) > a.loss:  # type: ignore[arg-type]
            time.sleep(1.0)
            s = g.step(rate, seconds)
            s["retried"] = True
        ladder.append(s)
        if float(s["achieved_rate"]) < 0.9 * rate:  # type: ignore[arg-type]
            limit = f"generator could not send faster than {float(s['achieved_rate']):.0f}/s"  # type: ignore[arg-type]
            break
        if int(s["generator_drops"]) > 0 and float(s["loss"]) > a.loss:  # type: ignore[call-overload,arg-type]
            limit = (
                f"generator's own receive queue dropped {s['generator_drops']} replies at "
                f"{rate:.0f}/s"
            )
            break
        if float(s["loss"]) > a.loss:  # type: ignore[arg-type]
            limit = f"lost {float(s['loss']):.1%} of replies at {rate:.0f}/s"  # type: ignore[arg-type]
            break
        best = rate
    else:
        limit = "no loss up to the highest rate tried" if rates else "latency step only"
    print(
        json.dumps(
            {
                "hosts": a.hosts,
                "warmup": warm,
                "latency": latency,
                "ladder": ladder,
                "max_rate_no_loss": best,
                "peak_reply_rate": max((float(s["reply_rate"]) for s in ladder), default=0.0),  # type: ignore[arg-type]
                "stopped": limit,
                "unmatched": g.unmatched,
                "bad": g.bad,
                "files": g.files,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
