"""proxyDHCP under floods (issue #13 finding 12): unknown MACs cost one log line each only up to
a budget, then one summary line an interval; a forged giaddr/ciaddr cannot aim a reply at
netbootd itself, loopback, multicast or a broadcast address.

In process: `DhcpServer.handle` is given datagrams directly and a socket that records what
would be sent; the store is a temporary SQLite one (tests/integration/test_dhcp_server.py's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from netbootd.codec import dhcp as codec
from netbootd.errors import DhcpDropped
from netbootd.netutil import parse_fib_trie
from netbootd.servers import dhcp as dhcp_server
from netbootd.servers.dhcp import Datagram, DhcpServer, reply_destination
from tests.integration.test_dhcp_server import ENROLLED, _loopback_cfg, _store, pxe_request

LOCAL = IPv4Address("127.0.0.1")
OWN = {IPv4Address("192.0.2.2"), IPv4Address("192.0.2.255")}  # an address and its broadcast


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def sendmsg(self, buffers: Any, anc: Any, flags: int, addr: tuple[str, int]) -> int:
        self.sent.append(addr)
        return sum(len(b) for b in buffers)


def _req(**kw: Any) -> codec.PxeRequest:
    return codec.parse(pxe_request(**kw)[1])


# -- where replies may go ---------------------------------------------------------------------


@pytest.mark.parametrize(("field", "addr", "why"), [
    ("giaddr", "127.0.0.1", "loopback"),
    ("giaddr", "127.5.5.5", "loopback"),
    ("giaddr", "224.0.0.1", "multicast"),
    ("giaddr", "239.255.255.250", "multicast"),
    ("giaddr", "255.255.255.255", "broadcast"),
    ("giaddr", "240.0.0.1", "reserved"),
    ("giaddr", "192.0.2.2", "this host's own"),
    ("giaddr", "192.0.2.255", "this host's own"),  # its subnet's broadcast
    ("ciaddr", "127.0.0.1", "loopback"),
    ("ciaddr", "224.0.0.251", "multicast"),
    ("ciaddr", "255.255.255.255", "broadcast"),
    ("ciaddr", "192.0.2.2", "this host's own"),
])
def test_forged_relay_and_client_addresses_are_refused(field: str, addr: str, why: str) -> None:
    req = _req(**{field: addr})
    with pytest.raises(DhcpDropped, match=f"is {why}$"):
        reply_destination(req, "dhcp", ("10.0.0.5", 68), OWN)
    if field == "giaddr":  # a relayed REQUEST on 4011 goes to the relay too
        with pytest.raises(DhcpDropped):
            reply_destination(_req(giaddr=addr, message_type=codec.REQUEST), "pxe",
                              ("10.0.0.5", 4011), OWN)


def test_real_relays_clients_and_sources_still_get_replies() -> None:
    peer = ("10.0.0.5", 68)
    assert reply_destination(_req(giaddr="10.1.1.1"), "dhcp", peer, OWN) == (
        IPv4Address("10.1.1.1"), 67)
    assert reply_destination(_req(ciaddr="10.0.0.5"), "dhcp", peer, OWN) == (
        IPv4Address("10.0.0.5"), 68)
    assert reply_destination(_req(), "dhcp", ("0.0.0.0", 68), OWN) == (
        IPv4Address("255.255.255.255"), 68)  # a client without an address: the broadcast
    req = _req(message_type=codec.REQUEST, ciaddr="127.0.0.1")
    # the source of a datagram is where it came from: loopback only arrives from this host
    assert reply_destination(req, "pxe", ("127.0.0.1", 4011), OWN) == (LOCAL, 4011)
    with pytest.raises(DhcpDropped, match="source address 0.0.0.0 is unspecified"):
        reply_destination(req, "pxe", ("0.0.0.0", 68), OWN)


def test_this_hosts_addresses_from_fib_trie() -> None:
    text = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
"""
    local, broadcast = parse_fib_trie(text)
    assert {str(a) for a in local} == {"127.0.0.0", "127.0.0.1", "192.0.2.2"}
    assert {str(a) for a in broadcast} == {"127.255.255.255", "192.0.2.255"}


def _an_own_address() -> str | None:
    """This host's source address toward the world (a UDP connect sends nothing), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") else addr


async def test_the_server_sends_nothing_to_a_forged_giaddr(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture,
                                                           ) -> None:
    caplog.set_level(logging.DEBUG, logger="netbootd.dhcp")
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    sock = RecordingSocket()
    own = _an_own_address()
    forged = ["127.0.0.1", "255.255.255.255", "224.0.0.1"] + ([own] if own else [])
    for giaddr in forged:
        server.handle("dhcp", sock, Datagram(pxe_request(giaddr=giaddr)[1], ("10.9.9.9", 67), 1,
                                             LOCAL))  # type: ignore[arg-type]
    assert sock.sent == []
    assert sum(server.drops.values()) == len(forged)
    server.handle("dhcp", sock, Datagram(pxe_request(giaddr="10.9.9.9")[1], ("10.9.9.9", 67), 1,
                                         LOCAL))  # type: ignore[arg-type]
    assert sock.sent == [("10.9.9.9", 67)]  # a real relay still gets its reply
    await server.stop()
    debug = [r.getMessage() for r in caplog.records if "not answered" in r.getMessage()]
    assert "reply refused: relay address (giaddr) 127.0.0.1 is loopback" in debug[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- unknown MACs -----------------------------------------------------------------------------


async def test_a_flood_of_random_unknown_macs_is_a_few_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netbootd.dhcp")
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    sock = RecordingSocket()
    for _ in range(2000):
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        server.handle("dhcp", sock, Datagram(pxe_request(mac=mac)[1], ("0.0.0.0", 68), 1,
                                             LOCAL))  # type: ignore[arg-type]
    for _ in range(3):  # an enrolled MAC is still answered and logged
        server.handle("dhcp", sock, Datagram(pxe_request(mac=ENROLLED)[1], ("0.0.0.0", 68), 1,
                                             LOCAL))  # type: ignore[arg-type]
    await server.stop()  # the interval's summary is written at the latest when serving stops
    lines = [r.getMessage() for r in caplog.records]
    unknown = [ln for ln in lines if "not enrolled" in ln]
    assert len(unknown) == dhcp_server.UNKNOWN_LOG_BUDGET
    summary = [ln for ln in lines if ln.startswith("proxyDHCP: ")]
    assert len(summary) == 1 and re.fullmatch(
        rf"proxyDHCP: 2,000 requests from 2,000 unknown MACs in the last \d+ s, ignored "
        rf"\({dhcp_server.UNKNOWN_LOG_BUDGET} logged above\)", summary[0]), summary
    assert len([ln for ln in lines if "offered" in ln]) == 3 and len(sock.sent) == 3


async def test_one_unknown_mac_retrying_is_one_line_and_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="netbootd.dhcp")
    monkeypatch.setattr(dhcp_server, "UNKNOWN_LOG_INTERVAL", 0.3)
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    await server.start()  # the summary comes from the loop when the interval ends
    try:
        for _ in range(5):
            server.handle("dhcp", RecordingSocket(), Datagram(  # type: ignore[arg-type]
                pxe_request(mac="52:54:00:bb:00:02")[1], ("0.0.0.0", 68), 1, LOCAL))
        await asyncio.sleep(0.6)
        lines = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()
                 or "not enrolled" in r.getMessage()]
        assert len(lines) == 2, lines
        assert lines[1].startswith("proxyDHCP: 5 requests from 1 unknown MAC in the last 0 s")
    finally:
        await server.stop()
