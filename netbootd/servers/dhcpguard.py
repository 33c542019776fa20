"""What the proxyDHCP adapter does about floods, beside its datagram path (servers/dhcp.py).

- **Counts** (`DhcpStats`): datagrams read, answered, and dropped by reason (the pre-filter's,
  codec.dhcp.PREFILTER_REASONS, then the adapter's own), plus what the kernel dropped: a full
  receive queue (SO_MEMINFO, per socket) and the kernel filter's drops. `FloodGuard.stats()` is
  what a metrics exporter (issue #15) reads.
- **One summary line** per SUMMARY_INTERVAL at most, for everything dropped in it; never a line
  per dropped datagram. ("not enrolled" lines have their own budget and summary, servers/dhcp.py.)
- **The unknown-MAC budget** (`admit_unknown`): up to UNKNOWN_SLOW_PER_SECOND datagrams a second
  from MACs the pre-filter does not know are handled in full anyway: a MAC enrolled since the
  set was read is answered at once, and a new machine gets its "not enrolled" line.
- **The kernel filter** (servers/bpfilter.py), when it can be loaded: its map follows the
  enrolled MACs, and it lets at most bpfilter.UNKNOWN_PER_SECOND datagrams a second from other
  MACs through. `FloodSwitch` watches its drop counter: a WARNING when it starts dropping, one
  when it has dropped nothing for FLOOD_QUIET seconds. NETBOOTD_DHCP_BPF=0 in the environment
  leaves it out (the benchmark measures both ways).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections import Counter
from typing import Literal

from netbootd.servers.bpfilter import BpfError, KernelFilter

UNKNOWN_SLOW_PER_SECOND = 20
SUMMARY_INTERVAL = 60.0  # seconds
FLOOD_QUIET = 10.0  # seconds without a kernel drop before "the flood is over"
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8  # Linux: the socket's drop counter (receive queue full)
KERNEL_FILTERED = "unknown-mac-in-kernel"
QUEUE_FULL = "kernel-queue-full"

PortKind = Literal["dhcp", "pxe"]


class DhcpStats:
    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self.dropped: Counter[str] = Counter()


class FloodSwitch:
    """Whether the kernel filter is in a flood (dropping), from its drop counter; pure (the
    clock and the running total passed in). On at the first drop, off after FLOOD_QUIET seconds
    without one. `rate`: drops per second between the last two updates."""

    def __init__(self) -> None:
        self.on = False
        self.rate = 0.0
        self._last: tuple[float, int] | None = None
        self._last_drop = float("-inf")

    def update(self, now: float, dropped_total: int) -> bool:
        if self._last is not None and now > self._last[0]:
            t0, n0 = self._last
            self.rate = (dropped_total - n0) / (now - t0)
            if dropped_total > n0:
                self.on, self._last_drop = True, now
            elif now - self._last_drop >= FLOOD_QUIET:
                self.on = False
        self._last = (now, dropped_total)
        return self.on


class FloodGuard:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.counts = DhcpStats()
        self.kernel: KernelFilter | None = None
        self.switch = FloodSwitch()
        self._socks: dict[PortKind, socket.socket] = {}
        self._closed_drops: Counter[str] = Counter()  # SO_MEMINFO drops of closed sockets
        self._second = -1
        self._slow_used = 0
        self._summarised: dict[str, int] = {}

    def load_kernel_filter(self, known: frozenset[bytes]) -> None:
        """Load the filter with the enrolled MACs in its map (before it is attached: a MAC not
        yet in the map would be counted against the budget of unknown ones)."""
        if os.environ.get("NETBOOTD_DHCP_BPF") == "0":
            self.log.info("proxyDHCP: kernel pre-filter off (NETBOOTD_DHCP_BPF=0)")
            return
        self.kernel, why = KernelFilter.create()
        if self.kernel is None:
            self.log.info("proxyDHCP: no kernel pre-filter (%s); floods are filtered in user"
                          " space only", why)
            return
        try:
            self.kernel.sync(known)
        except BpfError as e:
            self.log.info("proxyDHCP: no kernel pre-filter (%s)", e)
            self.close()

    def attach(self, kind: PortKind, sock: socket.socket) -> None:
        if self.kernel is not None:
            try:
                self.kernel.attach(sock)
            except OSError as e:
                self.log.info("proxyDHCP: cannot attach the kernel pre-filter: %s", e)
                self.kernel.close()
                self.kernel = None
        self._socks[kind] = sock

    def detach(self, kind: PortKind) -> None:
        sock = self._socks.pop(kind, None)
        if sock is not None:
            self._closed_drops[QUEUE_FULL] += socket_drops(sock)  # with the filter's

    def close(self) -> None:
        if self.kernel is not None:
            self._closed_drops[KERNEL_FILTERED] += self.kernel.dropped()
            self.kernel.close()
            self.kernel = None

    def batch(self, now: float, known: frozenset[bytes]) -> None:
        """Before each batch of datagrams: the kernel map follows `known` (a no-op unless the
        set changed); once a second the kernel's drop counter is looked at."""
        k = self.kernel
        if k is not None:
            try:
                k.sync(known)
            except BpfError as e:
                self.log.error("proxyDHCP: kernel pre-filter failed, filtering in user space:"
                               " %s", e)
                self.close()
                k = None
        second = int(now)
        if second == self._second:
            return
        self._second, self._slow_used = second, 0
        if k is None:
            return
        was = self.switch.on
        with contextlib.suppress(BpfError):
            if self.switch.update(now, k.dropped()) != was:
                if self.switch.on:
                    self.log.warning(
                        "proxyDHCP: more than %d datagrams/s from MACs that are not enrolled:"
                        " the kernel drops the rest", k.per_second)
                else:
                    self.log.warning("proxyDHCP: the flood from MACs that are not enrolled is"
                                     " over (nothing dropped for %.0f s)", FLOOD_QUIET)

    def admit_unknown(self) -> bool:
        """Whether a datagram from a MAC the pre-filter does not know is handled in full anyway
        (UNKNOWN_SLOW_PER_SECOND; the second is the one `batch` last saw)."""
        self._slow_used += 1
        return self._slow_used <= UNKNOWN_SLOW_PER_SECOND

    def stats(self) -> dict[str, object]:
        """Datagrams read, answered and dropped by reason since start, with the kernel's."""
        c = self.counts
        kernel: Counter[str] = Counter(self._closed_drops)
        for sock in self._socks.values():
            kernel[QUEUE_FULL] += socket_drops(sock)
        if self.kernel is not None:
            with contextlib.suppress(BpfError):
                kernel[KERNEL_FILTERED] += self.kernel.dropped()
        kernel[QUEUE_FULL] -= kernel[KERNEL_FILTERED]  # a socket's drop count has both
        return {"received": c.received, "answered": c.answered, "dropped": dict(c.dropped),
                "kernel_dropped": dict(kernel),
                "kernel_filter": "off" if self.kernel is None
                else ("dropping" if self.switch.on else "watching")}

    def summarise(self, final: bool = False) -> None:
        """One INFO line for what was dropped since the last one (none if nothing was)."""
        now = dict(self.counts.dropped)
        kernel = self.stats()["kernel_dropped"]
        assert isinstance(kernel, dict)
        now.update(kernel)
        delta = {k: v - self._summarised.get(k, 0) for k, v in now.items()}
        delta = {k: v for k, v in delta.items() if v > 0}
        self._summarised = now
        if not delta:
            return
        self.log.info(
            "proxyDHCP dropped %d datagrams%s: %s",
            sum(delta.values()),
            "" if final else f" in the last {SUMMARY_INTERVAL:.0f} s",
            ", ".join(f"{k} {v}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])),
        )


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket (its receive queue was full): SO_MEMINFO."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    except OSError:
        return 0
    return int(struct.unpack_from("I", raw, 4 * SK_MEMINFO_DROPS)[0])
