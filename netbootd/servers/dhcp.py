"""The proxyDHCP adapter: UDP 67 (DISCOVER -> OFFER) and UDP 4011 (REQUEST -> ACK).

Thin: for each datagram, `codec.dhcp.parse` -> `store.host(mac)` -> `policy.dhcp_boot` ->
`codec.dhcp.build_reply` -> send. Nothing the network sends stops the loop: a packet that is
not a PXE request is logged at debug and dropped, an unexpected exception is logged with its
traceback and the next datagram is served. A store failure is an error in the log, never
"unknown host".

Sockets are read with `recvmsg` (IP_PKTINFO) rather than through an asyncio transport: the
adapter needs the interface and local address each datagram arrived on, to know which address
to advertise and to send broadcast replies out of that same interface.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd import lookup, policy, stats
from netbootd.codec import dhcp as codec
from netbootd.config import Config
from netbootd.errors import DhcpDropped, NetbootdError, StoreError
from netbootd.leases import Leases
from netbootd.lookup import KnownMacs
from netbootd.model import BootFileNames, Urls
from netbootd.servers.netwatch import InterfaceState
from netbootd.store import Store

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python does not always define it
_PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
BROADCAST = IPv4Address("255.255.255.255")
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
RECV_SIZE = 4096
UNKNOWN_LOG_INTERVAL = 60.0  # seconds between INFO lines about the same unenrolled MAC


@dataclass(frozen=True)
class Datagram:
    """One received datagram and where it came from / arrived."""

    data: bytes
    peer: tuple[str, int]
    ifindex: int  # 0 if unknown
    local: IPv4Address | None  # the local address it arrived on (IP_PKTINFO spec_dst)


def reply_destination(
    req: codec.PxeRequest, port_kind: codec.PortKind, peer: tuple[str, int]
) -> tuple[IPv4Address, int]:
    """Where the reply goes: relay, then boot-server peer, then client address, then broadcast."""
    if req.relayed:
        return req.giaddr, DHCP_SERVER_PORT  # the relay agent forwards it to the client
    if port_kind == "pxe":
        return IPv4Address(peer[0]), peer[1]  # the client has an address: answer where it asked
    if req.ciaddr != IPv4Address(0):
        return req.ciaddr, DHCP_CLIENT_PORT
    return BROADCAST, DHCP_CLIENT_PORT


# A rack powering on at once sends a burst of DISCOVERs; the default ~208 KiB receive buffer
# holds ~165 of them, and a PXE ROM whose DISCOVER is dropped retries only after ~4 s.
RECV_BUFFER = 4 << 20


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Ask for RECV_BUFFER bytes: beyond net.core.rmem_max as root (SO_RCVBUFFORCE), else as
    much as the limit allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)


class DhcpServer:
    """proxyDHCP on `cfg.dhcp.port` (67) and `cfg.dhcp.pxe_port` (4011)."""

    def __init__(self, cfg: Config, store: Store, leases: Leases | None = None,
                 log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.leases = leases if leases is not None else Leases(cfg.security.dhcp_window)
        self.known = KnownMacs(store)
        self.log = log or logging.getLogger("netbootd.dhcp")
        self.files = BootFileNames(**cfg.boot_files.model_dump())
        self._socks: dict[codec.PortKind, socket.socket] = {}
        self._ports: dict[codec.PortKind, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unknown_logged: dict[str, float] = {}

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
        self._open(ports)
        self._ports = self.ports  # what a rebind binds again (ports configured as 0 included)
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
            self._loop.add_reader(sock.fileno(), self._readable, kind, sock)

    def interface_changed(self, old: InterfaceState, new: InterfaceState) -> None:
        """netwatch: the serving interface was recreated (new ifindex), went or came back. A
        socket bound to a device keeps the old ifindex and would never hear another request:
        bind again. (An address change needs nothing: replies advertise the address read at
        each request.)"""
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
        self._close()

    def _close(self) -> None:
        for sock in self._socks.values():
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
            _grow_receive_buffer(sock)
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
        for _ in range(64):  # drain what is queued, but let other work run under a flood
            try:
                data, ancdata, _flags, peer = sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP errors surfacing on the socket: keep serving
                self.log.debug("proxyDHCP %s socket: %s", kind, e)
                return
            ifindex, local = 0, None
            for level, ctype, cdata in ancdata:
                if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                    ifindex, spec_dst, _addr = _PKTINFO.unpack_from(cdata)
                    local = IPv4Address(spec_dst)
            try:
                self.handle(kind, sock, Datagram(data, peer, ifindex, local))
            except Exception:
                self.log.exception("proxyDHCP: unexpected error handling a packet from %s", peer)

    def handle(self, kind: codec.PortKind, sock: socket.socket, dg: Datagram) -> None:
        peer = f"{dg.peer[0]}:{dg.peer[1]}"
        try:
            req = codec.parse(dg.data)
        except DhcpDropped as e:
            self.log.debug("peer=%s port=%s dropped: %s", peer, kind, e.reason)
            stats.inc("dhcp_dropped", "malformed")
            return
        stats.inc("dhcp_requests", kind, str(req.arch))
        self._observe(kind, req, dg)
        why = codec.ignore_reason(req, kind)
        if why is not None:
            self.log.debug("peer=%s mac=%s ignored: %s", peer, req.mac, why)
            stats.inc("dhcp_dropped", "not-pxe")
            return
        server_ip = self._server_ip(dg)
        if server_ip is None:
            self.log.error(
                "mac=%s: cannot tell which address to advertise (no advertise_address, no"
                " IPv4 address on %s); not answering",
                req.mac,
                self.cfg.interface or "the receiving interface",
            )
            return
        try:
            host = self.store.host(req.mac)
            # the host's boot chain (transport, HTTP-boot payload); signing is not asked here
            chain = lookup.boot_chain(self.store, self.cfg, host, False) if host else None
        except StoreError as e:
            self.log.error("mac=%s: state database error, not answering: %s", req.mac, e)
            return
        urls = Urls.for_address(server_ip, self.cfg.http.port)
        https = Urls.for_https(server_ip, self.cfg.https.port) if self.cfg.https.enabled else None
        boot = policy.dhcp_boot(host, req.client, server_ip, urls, self.files, chain, https)
        if boot is None:
            stats.inc("dhcp_dropped", "unknown-mac" if host is None else "no-boot-file")
            if host is None:
                self._log_unknown(req)
            else:
                self.log.info(
                    "mac=%s arch=%s (option 93 = %d): no boot file for this arch: ignored",
                    req.mac,
                    req.arch,
                    req.arch_code,
                )
            return
        reply = codec.build_reply(req, boot, server_ip, kind)
        dest = reply_destination(req, kind, dg.peer)
        self._send(sock, reply, dest, dg.ifindex)
        stats.inc("dhcp_replies", kind, str(req.arch))
        self.log.info(
            "mac=%s arch=%s%s %s (%s on %s -> %s:%d)",
            req.mac,
            req.arch,
            " ipxe" if req.ipxe else "",
            boot.reason,
            "DHCPOFFER" if kind == "dhcp" else "DHCPACK",
            "67" if kind == "dhcp" else "4011",
            dest[0],
            dest[1],
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
            known = req.mac in self.known
        except StoreError as e:
            self.log.error("mac=%s: state database error: %s", req.mac, e)
            return
        if known:
            self.leases.observe(req.mac, str(addr), time.time())
            self.log.debug("mac=%s DHCP exchange uses %s (%s on %s)", req.mac, addr,
                           req.message_name, kind)

    def _server_ip(self, dg: Datagram) -> IPv4Address | None:
        local = str(dg.local) if dg.local is not None else None
        server = lookup.server_address(self.cfg, local)
        return IPv4Address(server) if server is not None else None

    def _send(
        self, sock: socket.socket, reply: bytes, dest: tuple[IPv4Address, int], ifindex: int
    ) -> None:
        anc = []
        if dest[0] == BROADCAST and ifindex:
            # A limited broadcast would otherwise leave through the default route's interface.
            anc = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(ifindex, bytes(4), bytes(4)))]
        try:
            sock.sendmsg([reply], anc, 0, (str(dest[0]), dest[1]))
        except OSError as e:
            self.log.warning("proxyDHCP: cannot send reply to %s:%d: %s", dest[0], dest[1], e)

    def _log_unknown(self, req: codec.PxeRequest) -> None:
        """INFO at most once a minute per MAC (floods stay quiet), DEBUG otherwise."""
        now = time.monotonic()
        key = str(req.mac)
        last = self._unknown_logged.get(key)
        if last is not None and now - last < UNKNOWN_LOG_INTERVAL:
            self.log.debug("mac=%s arch=%s not enrolled: ignored", req.mac, req.arch)
            return
        if len(self._unknown_logged) > 4096:
            self._unknown_logged.clear()
        self._unknown_logged[key] = now
        self.log.info(
            "mac=%s arch=%s not enrolled: ignored (enroll it with `netbootd enroll %s ROLE`)",
            req.mac,
            req.arch,
            req.mac,
        )
