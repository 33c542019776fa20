"""The proxyDHCP adapter: UDP 67 (DISCOVER -> OFFER) and UDP 4011 (REQUEST -> ACK).

Thin: for each datagram, `codec.dhcp.parse` -> `store.host(mac)` -> `policy.dhcp_boot` ->
`codec.dhcp.build_reply` -> send. Nothing the network sends stops the loop: a packet that is not a
PXE request is logged at debug and dropped, an unexpected exception is logged with its traceback
and the next datagram is served. A store failure is an error in the log, never "unknown host".

Sockets are read in batches (recvmmsg, servers/udpbatch.py, with IP_PKTINFO) rather than through an
asyncio transport: the adapter needs the interface and local address each datagram arrived on, to
know which address to advertise and to send broadcast replies out of that same interface.

Under a flood (#13, finding 14) valid enrolled clients come first: `codec.dhcp.prefilter` looks
at each datagram's raw bytes before anything is decoded; its drops are only counted (`stats()`,
one summary line per interval; servers/dhcpguard.py); an eBPF filter caps unenrolled MACs in
the kernel (servers/bpfilter.py); lookups are made once per batch (lookup.KnownMacs).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd import lookup, netutil, policy, stats
from netbootd.codec import dhcp as codec
from netbootd.config import Config
from netbootd.errors import DhcpDropped, NetbootdError, StoreError
from netbootd.ipxe.served import ServedIpxe
from netbootd.leases import Leases
from netbootd.lookup import KnownMacs
from netbootd.model import BootFileNames, Urls
from netbootd.ratelimit import LogBudget, Summary, Tally
from netbootd.servers.dhcpguard import SUMMARY_INTERVAL, FloodGuard
from netbootd.servers.netwatch import InterfaceState
from netbootd.servers.udpbatch import IP_PKTINFO, Receiver, grow_receive_buffer
from netbootd.store import Store

_PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
BROADCAST = IPv4Address("255.255.255.255")
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
RECV_SIZE = 4096
# Unenrolled MACs: one INFO line per MAC an interval, for at most UNKNOWN_LOG_BUDGET of them,
# then one summary line; refused reply destinations: a few debug lines, then a summary.
UNKNOWN_LOG_INTERVAL = 60.0
UNKNOWN_LOG_BUDGET = 16
OWN_ADDRESSES_TTL = 5.0  # seconds this host's address list is cached
BATCHES_PER_WAKEUP = 4  # receive calls per readable event before other work runs again


@dataclass(frozen=True)
class Datagram:
    """One received datagram and where it came from / arrived."""

    data: bytes
    peer: tuple[str, int]
    ifindex: int  # 0 if unknown
    local: IPv4Address | None  # the local address it arrived on (IP_PKTINFO spec_dst)


def reply_destination(
    req: codec.PxeRequest, port_kind: codec.PortKind, peer: tuple[str, int],
    own: Container[IPv4Address] = (),
) -> tuple[IPv4Address, int]:
    """Where the reply goes: relay, then boot-server peer, then client address, then broadcast.

    giaddr and ciaddr are whatever the sender wrote, so a relay or client address that no relay
    or client can have -- 0.0.0.0, loopback, multicast, reserved, the limited broadcast, or one
    of `own` (this host's addresses and its subnets' broadcast addresses) -- raises DhcpDropped
    rather than aim the reply at netbootd itself, a local service or a whole segment. The peer
    is where the datagram came from (the kernel drops loopback and local sources arriving from
    outside), so only 0.0.0.0, multicast and broadcast are refused there."""
    if req.relayed:  # the relay agent forwards it to the client
        dest, what = (req.giaddr, DHCP_SERVER_PORT), "relay address (giaddr)"
    elif port_kind == "pxe":  # the client has an address: answer where it asked
        dest, what = (IPv4Address(peer[0]), peer[1]), "source address"
    elif req.ciaddr != IPv4Address(0):
        dest, what = (req.ciaddr, DHCP_CLIENT_PORT), "client address (ciaddr)"
    else:
        return BROADCAST, DHCP_CLIENT_PORT
    addr = dest[0]
    why = ("unspecified" if addr.is_unspecified else "multicast" if addr.is_multicast
           else "broadcast" if addr == BROADCAST else None)
    if why is None and what != "source address":
        why = ("loopback" if addr.is_loopback else "reserved" if addr.is_reserved
               else "this host's own" if addr in own else None)
    if why is not None:
        raise DhcpDropped(f"reply refused: {what} {addr} is {why}")
    return dest


class DhcpServer:
    """proxyDHCP on `cfg.dhcp.port` (67) and `cfg.dhcp.pxe_port` (4011)."""

    def __init__(self, cfg: Config, store: Store, leases: Leases | None = None,
                 log: logging.Logger | None = None, ipxe: ServedIpxe | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.leases = leases if leases is not None else Leases(cfg.security.dhcp_window)
        self.known = KnownMacs(store)
        # "discover": unknown MACs answered within the unknown-MAC budget (dhcpguard)
        self.discover = cfg.dhcp.unknown_policy == "discover"
        self.log = log or logging.getLogger("netbootd.dhcp")
        self.files = BootFileNames(**cfg.boot_files.model_dump())
        self.ipxe = ipxe or ServedIpxe(cfg.state_dir, lambda: lookup.ipxe_chain_target(cfg))
        self._socks: dict[codec.PortKind, socket.socket] = {}
        self._ports: dict[codec.PortKind, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.drops: Counter[str] = Counter()  # replies not sent, by reason (reply_destination)
        self.last_refusal = ""
        self._unknown = Summary(LogBudget(UNKNOWN_LOG_INTERVAL, UNKNOWN_LOG_BUDGET),
                                time.monotonic, self._unknown_line, self._schedule)
        self._refusals = Summary(LogBudget(UNKNOWN_LOG_INTERVAL, 10), time.monotonic,
                                 self._refusals_line, self._schedule)
        self._own_cache: tuple[float, frozenset[IPv4Address]] = (float("-inf"), frozenset())
        self.guard = FloodGuard(self.log)
        self.counts = self.guard.counts
        self._rx = Receiver(size=RECV_SIZE)
        self._server_ips: dict[IPv4Address | None, IPv4Address | None] = {}  # this batch's
        self._urls: dict[IPv4Address, tuple[Urls, Urls | None]] = {}  # ... their http(s) URLs
        self._summary: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ports(self) -> dict[codec.PortKind, int]:
        """The ports actually bound ({"dhcp": 67, "pxe": 4011}); useful when configured as 0."""
        return {kind: s.getsockname()[1] for kind, s in self._socks.items()}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        listen = str(self.cfg.dhcp.listen)
        if listen != "0.0.0.0":
            self.log.warning(
                "dhcp.listen=%s: broadcast DHCPDISCOVERs are not delivered to a socket bound to a"
                " unicast address; to limit proxyDHCP to one network set `interface` instead",
                listen,
            )
        ports: dict[codec.PortKind, int] = {"dhcp": self.cfg.dhcp.port,
                                             "pxe": self.cfg.dhcp.pxe_port}
        try:
            self.guard.load_kernel_filter(self.known.refresh(time.monotonic()))
        except StoreError as e:  # then the first batch reports it again
            self.log.error("proxyDHCP: state database error reading the enrolled MACs: %s", e)
        self._open(ports)
        self._ports = self.ports  # what a rebind binds again (ports configured as 0 included)
        self._summary = self._loop.call_later(SUMMARY_INTERVAL, self._summarise)
        self.log.info(
            "proxyDHCP listening on %s ports %s%s",
            listen,
            "+".join(str(p) for p in self.ports.values()),
            f" (interface {self.cfg.interface})" if self.cfg.interface else "",
        )

    def _open(self, ports: dict[codec.PortKind, int]) -> None:
        assert self._loop is not None
        listen = str(self.cfg.dhcp.listen)
        try:
            for kind, port in ports.items():
                self._socks[kind] = self._bind(listen, port)
        except BaseException:
            self._close()
            raise
        for kind, sock in self._socks.items():
            self.guard.attach(kind, sock)
            self._loop.add_reader(sock.fileno(), self._readable, kind, sock)

    def interface_changed(self, old: InterfaceState, new: InterfaceState) -> None:
        """netwatch: the serving interface was recreated (new ifindex), went or came back. A
        socket bound to a device keeps the old ifindex and would never hear another request:
        bind again. An address change needs no new socket (replies advertise the address read
        at each request), but this host's address list is read again at the next request, so a
        reply cannot be aimed at a new own address for OWN_ADDRESSES_TTL."""
        self._own_cache = (float("-inf"), frozenset())
        if old.ifindex == new.ifindex and self._socks:
            return
        self._close()
        if new.ifindex is None:
            self.log.warning("proxyDHCP paused: interface %s is gone", new.name)
            return
        try:
            self._open(self._ports)
        except NetbootdError as e:
            self.log.error("proxyDHCP cannot listen again on %s: %s", new.name, e)
            return
        self.log.warning("proxyDHCP listening again on %s (ifindex %d)", new.name, new.ifindex)

    async def stop(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        self.guard.summarise(final=True)
        self._close()
        self.guard.close()
        for summary in (self._unknown, self._refusals):  # what the last interval counted
            summary.flush(force=True)

    def _summarise(self) -> None:
        self.guard.summarise()
        if self._loop is not None:
            self._summary = self._loop.call_later(SUMMARY_INTERVAL, self._summarise)

    def _close(self) -> None:
        for kind, sock in self._socks.items():
            self.guard.detach(kind)
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    def _bind(self, listen: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            grow_receive_buffer(sock)
            if self.cfg.interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.cfg.interface.encode()
                )
            sock.bind((listen, port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            hint = ""
            if e.errno in (errno.EACCES, errno.EPERM):
                hint = " (proxyDHCP needs root or CAP_NET_BIND_SERVICE + CAP_NET_RAW)"
            elif e.errno == errno.EADDRINUSE:
                hint = " (is another DHCP/proxyDHCP server running?)"
            elif e.errno == errno.ENODEV:
                hint = f" (no interface named {self.cfg.interface!r})"
            raise NetbootdError(
                f"cannot listen for proxyDHCP on {listen}:{port}: {e.strerror}{hint}"
            ) from None
        return sock

    # -- the datagram path ----------------------------------------------------------------

    def _readable(self, kind: codec.PortKind, sock: socket.socket) -> None:
        now = time.monotonic()
        try:
            known = self.known.refresh(now)
        except StoreError as e:
            self.log.error("proxyDHCP: state database error reading the enrolled MACs: %s", e)
            known = self.known.packed  # the last set read; each host lookup reports again
        self._server_ips.clear()
        self._urls.clear()
        self.guard.batch(now, known)
        rx, counts, prefilter = self._rx, self.counts, codec.prefilter
        admit = self.guard.admit_unknown
        for _ in range(BATCHES_PER_WAKEUP):  # drain, but let other work run under a flood
            try:
                batch = rx.receive(sock)
            except OSError as e:  # e.g. ICMP errors surfacing on the socket: keep serving
                self.log.debug("proxyDHCP %s socket: %s", kind, e)
                return
            counts.received += len(batch)
            for i, data in enumerate(batch):
                why = prefilter(data, kind, known)
                if why is not None and not (why == codec.PRE_UNKNOWN_MAC and admit()):
                    counts.dropped[why] += 1
                    continue
                peer, ifindex, local = rx.meta(i)
                try:
                    self.handle(kind, sock, Datagram(data, peer, ifindex, local))
                except Exception:
                    self.log.exception("proxyDHCP: unexpected error handling a packet from %s",
                                       peer)
            if len(batch) < rx.vlen:
                return

    def stats(self) -> dict[str, object]:
        """Datagrams read, answered and dropped by reason since start (servers/dhcpguard.py)."""
        return self.guard.stats()

    def handle(self, kind: codec.PortKind, sock: socket.socket, dg: Datagram) -> None:
        """One datagram that passed the pre-filter (or any, in tests and bench/micro.py)."""
        counts = self.counts
        try:
            req = codec.parse(dg.data)
        except DhcpDropped as e:
            counts.dropped["undecodable"] += 1
            self.log.debug("peer=%s:%d port=%s dropped: %s", *dg.peer, kind, e.reason)
            return
        stats.inc("dhcp_requests", kind, str(req.arch))
        self._observe(kind, req, dg)
        why = codec.ignore_reason(req, kind)
        if why is not None:
            counts.dropped["wrong-port"] += 1
            self.log.debug("peer=%s:%d mac=%s ignored: %s", *dg.peer, req.mac, why)
            return
        server_ip = self._server_ip(dg)
        if server_ip is None:
            counts.dropped["no-address"] += 1
            self.log.error("mac=%s: cannot tell which address to advertise (no advertise_address,"
                           " no IPv4 address on %s); not answering", req.mac,
                           self.cfg.interface or "the receiving interface")
            return
        try:
            host = self.known.host(req.mac)
            # the host's boot chain (transport, HTTP-boot payload); signing is not asked here
            chain = self.known.boot_chain(self.cfg, host) if host else None
        except StoreError as e:
            counts.dropped["store-error"] += 1
            self.log.error("mac=%s: state database error, not answering: %s", req.mac, e)
            return
        both = self._urls.get(server_ip)
        if both is None:
            https = (Urls.for_https(server_ip, self.cfg.https.port) if self.cfg.https.enabled
                     else None)
            both = self._urls[server_ip] = (Urls.for_address(server_ip, self.cfg.http.port), https)
        urls, https = both
        files = self.ipxe.boot_files(self.files)
        boot = policy.dhcp_boot(host, req.client, server_ip, urls, files, chain, https,
                                self.discover)
        if boot is None:
            if host is None:
                counts.dropped["unenrolled"] += 1
                self._log_unknown(req)
            else:
                counts.dropped["no-boot-file"] += 1
                self.log.info(
                    "mac=%s arch=%s (option 93 = %d): no boot file for this arch: ignored",
                    req.mac,
                    req.arch,
                    req.arch_code,
                )
            return
        try:
            dest = reply_destination(req, kind, dg.peer, self._own_addresses(dg, server_ip))
        except DhcpDropped as e:
            counts.dropped["refused-destination"] += 1
            self._refused_destination(req, f"{dg.peer[0]}:{dg.peer[1]}", e)
            return
        reply = codec.build_reply(req, boot, server_ip, kind)
        to = (str(dest[0]), dest[1])
        self._send(sock, reply, to, dg.ifindex if dest[0] == BROADCAST else 0)
        counts.answered += 1
        stats.inc("dhcp_replies", kind, str(req.arch))
        self.log.info(
            "mac=%s arch=%s%s %s (%s on %s -> %s:%d)",
            req.mac,
            req.arch,
            (" ipxe+https" if req.ipxe_https else " ipxe") if req.ipxe else "",
            boot.reason,
            "DHCPOFFER" if kind == "dhcp" else "DHCPACK",
            "67" if kind == "dhcp" else "4011",
            to[0],
            to[1],
        )

    def _observe(self, kind: codec.PortKind, req: codec.PxeRequest, dg: Datagram) -> None:
        """Remember the address an enrolled MAC's own DHCP exchange uses (leases.py): the
        REQUEST it broadcasts to the site's server on 67 says (option 50 / ciaddr), and a
        REQUEST on 4011 comes from it."""
        addr = req.exchange_address
        if kind == "pxe" and req.message_type == codec.REQUEST and not req.relayed:
            addr = IPv4Address(dg.peer[0])
        if addr is None or addr.is_unspecified or addr.is_loopback or addr.is_multicast:
            return
        try:
            known = self.known.host(req.mac) is not None
        except StoreError as e:
            self.log.error("mac=%s: state database error: %s", req.mac, e)
            return
        if known or self.discover:
            self.leases.observe(req.mac, str(addr), time.time(), known)
            self.log.debug("mac=%s DHCP exchange uses %s (%s on %s)", req.mac, addr,
                           req.message_name, kind)

    def _server_ip(self, dg: Datagram) -> IPv4Address | None:
        """The address to advertise, read once per batch per local address (with `interface`
        set: the interface's, an ioctl of ~9 us)."""
        try:
            return self._server_ips[dg.local]
        except KeyError:
            pass
        local = str(dg.local) if dg.local is not None else None
        server = lookup.server_address(self.cfg, local)
        ip = IPv4Address(server) if server is not None else None
        self._server_ips[dg.local] = ip
        return ip

    def _send(
        self, sock: socket.socket, reply: bytes, dest: tuple[str, int], ifindex: int
    ) -> None:
        """ifindex: the interface a broadcast leaves through (0: routing decides)."""
        anc = []
        if ifindex:
            # A limited broadcast would otherwise leave through the default route's interface.
            anc = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(ifindex, bytes(4), bytes(4)))]
        try:
            sock.sendmsg([reply], anc, 0, dest)
        except OSError as e:
            self.log.warning("proxyDHCP: cannot send reply to %s:%d: %s", dest[0], dest[1], e)

    def _schedule(self, delay: float, callback: Callable[[], None]) -> object:
        return self._loop.call_later(delay, callback) if self._loop is not None else None

    def _log_unknown(self, req: codec.PxeRequest) -> None:
        """INFO once an interval per MAC for the first UNKNOWN_LOG_BUDGET MACs, DEBUG for the
        rest, and a summary line for the interval: a flood of random MACs stays one line."""
        if not self._unknown.admit(str(req.mac)):
            self.log.debug("mac=%s arch=%s not enrolled: ignored", req.mac, req.arch)
            return
        self.log.info(
            "mac=%s arch=%s not enrolled: ignored (enroll it with `netbootd enroll %s ROLE`)",
            req.mac,
            req.arch,
            req.mac,
        )

    def _unknown_line(self, t: Tally) -> None:
        self.log.info("proxyDHCP: %s requests from %s in the last %.0f s, ignored (%d "
                      "logged above)", f"{t.events:,}", t.key_count("unknown MAC", "unknown MACs"),
                      t.seconds, t.logged)

    def _own_addresses(self, dg: Datagram, server_ip: IPv4Address) -> _OwnAddresses:
        return _OwnAddresses(self, (server_ip, dg.local))

    def local_addresses(self) -> frozenset[IPv4Address]:
        """This host's addresses and broadcast addresses, re-read every OWN_ADDRESSES_TTL."""
        now = time.monotonic()
        stamp, addrs = self._own_cache
        if now - stamp > OWN_ADDRESSES_TTL:
            addrs = netutil.local_ipv4_addresses()
            self._own_cache = (now, addrs)
        return addrs

    def _refused_destination(self, req: codec.PxeRequest, peer: str, e: DhcpDropped) -> None:
        self.drops[e.reason.split(" is ", 1)[-1]] += 1
        self.last_refusal = e.reason
        if self._refusals.admit():
            self.log.debug("peer=%s mac=%s not answered: %s", peer, req.mac, e.reason)

    def _refusals_line(self, t: Tally) -> None:
        self.log.info("proxyDHCP: %s replies not sent in the last %.0f s: their relay or client "
                      "address cannot be one (the last: %s)", f"{t.events:,}", t.seconds,
                      self.last_refusal)


class _OwnAddresses:
    """`addr in own` for reply_destination: the addresses at hand first, the host's list (read
    from the kernel, cached) only if needed -- most replies never ask."""

    __slots__ = ("at_hand", "server")

    def __init__(self, server: DhcpServer, at_hand: tuple[IPv4Address | None, ...]) -> None:
        self.server, self.at_hand = server, at_hand

    def __contains__(self, addr: object) -> bool:
        return addr in self.at_hand or addr in self.server.local_addresses()
