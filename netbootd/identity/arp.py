"""ARP verification of identity requesters: does the IP that asks answer with the enrolled MAC?

A per-boot token is bound to the IP that fetched the script, but anyone can fetch any MAC's
script. When netbootd shares the L2 segment with the requester it can check who owns that IP:
it broadcasts an ARP request (scapy) and the answers must come from the enrolled MAC and only
from it. `identity.verify_arp`:

  auto    check when the requester is on a directly connected segment (not behind a router,
          not loopback); a check that cannot be made there (no CAP_NET_RAW) refuses
  always  every delivery needs a matching answer; requesters behind a router are refused
  never   no check (tokens stay bound to MAC, IP, one use and a deadline)

The resolver (IP, interface, timeout -> the set of MACs that answered) is injected, so the
decision is tested without raw sockets; the real one is exercised in a network-namespace pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

from netbootd.errors import InvalidInput
from netbootd.model import ArpCheck, ArpResult, MacAddress

log = logging.getLogger("netbootd.arp")

Mode = Literal["auto", "always", "never"]
Resolver = Callable[[str, str, float], set[MacAddress]]  # blocking; OSError if it cannot ask
PROC_ROUTE = Path("/proc/net/route")
RTF_UP, RTF_GATEWAY = 0x1, 0x2


@dataclass(frozen=True)
class Route:
    iface: str
    network: IPv4Network
    gateway: IPv4Address | None
    metric: int = 0


def _le_ip(hexword: str) -> IPv4Address:
    return IPv4Address(int.from_bytes(bytes.fromhex(hexword), "little"))


def parse_routes(text: str) -> list[Route]:
    """The IPv4 main routing table in /proc/net/route's format (the current network namespace)."""
    routes = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            flags = int(f[3], 16)
            if not flags & RTF_UP:
                continue
            dest, mask = _le_ip(f[1]), _le_ip(f[7])
            net = IPv4Network(f"{dest}/{mask}", strict=False)
            gw = _le_ip(f[2]) if flags & RTF_GATEWAY else None
            routes.append(Route(f[0], net, gw, int(f[6])))
        except ValueError:
            continue
    return routes


def lookup(routes: Iterable[Route], ip: IPv4Address) -> Route | None:
    best = [r for r in routes if ip in r.network]
    if not best:
        return None
    return max(best, key=lambda r: (r.network.prefixlen, -r.metric))


def read_routes() -> list[Route]:
    try:
        return parse_routes(PROC_ROUTE.read_text())
    except OSError:
        return []


def scapy_resolver(ip: str, iface: str, timeout: float) -> set[MacAddress]:
    """Broadcast `who-has ip` on `iface`; the MACs that answered for it (all of them)."""
    # scapy takes ~1 s to import: only a server that asks an ARP question pays for it.
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import srp

    answered, _ = srp(
        Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=ip),
        iface=iface, timeout=timeout, multi=True, verbose=False,
    )
    return {MacAddress.parse(str(r[ARP].hwsrc)) for _, r in answered if r[ARP].psrc == ip}


class ArpVerifier:
    def __init__(
        self,
        mode: Mode,
        resolver: Resolver = scapy_resolver,
        routes: Callable[[], list[Route]] = read_routes,
        timeout: float = 0.5,
        attempts: int = 2,
    ) -> None:
        if mode not in ("auto", "always", "never"):
            raise InvalidInput(f"identity.verify_arp: {mode!r} is not auto, always or never")
        self.mode = mode
        self.resolver = resolver
        self.routes = routes
        self.timeout = timeout
        self.attempts = attempts

    def plan(self, peer_ip: str, local_ip: str | None) -> tuple[str | None, ArpCheck]:
        """(interface to ask on, or None) and the result if no question is asked."""
        required = self.mode == "always"
        if self.mode == "never":
            return None, ArpCheck(ArpResult.NOT_CHECKED, False, "verify_arp = never")
        try:
            ip = IPv4Address(peer_ip)
        except ValueError:
            return None, ArpCheck(ArpResult.NOT_CHECKED, required, f"{peer_ip} is not IPv4")
        if ip.is_loopback or peer_ip == local_ip:
            return None, ArpCheck(ArpResult.NOT_CHECKED, required, "the requester is this host")
        route = lookup(self.routes(), ip)
        if route is None or route.gateway is not None or route.iface == "lo":
            via = f"via {route.gateway}" if route and route.gateway else "no direct route"
            return None, ArpCheck(ArpResult.NOT_CHECKED, required,
                                  f"not on a shared segment ({via})")
        return route.iface, ArpCheck(ArpResult.NOT_CHECKED, True, f"on {route.iface}")

    async def check(self, peer_ip: str, mac: MacAddress, local_ip: str | None = None) -> ArpCheck:
        iface, unchecked = self.plan(peer_ip, local_ip)
        if iface is None:
            return unchecked
        loop = asyncio.get_running_loop()
        answered: set[MacAddress] = set()
        for _ in range(self.attempts):
            try:
                answered = await loop.run_in_executor(
                    None, self.resolver, peer_ip, iface, self.timeout
                )
            except OSError as e:
                return ArpCheck(
                    ArpResult.NOT_CHECKED, True,
                    f"cannot send ARP on {iface}: {e.strerror or e}; run as root or set "
                    "identity.verify_arp = never",
                )
            if answered:
                break
        if not answered:
            return ArpCheck(ArpResult.NO_ANSWER, True, f"asked on {iface}")
        if answered == {mac}:
            return ArpCheck(ArpResult.MATCH, True, f"{mac} on {iface}")
        return ArpCheck(
            ArpResult.MISMATCH, True, "answered by " + ", ".join(sorted(str(m) for m in answered))
        )
