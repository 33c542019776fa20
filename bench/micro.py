"""In-process cost of netbootd's proxyDHCP hot path, per packet (no sockets, no other load).

    python -m bench.micro [--hosts 10000]       # prints JSON

Times each step `DhcpServer.handle` takes for a firmware DISCOVER from an enrolled MAC, with
the same logging format the daemon uses (written to a file), and, as the proposed fix, the same
reply built with `struct` instead of scapy -- checked to be byte-identical to
`codec.dhcp.build_reply`'s before its time is reported. Medians of 5 rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from bench.common import mac_for, median
from bench.packets import DISCOVER, bootp
from netbootd.model import Urls


def _time(fn: Callable[[], object], n: int) -> float:
    """Median over 5 rounds of the mean µs per call."""
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return round(median(rounds), 1)


def struct_reply(req: object, boot: object, server_ip: IPv4Address, port_kind: str) -> bytes:
    """codec.dhcp.build_reply without scapy: the same fields and options, packed by hand."""
    from netbootd.codec import dhcp as codec

    filename = boot.filename.encode("utf-8")  # type: ignore[attr-defined]
    in_file = len(filename) < codec.FILE_FIELD_LEN
    sname = b"" if "://" in boot.filename else str(boot.next_server).encode("ascii")  # type: ignore[attr-defined]
    opts = (
        bytearray([53, 1, codec.OFFER if port_kind == "dhcp" else codec.ACK, 54, 4])
        + server_ip.packed
    )
    vc = boot.vendor_class.encode("ascii")  # type: ignore[attr-defined]
    opts += bytes([60, len(vc)]) + vc
    if req.client_guid is not None:  # type: ignore[attr-defined]
        opts += bytes([97, len(req.client_guid)]) + req.client_guid  # type: ignore[attr-defined]
    vendor = codec._pxe_vendor_options(req, port_kind)  # type: ignore[arg-type]
    if vendor is not None:
        opts += bytes([43, len(vendor)]) + vendor
    if not in_file:
        for i in range(0, len(filename), 255):
            chunk = filename[i : i + 255]
            opts += bytes([67, len(chunk)]) + chunk
    opts.append(255)
    raw = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s4s",
        2,
        1,
        6,
        0,
        req.xid,
        0,
        req.flags,  # type: ignore[attr-defined]
        req.ciaddr.packed,
        bytes(4),
        boot.next_server.packed,
        req.giaddr.packed,  # type: ignore[attr-defined]
        req.mac.packed + bytes(10),
        sname,
        filename if in_file else b"",
        codec.MAGIC_COOKIE,  # type: ignore[attr-defined]
    ) + bytes(opts)
    return raw + bytes(max(0, codec.MIN_REPLY_LEN - len(raw)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.micro")
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args(argv)

    from netbootd import policy
    from netbootd.codec import dhcp as codec
    from netbootd.config import Config
    from netbootd.model import Artifact, MacAddress
    from netbootd.servers import dhcp as dhcp_server
    from netbootd.store import Store

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="nbdbench-micro-") as d:
        state = Path(d)
        store = Store(state)
        store.add_generation("bench", Artifact("a" * 64, 1), [Artifact("b" * 64, 1)], "", "bench")
        for i in range(a.hosts):
            store.enroll(MacAddress.parse(mac_for(i)), "bench")
        logf = state / "serve.log"
        handler = logging.FileHandler(logf)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.getLogger("scapy").setLevel(logging.WARNING)

        server_ip = IPv4Address("10.213.0.1")
        cfg = Config.model_validate({"state_dir": str(state), "advertise_address": str(server_ip)})
        srv = dhcp_server.DhcpServer(cfg, store)
        mac = MacAddress.parse(mac_for(a.hosts // 2))
        data = bootp(mac.packed, 0x1234, DISCOVER, 7)

        class NullSock:
            def sendmsg(self, *args: object) -> int:
                return 0

        sock = NullSock()
        dg = dhcp_server.Datagram(data, ("0.0.0.0", 68), 2, server_ip)
        req = codec.parse(data)
        host = store.host(mac)
        urls = Urls.for_address(server_ip, cfg.http.port)
        boot = policy.dhcp_boot(host, req.client, server_ip, urls, srv.files)
        assert boot is not None
        log = logging.getLogger("netbootd.dhcp")
        n = a.n
        out["handle (whole per-packet path, no socket)"] = _time(
            lambda: srv.handle("dhcp", sock, dg), n
        )  # type: ignore[arg-type]
        out["codec.parse"] = _time(lambda: codec.parse(data), n)
        out["store.host (SQLite, 10k hosts)"] = _time(lambda: store.host(mac), n)
        out["policy.dhcp_boot"] = _time(
            lambda: policy.dhcp_boot(host, req.client, server_ip, urls, srv.files), n
        )
        out["codec.build_reply (scapy)"] = _time(
            lambda: codec.build_reply(req, boot, server_ip, "dhcp"), n
        )
        out["one INFO log line (to a file)"] = _time(
            lambda: log.info(
                "mac=%s arch=%s%s %s (%s on %s -> %s:%d)",
                req.mac,
                req.arch,
                "",
                boot.reason,
                "DHCPOFFER",
                "67",
                "255.255.255.255",
                68,
            ),
            n,
        )
        from scapy.layers.dhcp import BOOTP

        out["  scapy BOOTP() header dissect inside parse"] = _time(lambda: BOOTP(data[:236]), n)
        ref = codec.build_reply(req, boot, server_ip, "dhcp")
        mine = struct_reply(req, boot, server_ip, "dhcp")
        out["proposed: reply built with struct"] = (
            _time(lambda: struct_reply(req, boot, server_ip, "dhcp"), n)
            if mine == ref
            else f"differs from build_reply ({len(mine)} vs {len(ref)} bytes)"
        )
        out["proposed: header fields with int.from_bytes"] = _time(
            lambda: (int.from_bytes(data[4:8], "big"), int.from_bytes(data[10:12], "big")), n
        )
        root.removeHandler(handler)
        store.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    _ = socket
    sys.exit(main())
