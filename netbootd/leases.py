"""What the proxyDHCP responder saw of each enrolled MAC's own DHCP exchange, as values.

A boot is bound to the MAC *and* to the address that MAC's DHCP exchange used: the broadcast
DHCPREQUEST a PXE client (firmware or iPXE) sends to the site's DHCP server carries the address
it is taking (option 50, or ciaddr when it renews), and a PXE REQUEST on port 4011 comes from
that address. The DHCP adapter records what it sees here; the HTTP adapter looks the MAC up when
a script is fetched and hands the `Lease` to `policy.boot_binding`, which decides whether that
fetch counts as the MAC's boot.

In memory, bounded, with the clock passed in: a restart forgets it (a host that DHCP'd before
the restart boots explain-style once: no token, nothing counted or issued). Enrolled MACs are
recorded in one map; unknown MACs (only under unknown_policy = "discover", for their discovery
boot's token) in another, much smaller one (`max_unknown`), so a flood of random MACs pushes out
only other unknown MACs, never a real binding. An address claimed for
one MAC is remembered with the others claimed within the window: two addresses at once (a
forged REQUEST beside the real one) bind nothing.
"""

from __future__ import annotations

from collections import OrderedDict

from netbootd.model import Lease, MacAddress

MAX_ADDRESSES = 4  # per MAC, within the window


class Leases:
    def __init__(self, window: float = 300.0, max_macs: int = 65536,
                 max_unknown: int = 1024) -> None:
        self.window = window
        self.max_macs = max_macs
        self.max_unknown = max_unknown
        self._seen: OrderedDict[MacAddress, dict[str, float]] = OrderedDict()
        self._unknown: OrderedDict[MacAddress, dict[str, float]] = OrderedDict()

    def observe(self, mac: MacAddress, ip: str, now: float, known: bool = True) -> None:
        """Record `mac`'s exchange using `ip`; `known`: it is enrolled (else it goes to the
        small map of unknown MACs)."""
        seen, cap = (self._seen, self.max_macs) if known else (self._unknown, self.max_unknown)
        if known:
            self._unknown.pop(mac, None)
        addrs = seen.pop(mac, None) or {}
        addrs = {a: t for a, t in addrs.items() if now - t <= self.window and a != ip}
        addrs[ip] = now
        if len(addrs) > MAX_ADDRESSES:
            for a in sorted(addrs, key=addrs.__getitem__)[: len(addrs) - MAX_ADDRESSES]:
                del addrs[a]
        seen[mac] = addrs  # most recently seen last
        while len(seen) > cap:
            seen.popitem(last=False)

    def lookup(self, mac: MacAddress, now: float) -> Lease | None:
        found = self._seen.get(mac) or self._unknown.get(mac) or {}
        addrs = {a: t for a, t in found.items() if now - t <= self.window}
        if not addrs:
            return None
        latest = max(addrs, key=addrs.__getitem__)
        return Lease(latest, addrs[latest], tuple(sorted(a for a in addrs if a != latest)))

    def __len__(self) -> int:
        return len(self._seen)
