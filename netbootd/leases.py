"""What the proxyDHCP responder saw of each enrolled MAC's own DHCP exchange, as values.

A boot is bound to the MAC *and* to the address that MAC's DHCP exchange used: the broadcast
DHCPREQUEST a PXE client (firmware or iPXE) sends to the site's DHCP server carries the address
it is taking (option 50, or ciaddr when it renews), and a PXE REQUEST on port 4011 comes from
that address. The DHCP adapter records what it sees here; the HTTP adapter looks the MAC up when
a script is fetched and hands the `Lease` to `policy.boot_binding`, which decides whether that
fetch counts as the MAC's boot.

In memory, bounded, with the clock passed in: a restart forgets it (a host that DHCP'd before
the restart boots explain-style once: no token, nothing counted or issued). Only enrolled MACs
are recorded, so a flood of random MACs cannot push real bindings out. An address claimed for
one MAC is remembered with the others claimed within the window: two addresses at once (a
forged REQUEST beside the real one) bind nothing.
"""

from __future__ import annotations

from collections import OrderedDict

from netbootd.model import Lease, MacAddress

MAX_ADDRESSES = 4  # per MAC, within the window


class Leases:
    def __init__(self, window: float = 300.0, max_macs: int = 65536) -> None:
        self.window = window
        self.max_macs = max_macs
        self._seen: OrderedDict[MacAddress, dict[str, float]] = OrderedDict()

    def observe(self, mac: MacAddress, ip: str, now: float) -> None:
        addrs = self._seen.pop(mac, None) or {}
        addrs = {a: t for a, t in addrs.items() if now - t <= self.window and a != ip}
        addrs[ip] = now
        if len(addrs) > MAX_ADDRESSES:
            for a in sorted(addrs, key=addrs.__getitem__)[: len(addrs) - MAX_ADDRESSES]:
                del addrs[a]
        self._seen[mac] = addrs  # most recently seen last
        while len(self._seen) > self.max_macs:
            self._seen.popitem(last=False)

    def lookup(self, mac: MacAddress, now: float) -> Lease | None:
        addrs = {a: t for a, t in (self._seen.get(mac) or {}).items() if now - t <= self.window}
        if not addrs:
            return None
        latest = max(addrs, key=addrs.__getitem__)
        return Lease(latest, addrs[latest], tuple(sorted(a for a in addrs if a != latest)))

    def __len__(self) -> int:
        return len(self._seen)
