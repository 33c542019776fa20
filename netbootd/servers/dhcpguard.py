"""What the proxyDHCP adapter does about floods, beside its datagram path (servers/dhcp.py).

- **Counts** (`DhcpStats`): datagrams read, answered, and dropped by reason (the pre-filter's,
  codec.dhcp.PREFILTER_REASONS, then the adapter's own), plus what the kernel dropped: a full
  receive queue (SO_MEMINFO, per socket) and the kernel filter's drops. `FloodGuard.stats()` is
  what a metrics exporter (issue #15) reads.
- **One summary line** per SUMMARY_INTERVAL at most, for everything dropped in it; never a line
  per dropped datagram. "not enrolled" INFO lines (one per MAC per minute, servers/dhcp.py) are
  capped at UNKNOWN_LOG_BURST per interval for all MACs together; the summary counts the rest.
- **The unknown-MAC budget** (`admit_unknown`): up to UNKNOWN_SLOW_PER_SECOND datagrams a second
  from MACs the pre-filter does not know are handled in full anyway: a MAC enrolled since the
  set was read is answered at once, and a new machine gets its "not enrolled" line.
- **The kernel filter** (servers/bpfilter.py), when it can be loaded: its map follows the
  enrolled MACs, and `FloodSwitch` turns its dropping on when more than FLOOD_ON datagrams a
  second come from MACs that are not enrolled, off when fewer than FLOOD_OFF have for
  FLOOD_QUIET seconds (both logged). NETBOOTD_DHCP_BPF=0 in the environment leaves it out
  (the benchmark measures both ways).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections import Counter
from typing import Literal

from netbootd.codec.dhcp import PRE_UNKNOWN_MAC
from netbootd.servers.bpfilter import BpfError, KernelFilter

UNKNOWN_LOG_BURST = 20  # "not enrolled" INFO lines per SUMMARY_INTERVAL, all MACs together
UNKNOWN_SLOW_PER_SECOND = 20
SUMMARY_INTERVAL = 60.0  # seconds
FLOOD_ON = 1000.0  # datagrams/s from unknown MACs that turn the kernel's dropping on
FLOOD_OFF = 200.0  # ... and below which, for FLOOD_QUIET seconds, it goes off again
FLOOD_QUIET = 10.0
SWITCH_TICK = 0.25  # seconds between looks at the unknown-MAC rate
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
    """When the kernel filter should drop unknown MACs; pure (the clock and counts passed in).
    `update` once a second or more with the running total of unknown-MAC datagrams (those
    read and those the kernel dropped)."""

    def __init__(self) -> None:
        self.on = False
        self._last: tuple[float, int] | None = None
        self._quiet_since: float | None = None
        self.rate = 0.0

    def update(self, now: float, unknown_total: int) -> bool:
        if self._last is None or now <= self._last[0]:
            self._last = (now, unknown_total)
            return self.on
        t0, n0 = self._last
        self.rate = (unknown_total - n0) / (now - t0)
        self._last = (now, unknown_total)
        if not self.on:
            if self.rate > FLOOD_ON:
                self.on, self._quiet_since = True, None
        elif self.rate >= FLOOD_OFF:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = t0
        elif now - self._quiet_since >= FLOOD_QUIET:
            self.on = False
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
        self._tick = float("-inf")
        self._slow_used = 0
        self.unknown_lines = 0  # "not enrolled" INFO lines in this summary interval
        self.unknown_quiet = 0  # ... and those made DEBUG by UNKNOWN_LOG_BURST
        self._summarised: dict[str, int] = {}

    def load_kernel_filter(self) -> None:
        if os.environ.get("NETBOOTD_DHCP_BPF") == "0":
            self.log.info("proxyDHCP: kernel pre-filter off (NETBOOTD_DHCP_BPF=0)")
            return
        self.kernel, why = KernelFilter.create()
        if self.kernel is None:
            self.log.info("proxyDHCP: no kernel pre-filter (%s); floods are filtered in user"
                          " space only", why)

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
        """Before each batch of datagrams: the kernel map follows `known`; every SWITCH_TICK
        the flood switch is asked."""
        second = int(now)
        if second != self._second:
            self._second, self._slow_used = second, 0
        k = self.kernel
        if k is None or now - self._tick < SWITCH_TICK:
            return
        self._tick = now
        try:
            k.sync(known)
            dropped = k.dropped()
            on = self.switch.update(now, self.counts.dropped[PRE_UNKNOWN_MAC]
                                    + self._slow_unknown + dropped) and k.complete
            if on != k.dropping:
                k.set_dropping(on)
                if on:
                    self.log.warning(
                        "proxyDHCP: %.0f datagrams/s from MACs that are not enrolled: the kernel"
                        " drops them now (1 in %d is still read) until fewer than %.0f/s come"
                        " for %.0f s", self.switch.rate, 64, FLOOD_OFF, FLOOD_QUIET)
                else:
                    self.log.warning("proxyDHCP: the flood of unknown MACs is over (%.0f/s):"
                                     " the kernel no longer drops them", self.switch.rate)
        except BpfError as e:
            self.log.error("proxyDHCP: kernel pre-filter failed, filtering in user space: %s", e)
            self.close()

    _slow_unknown = 0  # unknown-MAC datagrams admitted to the full path, in total

    def admit_unknown(self) -> bool:
        """Whether a datagram from a MAC the pre-filter does not know is handled in full anyway
        (UNKNOWN_SLOW_PER_SECOND; the second is the one `batch` last saw)."""
        self._slow_used += 1
        if self._slow_used <= UNKNOWN_SLOW_PER_SECOND:
            self._slow_unknown += 1
            return True
        return False

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
                else ("dropping" if self.kernel.dropping else "watching")}

    def summarise(self, final: bool = False) -> None:
        """One INFO line for what was dropped since the last one (none if nothing was)."""
        now = dict(self.counts.dropped)
        kernel = self.stats()["kernel_dropped"]
        assert isinstance(kernel, dict)
        now.update(kernel)
        delta = {k: v - self._summarised.get(k, 0) for k, v in now.items()}
        delta = {k: v for k, v in delta.items() if v > 0}
        quiet, self.unknown_quiet, self.unknown_lines = self.unknown_quiet, 0, 0
        self._summarised = now
        if not delta and not quiet:
            return
        self.log.info(
            "proxyDHCP dropped %d datagrams%s: %s%s",
            sum(delta.values()),
            "" if final else f" in the last {SUMMARY_INTERVAL:.0f} s",
            ", ".join(f"{k} {v}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])),
            f" ({quiet} more 'not enrolled' lines at debug)" if quiet else "",
        )


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket (its receive queue was full): SO_MEMINFO."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    except OSError:
        return 0
    return int(struct.unpack_from("I", raw, 4 * SK_MEMINFO_DROPS)[0])
