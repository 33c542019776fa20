"""ARP verification with an injected resolver and routing table (no raw sockets here; the real
scapy resolver is exercised in tests/integration/test_identity_netns.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.errors import InvalidInput
from netbootd.identity import arp
from netbootd.model import ArpResult, MacAddress

MAC = MacAddress.parse("52:54:00:12:34:56")
OTHER = MacAddress.parse("02:00:00:00:00:99")

# /proc/net/route of a host on 192.168.1.0/24 (eth0) with a default route via .1, a
# second LAN 10.20.0.0/16 on eth1 and a routed 172.16.0.0/12 via 10.20.0.1.
PROC_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
eth1\t0000140A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000010AC\t0100140A\t0003\t0\t0\t0\t0000F0FF\t0\t0\t0
eth2\t0000000B\t00000000\t0000\t0\t0\t0\t000000FF\t0\t0\t0
garbage line
"""


def test_parse_routes_and_lookup():
    routes = arp.parse_routes(PROC_ROUTE)
    assert [(r.iface, str(r.network), r.gateway) for r in routes] == [
        ("eth0", "0.0.0.0/0", IPv4Address("192.168.1.1")),
        ("eth0", "192.168.1.0/24", None),
        ("eth1", "10.20.0.0/16", None),
        ("eth1", "172.16.0.0/12", IPv4Address("10.20.0.1")),
    ]  # eth2's route is down (flags without RTF_UP)
    assert arp.lookup(routes, IPv4Address("192.168.1.77")).network == IPv4Network("192.168.1.0/24")
    assert arp.lookup(routes, IPv4Address("172.20.1.1")).gateway == IPv4Address("10.20.0.1")
    assert arp.lookup(routes, IPv4Address("8.8.8.8")).gateway == IPv4Address("192.168.1.1")
    assert arp.lookup([], IPv4Address("8.8.8.8")) is None


def _verifier(mode, answers=None, error=None):
    asked = []

    def resolver(ip, iface, timeout):
        asked.append((ip, iface))
        if error:
            raise error
        return set(answers or ())

    v = arp.ArpVerifier(mode, resolver, lambda: arp.parse_routes(PROC_ROUTE), timeout=0.01)
    return v, asked


async def test_match_mismatch_no_answer():
    v, asked = _verifier("auto", {MAC})
    r = await v.check("192.168.1.50", MAC, "192.168.1.10")
    assert r.result is ArpResult.MATCH and r.required and asked == [("192.168.1.50", "eth0")]
    v, _ = _verifier("auto", {OTHER})
    r = await v.check("10.20.3.4", MAC, "10.20.0.2")
    assert r.result is ArpResult.MISMATCH and str(OTHER) in r.note
    v, _ = _verifier("auto", {MAC, OTHER})  # two machines claim the IP: refused
    assert (await v.check("192.168.1.50", MAC)).result is ArpResult.MISMATCH
    v, asked = _verifier("auto", set())
    r = await v.check("192.168.1.50", MAC)
    assert r.result is ArpResult.NO_ANSWER and len(asked) == 2  # asked twice before giving up


async def test_not_on_a_shared_segment():
    for peer in ("172.16.5.5", "8.8.8.8", "127.0.0.1", "192.168.1.10", "::1"):
        v, asked = _verifier("auto", {MAC})
        r = await v.check(peer, MAC, "192.168.1.10")
        assert r.result is ArpResult.NOT_CHECKED and not r.required and asked == [], peer
        v, asked = _verifier("always", {MAC})
        r = await v.check(peer, MAC, "192.168.1.10")
        assert r.result is ArpResult.NOT_CHECKED and r.required and asked == [], peer


async def test_never_and_cannot_ask():
    v, asked = _verifier("never", {OTHER})
    r = await v.check("192.168.1.50", MAC)
    assert r.result is ArpResult.NOT_CHECKED and not r.required and asked == []
    v, _ = _verifier("auto", error=PermissionError(1, "Operation not permitted"))
    r = await v.check("192.168.1.50", MAC)
    assert r.result is ArpResult.NOT_CHECKED and r.required and "Operation not permitted" in r.note
    with pytest.raises(InvalidInput):
        arp.ArpVerifier("sometimes")  # type: ignore[arg-type]
