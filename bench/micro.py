"""In-process cost of netbootd's proxyDHCP path, per datagram (prints JSON).

    python -m bench.micro [--hosts 10000] [--n 4000]

CPU time (time.process_time: what the process itself spent, so a busy machine's waits for a
CPU are not counted), median of 5 rounds of the mean per call. First the whole path through
real sockets on loopback -- datagrams queued on the server's socket, then `_readable` (batch
receive, pre-filter, handle, reply sent) -- for a valid enrolled client and for each kind of
junk of bench/dhcpflood.py; then each step of a valid DISCOVER's path alone, with the same log
format `netbootd serve` uses (written to a file); and the receive system calls compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import mac_for, median
from bench.dhcpflood import _malformed, _os_client
from bench.packets import DISCOVER, bootp


def _time(fn: Callable[[], object], n: int) -> float:
    """Median over 5 rounds of the mean CPU µs per call."""
    rounds = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            fn()
        rounds.append((time.process_time() - t) / n * 1e6)
    return round(median(rounds), 2)


def _through_sockets(srv: object, packets: Callable[[], bytes], rounds: int = 30) -> float:
    """CPU µs per datagram of DhcpServer._readable for datagrams queued 256 at a time."""
    sock = srv._socks["dhcp"]  # type: ignore[attr-defined]
    port = srv.ports["dhcp"]  # type: ignore[attr-defined]
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    cli.setblocking(False)
    batch = [packets() for _ in range(256)]
    per = []
    for _ in range(rounds):
        for p in batch:
            cli.sendto(p, ("127.0.0.1", port))
        t = time.process_time()
        while True:
            n = srv.counts.received  # type: ignore[attr-defined]
            srv._readable("dhcp", sock)  # type: ignore[attr-defined]
            if srv.counts.received == n:  # type: ignore[attr-defined]
                break
        per.append((time.process_time() - t) / len(batch) * 1e6)
    cli.close()
    return round(median(per), 2)


async def _main(a: argparse.Namespace) -> dict[str, object]:
    from netbootd import policy
    from netbootd.codec import dhcp as codec
    from netbootd.config import Config
    from netbootd.model import Artifact, MacAddress, Urls
    from netbootd.servers import dhcp as dhcp_server
    from netbootd.servers.udpbatch import Receiver
    from netbootd.store import Store

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="nbdbench-micro-") as d:
        state = Path(d)
        store = Store(state)
        store.add_generation("bench", Artifact("a" * 64, 1), [Artifact("b" * 64, 1)], "", "bench")
        for i in range(a.hosts):
            store.enroll(MacAddress.parse(mac_for(i)), "bench")
        handler = logging.FileHandler(state / "serve.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)

        cfg = Config.model_validate({
            "state_dir": str(state), "advertise_address": "127.0.0.1",
            "dhcp": {"listen": "127.0.0.1", "port": 0, "pxe_port": 0},
        })
        srv = dhcp_server.DhcpServer(cfg, store)
        await srv.start()
        loop = asyncio.get_running_loop()
        for s in srv._socks.values():
            loop.remove_reader(s.fileno())  # driven by hand below
        rng = random.Random(1)
        enrolled = [MacAddress.parse(mac_for(i)).packed for i in range(min(a.hosts, 256))]

        def unknown() -> bytes:
            return b"\x0a" + rng.randbytes(5)

        kinds: dict[str, Callable[[], bytes]] = {
            "valid DISCOVER (enrolled, answered + logged)":
                lambda: bootp(rng.choice(enrolled), 7, DISCOVER, 7),
            "junk: PXE DISCOVER, unknown MAC": lambda: bootp(unknown(), 1, DISCOVER, 7),
            "junk: OS client DISCOVER, unknown MAC":
                lambda: _os_client(unknown(), DISCOVER, b"MSFT 5.0"),
            "junk: malformed, unknown MAC": lambda: rng.choice(_malformed(rng, unknown())),
            "junk: OS client DISCOVER, enrolled MAC":
                lambda: _os_client(rng.choice(enrolled), DISCOVER, b"udhcp"),
            "junk: malformed, enrolled MAC":
                lambda: rng.choice(_malformed(rng, rng.choice(enrolled))),
        }
        for name, mk in kinds.items():
            out[f"_readable per datagram: {name}"] = _through_sockets(srv, mk)

        # the steps of a valid DISCOVER, alone
        server_ip = srv._server_ip(dhcp_server.Datagram(b"", ("0.0.0.0", 68), 1, None))
        assert server_ip is not None
        mac = MacAddress.parse(mac_for(a.hosts // 2))
        data = bootp(mac.packed, 0x1234, DISCOVER, 7)
        known = srv.known.refresh(time.monotonic())
        req = codec.parse(data)
        host = srv.known.host(mac)
        urls = Urls.for_address(server_ip, cfg.http.port)
        boot = policy.dhcp_boot(host, req.client, server_ip, urls, srv.files)
        assert boot is not None

        class NullSock:
            def sendmsg(self, *args: object) -> int:
                return 0

        dg = dhcp_server.Datagram(data, ("0.0.0.0", 68), 2, server_ip)
        n = a.n
        out["handle (parse .. log, no socket)"] = _time(
            lambda: srv.handle("dhcp", NullSock(), dg), n  # type: ignore[arg-type]
        )
        out["  codec.prefilter"] = _time(lambda: codec.prefilter(data, "dhcp", known), n)
        out["  codec.parse"] = _time(lambda: codec.parse(data), n)
        out["  KnownMacs.host (remembered row)"] = _time(lambda: srv.known.host(mac), n)
        out["  store.host (SQLite, what a changed database costs once per MAC)"] = _time(
            lambda: store.host(mac), n)
        out["  KnownMacs.refresh (once per batch: PRAGMA data_version)"] = _time(
            lambda: srv.known.refresh(time.monotonic()), n)
        out["  policy.dhcp_boot + Urls"] = _time(
            lambda: policy.dhcp_boot(host, req.client, server_ip,
                                     Urls.for_address(server_ip, cfg.http.port), srv.files), n)
        out["  codec.build_reply"] = _time(lambda: codec.build_reply(req, boot, server_ip, "dhcp"),
                                           n)
        log = logging.getLogger("netbootd.dhcp")
        out["  the INFO line per answer (to a file)"] = _time(
            lambda: log.info("mac=%s arch=%s%s %s (%s on %s -> %s:%d)", req.mac, req.arch, "",
                             boot.reason, "DHCPOFFER", "67", "255.255.255.255", 68), n)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        reply = codec.build_reply(req, boot, server_ip, "dhcp")
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        out["  sendmsg of the reply (loopback)"] = _time(
            lambda: tx.sendmsg([reply], [], 0, sink.getsockname()), n)
        sink.close()

        # receiving: recvmmsg (batches of 64) vs one recvmsg per datagram
        for label, batched in (("recvmmsg, batches of 64", True), ("recvmsg", False)):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            rx.setsockopt(socket.IPPROTO_IP, 8, 1)
            rx.bind(("127.0.0.1", 0))
            rx.setblocking(False)
            r = Receiver()
            r.batched = r.batched and batched
            per = []
            for _ in range(20):
                for _ in range(256):
                    tx.sendto(data, rx.getsockname())
                t = time.process_time()
                got = 0
                while b := r.receive(rx):
                    got += len(b)
                per.append((time.process_time() - t) / max(1, got) * 1e6)
            out[f"receive per datagram: {label}"] = round(median(per), 2)
            rx.close()
        tx.close()
        root.removeHandler(handler)
        await srv.stop()
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.micro")
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--n", type=int, default=4000)
    a = ap.parse_args(argv)
    logging.getLogger("scapy").setLevel(logging.WARNING)
    os.environ["NETBOOTD_DHCP_BPF"] = "0"  # the user-space path: junk must reach it
    print(json.dumps(asyncio.run(_main(a))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
