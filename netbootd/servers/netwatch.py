"""Following the serving interface: recreated (new ifindex), gone, back, re-addressed.

A socket bound with SO_BINDTODEVICE keeps the ifindex it was bound to; when the interface is
deleted and created again (a VM host's bridge, a USB NIC, `ip link del/add`), it never receives
another datagram, silently. So `serve --interface X` listens to the kernel's routing netlink
(RTMGRP_LINK, RTMGRP_IPV4_IFADDR: link and IPv4 address changes, in this network namespace)
and, on any change, reads X's ifindex and IPv4 address again and tells its subscribers what
changed (the proxyDHCP responder rebinds its sockets; every advertised URL is computed from the
interface's address at the time of the request, see lookup.server_address).

rtnetlink rather than pyudev: address changes are not udev events, and udev does not run in
the network namespaces netbootd may serve from; a netlink socket works in all of them and
needs no daemon. Where netlink cannot be opened, the interface is re-read every
`poll_interval` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.netutil import interface_ipv4

log = logging.getLogger("netbootd.netwatch")

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10


@dataclass(frozen=True)
class InterfaceState:
    name: str
    ifindex: int | None  # None: the interface does not exist (now)
    address: IPv4Address | None


def read_state(name: str) -> InterfaceState:
    try:
        ifindex: int | None = socket.if_nametoindex(name)
    except OSError:
        ifindex = None
    return InterfaceState(name, ifindex, interface_ipv4(name) if ifindex else None)


Listener = Callable[[InterfaceState, InterfaceState], None]


class InterfaceWatch:
    """Tells `listeners(old, new)` whenever `name`'s ifindex or IPv4 address changes."""

    def __init__(self, name: str, listeners: list[Listener], poll_interval: float = 5.0) -> None:
        self.name = name
        self.listeners = listeners
        self.poll_interval = poll_interval
        self.state = read_state(name)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll: asyncio.Task[None] | None = None
        self._pending = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                 socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        except OSError as e:
            log.warning("cannot watch interface %s through netlink (%s): re-reading it every %gs",
                        self.name, e.strerror or e, self.poll_interval)
            self._poll = asyncio.create_task(self._polling(), name="interface poll")
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    async def stop(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None

    def _readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        while True:  # the messages only say "something changed": drain, then look once
            try:
                self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ENOBUFS: we missed some; looking again covers them
                log.debug("netlink: %s", e)
                break
        if not self._pending:
            self._pending = True
            self._loop.call_soon(self.check)

    async def _polling(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.check()

    def check(self) -> None:
        """Read the interface again and tell the listeners if it changed."""
        self._pending = False
        new = read_state(self.name)
        old, self.state = self.state, new
        if new == old:
            return
        if new.ifindex is None:
            log.warning("interface %s is gone (was ifindex %s)", self.name, old.ifindex)
        elif old.ifindex != new.ifindex:
            log.warning("interface %s is back as ifindex %d, address %s", self.name,
                        new.ifindex, new.address or "none")
        else:
            log.warning("interface %s address changed: %s -> %s", self.name,
                        old.address or "none", new.address or "none")
        for listener in self.listeners:
            try:
                listener(old, new)
            except Exception:  # an adapter edge: one listener's bug must not stop the others
                log.exception("interface change listener failed")
