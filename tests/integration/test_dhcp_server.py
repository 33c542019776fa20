"""The real `DhcpServer`: on loopback in-process, and in network namespaces behind a veth pair.

Namespace tests need root and `ip netns`; without them they SKIP with the reason, unless
NETBOOTD_REQUIRE_E2E=1 (CI), where they FAIL. Every namespace is named after this process
(`nbdtd-<pid>-<starttime>-<n>-{s,c}`, testbed.netns), deleted afterwards even on failure, and
stale ones from killed runs (owner gone) are removed first. No packet leaves loopback or those
namespaces.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netbootd.codec import dhcp as codec
from netbootd.config import Config
from netbootd.errors import NetbootdError, StoreError
from netbootd.model import Artifact, Host, MacAddress, RoleChain
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.dhcp import DhcpServer, reply_destination
from netbootd.servers.metrics import StateCollector
from netbootd.servers.netwatch import InterfaceState
from netbootd.store import Store
from testbed import REPO
from testbed.netns import Env, cleanup_stale, in_netns, list_netns, veth
from testbed.procs import Proc
from testbed.skips import netns_lab, require

HELPER = Path(__file__).resolve().parent / "dhcp_server_helper.py"

ENROLLED = "52:54:00:aa:00:01"
UNKNOWN = "52:54:00:bb:00:02"
NET = "10.213.7"
SRV_IP, CLI_IP = f"{NET}.1", f"{NET}.2"
HTTP_PORT = 8080
REPLY_WAIT = 3.0  # seconds a reply may take (it takes milliseconds)
SILENCE_WAIT = 1.0  # seconds we listen to be sure no reply comes


# -- packets ----------------------------------------------------------------------------------


def pxe_request(
    mac: str = ENROLLED,
    arch: int = 0,
    vendor_class: bytes = b"PXEClient:Arch:00000:UNDI:002001",
    message_type: int = codec.DISCOVER,
    ipxe: bool = False,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    boot_item: bytes | None = None,
    xid: int | None = None,
) -> tuple[int, bytes]:
    """(xid, bytes) of a PXE client's request, as the real clients in tests/data/pcaps send."""
    xid = secrets.randbits(32) if xid is None else xid
    opts: list[Any] = [
        ("message-type", message_type),
        ("pxe_client_architecture", arch.to_bytes(2, "big")),
        ("pxe_client_network_interface", b"\x01\x03\x00"),
        ("vendor_class_id", vendor_class),
        ("pxe_client_machine_identifier", b"\x00" + bytes(range(16))),
    ]
    if ipxe:
        opts.append(("user_class", b"iPXE"))
    if boot_item is not None:
        opts.append(("vendor_specific", b"\x47\x04" + boot_item + b"\xff"))
    opts.append("end")
    pkt = BOOTP(
        op=1,
        xid=xid,
        flags=0x8000 if ciaddr == "0.0.0.0" else 0,
        ciaddr=ciaddr,
        giaddr=giaddr,
        chaddr=MacAddress.parse(mac).packed + bytes(10),
    ) / DHCP(options=opts)
    return xid, bytes(pkt)


@dataclass
class Reply:
    raw: bytes
    peer: tuple[str, int]

    @property
    def bootp(self) -> BOOTP:
        return BOOTP(self.raw)

    @property
    def file(self) -> str:
        f = self.bootp.file.rstrip(b"\0")
        long_name = self.options.get("boot-file-name", b"")
        return str((f or long_name).decode())  # type: ignore[union-attr]

    @property
    def options(self) -> dict[str, object]:
        return {o[0]: o[1] for o in self.bootp[DHCP].options if isinstance(o, tuple)}


def receive(sock: socket.socket, xid: int, wait: float) -> list[Reply]:
    """Every BOOTREPLY with this xid arriving on `sock` within `wait` seconds (stop at the first
    one when wait is REPLY_WAIT)."""
    got: list[Reply] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, peer = sock.recvfrom(4096)
        if len(data) >= 240 and data[0] == 2 and int.from_bytes(data[4:8], "big") == xid:
            got.append(Reply(data, peer))
            if wait == REPLY_WAIT:
                break
    return got


def expect_one(sock: socket.socket, xid: int) -> Reply:
    got = receive(sock, xid, REPLY_WAIT)
    assert got, f"no reply to xid {xid:#x} within {REPLY_WAIT}s"
    return got[0]


def assert_proxy_reply(
    r: Reply, msg_type: int, file: str, vendor_class: bytes = b"PXEClient"
) -> None:
    b = r.bootp
    assert b.op == 2
    assert b.yiaddr == "0.0.0.0"  # a proxy never offers an address
    assert b.siaddr == SRV_IP
    assert r.options["message-type"] == msg_type
    assert r.options["server_id"] == SRV_IP
    assert r.options["vendor_class_id"] == vendor_class
    assert r.options["pxe_client_machine_identifier"] == b"\x00" + bytes(range(16))
    assert r.file == file


# -- pure: where replies go -------------------------------------------------------------------


def _req(**kw: Any) -> codec.PxeRequest:
    return codec.parse(pxe_request(**kw)[1])


def test_reply_destination() -> None:
    peer = ("10.0.0.5", 4011)
    assert reply_destination(_req(), "dhcp", ("0.0.0.0", 68)) == (
        IPv4Address("255.255.255.255"),
        68,
    )
    assert reply_destination(_req(ciaddr="10.0.0.5"), "dhcp", peer) == (IPv4Address("10.0.0.5"), 68)
    assert reply_destination(_req(giaddr="10.1.1.1"), "dhcp", peer) == (IPv4Address("10.1.1.1"), 67)
    req = _req(message_type=codec.REQUEST, ciaddr="10.0.0.5")
    assert reply_destination(req, "pxe", ("10.0.0.5", 4011)) == (IPv4Address("10.0.0.5"), 4011)
    assert reply_destination(req, "pxe", ("10.0.0.5", 68)) == (IPv4Address("10.0.0.5"), 68)
    relayed = _req(message_type=codec.REQUEST, giaddr="10.1.1.1")
    assert reply_destination(relayed, "pxe", peer) == (IPv4Address("10.1.1.1"), 67)


# -- in-process on loopback (no root needed) --------------------------------------------------


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state")
    store.add_generation("test", Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], "quiet", "import")
    store.enroll(MacAddress.parse(ENROLLED), "test")
    return store


def _loopback_cfg(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "advertise_address": "127.0.0.1",
            "http": {"port": HTTP_PORT},
            "dhcp": {"listen": "127.0.0.1", "port": 0, "pxe_port": 0},  # 0: ephemeral ports
        }
    )


class FlakyStore:
    """A store whose lookups fail in a chosen way, then work."""

    def __init__(self, real: Store, failures: list[BaseException]) -> None:
        self.real, self.failures = real, failures

    def host(self, mac: MacAddress) -> Host | None:
        if self.failures:
            raise self.failures.pop(0)
        return self.real.host(mac)

    def role_chain(self, role: str) -> RoleChain:  # the host's boot chain (issue 14)
        return self.real.role_chain(role)

    def __getattr__(self, name: str) -> Any:  # the enrolled-MAC set, the change stamp
        return getattr(self.real, name)


async def _ask(sock: socket.socket, port: int, data: bytes, xid: int, wait: float) -> list[Reply]:
    sock.sendto(data, ("127.0.0.1", port))
    return await asyncio.to_thread(receive, sock, xid, wait)


@pytest.fixture
def loopback_client() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


async def test_loopback_4011_request_is_acked_to_its_source(
    tmp_path: Path, loopback_client: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="netbootd.dhcp")
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    await server.start()
    try:
        ports = server.ports
        assert set(ports) == {"dhcp", "pxe"} and 0 not in ports.values()
        assert ports["dhcp"] != ports["pxe"]
        xid, data = pxe_request(
            arch=7,
            vendor_class=b"PXEClient:Arch:00007:UNDI:003000",
            message_type=codec.REQUEST,
            ciaddr="127.0.0.1",
            boot_item=b"\x80\x02\x00\x00",
        )
        (r,) = await _ask(loopback_client, ports["pxe"], data, xid, REPLY_WAIT)
        assert r.peer == ("127.0.0.1", ports["pxe"])  # from the 4011 socket, to our port
        b = r.bootp
        assert (b.op, b.yiaddr, b.ciaddr, b.siaddr) == (2, "0.0.0.0", "127.0.0.1", "127.0.0.1")
        assert r.file == "ipxe.efi"
        assert r.options["message-type"] == codec.ACK
        assert r.options["vendor_specific"] == b"\x47\x04\x80\x02\x00\x00\xff"
        # a DISCOVER on 4011 and a REQUEST for the real DHCP server are not answered
        xid, data = pxe_request(message_type=codec.DISCOVER)
        assert await _ask(loopback_client, ports["pxe"], data, xid, SILENCE_WAIT / 2) == []
    finally:
        await server.stop()
    assert "mac=52:54:00:aa:00:01 arch=uefi offered ipxe.efi (DHCPACK on 4011" in caplog.text
    # the DISCOVER on 4011 never got past the pre-filter: counted, not logged
    assert server.stats()["dropped"] == {"message-type": 1}
    assert "DHCPDISCOVER on port 4011" not in caplog.text
    assert server.ports == {}


async def test_loopback_garbage_then_good_and_unknown(
    tmp_path: Path, loopback_client: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="netbootd.dhcp")
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    await server.start()
    try:
        port = server.ports["pxe"]
        good_xid, good = pxe_request(message_type=codec.REQUEST, ciaddr="127.0.0.1", ipxe=True)
        for junk in (b"", b"\x01", os.urandom(300), good[:250], good[:241] + b"\xff" + good[242:]):
            loopback_client.sendto(junk, ("127.0.0.1", port))
        (r,) = await _ask(loopback_client, port, good, good_xid, REPLY_WAIT)
        assert r.file == f"http://127.0.0.1:{HTTP_PORT}/boot/52-54-00-aa-00-01.ipxe"
        xid, data = pxe_request(
            mac=UNKNOWN, message_type=codec.REQUEST, ciaddr="127.0.0.1", ipxe=True
        )
        assert await _ask(loopback_client, port, data, xid, SILENCE_WAIT) == []
        assert await _ask(loopback_client, port, data, xid, SILENCE_WAIT / 4) == []
    finally:
        await server.stop()
    # junk is counted by reason, one summary line at the end (no line per datagram); a
    # datagram that got past the pre-filter (an enrolled MAC) has its parse error at debug
    stats = server.stats()
    assert stats["dropped"] == {"truncated": 2, "not-bootrequest": 1, "malformed": 1,
                                "undecodable": 1, "unenrolled": 2}, stats
    assert (stats["received"], stats["answered"]) == (8, 1)
    assert "dropped: truncated" not in caplog.text
    assert "overruns the packet" in caplog.text
    summary = [r.getMessage() for r in caplog.records if "datagrams" in r.getMessage()]
    assert summary == ["proxyDHCP dropped 7 datagrams: truncated 2, unenrolled 2, "
                       "not-bootrequest 1, malformed 1, undecodable 1"], summary
    # /metrics reads the same counts (servers/metrics.py DHCP_STATS), one sample per reason
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StateCollector(_store(tmp_path), Artifacts(tmp_path / "artifacts"),
                                server.stats))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {s.labels["reason"]: s.value for s in fams["netbootd_dhcp_dropped"].samples} == {
        "truncated": 2.0, "not-bootrequest": 1.0, "malformed": 1.0, "undecodable": 1.0,
        "unenrolled": 2.0, "kernel-queue-full": 0.0, "unknown-mac-in-kernel": 0.0}
    assert [s.value for s in fams["netbootd_dhcp_datagrams"].samples] == [8.0]
    infos = [r for r in caplog.records if "not enrolled" in r.getMessage()]
    assert [r.levelno for r in infos] == [logging.INFO, logging.DEBUG]  # rate-limited


async def test_loopback_store_error_is_logged_and_serving_continues(
    tmp_path: Path, loopback_client: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(_store(tmp_path), [StoreError("disk I/O error"), RuntimeError("bug")])
    server = DhcpServer(_loopback_cfg(tmp_path), store)  # type: ignore[arg-type]
    await server.start()
    try:
        port = server.ports["pxe"]
        xid, data = pxe_request(message_type=codec.REQUEST, ciaddr="127.0.0.1")
        assert await _ask(loopback_client, port, data, xid, SILENCE_WAIT / 2) == []  # StoreError
        assert await _ask(loopback_client, port, data, xid, SILENCE_WAIT / 2) == []  # a bug
        (r,) = await _ask(loopback_client, port, data, xid, REPLY_WAIT)  # and still serving
        assert r.file == "undionly.kpxe"
    finally:
        await server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "state database error" in errors[0].getMessage()
    assert "disk I/O error" in errors[0].getMessage()
    assert "not enrolled" not in caplog.text  # an outage is never "unknown host"
    assert errors[1].exc_info is not None and "unexpected error" in errors[1].getMessage()


async def test_an_interface_change_rereads_the_own_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reply destinations are refused when they are this host's own addresses; after netwatch
    reports a change (e.g. a new address) the list is read again, not kept for its TTL."""
    have = {IPv4Address("10.0.0.1")}
    monkeypatch.setattr("netbootd.netutil.local_ipv4_addresses", lambda: frozenset(have))
    new = IPv4Address("10.0.0.9")
    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    await server.start()
    try:
        assert new not in server.local_addresses()
        have.add(new)
        assert new not in server.local_addresses()  # cached for OWN_ADDRESSES_TTL
        server.interface_changed(InterfaceState("lo", 1, IPv4Address("10.0.0.1")),
                                 InterfaceState("lo", 1, new))
        assert new in server.local_addresses()
        assert server.ports  # still listening: same interface, no rebind
    finally:
        await server.stop()


async def test_bind_failure_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _loopback_cfg(tmp_path).model_copy(update={"interface": "nbd-nonexist0"})
    server = DhcpServer(cfg, _store(tmp_path))
    with pytest.raises(
        NetbootdError, match="cannot listen for proxyDHCP on 127.0.0.1:0: .*nbd-nonexist0"
    ):
        await server.start()
    assert server.ports == {}  # nothing left open


async def test_receive_buffers_hold_a_burst(tmp_path: Path) -> None:
    """A rack powering on at once: thousands of queued DISCOVERs, not the default ~165."""
    import socket

    from netbootd.servers.udpbatch import RECV_BUFFER

    server = DhcpServer(_loopback_cfg(tmp_path), _store(tmp_path))
    await server.start()
    try:
        for sock in server._socks.values():
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            if os.geteuid() == 0:
                assert got >= RECV_BUFFER, got  # SO_RCVBUFFORCE: the kernel reports double
            else:
                with open("/proc/sys/net/core/rmem_max") as f:
                    rmem_max = int(f.read())
                assert got > 212992 or got >= 2 * rmem_max
    finally:
        await server.stop()


# -- network namespaces -----------------------------------------------------------------------

PREFIX = "nbdtd"


@dataclass
class Lab:
    """Two namespaces joined by a veth pair: server `srv` (eth0 .1) and client `cli` (eth0 .2)."""

    env: Env
    srv: str
    cli: str
    socks: dict[str, socket.socket] = field(default_factory=dict)

    def open_client_sockets(self) -> None:
        def make() -> dict[str, socket.socket]:
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # send-only
            raw.bind(("eth0", 0))
            bootpc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bootpc.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            bootpc.bind(("0.0.0.0", 68))  # where broadcast offers arrive
            relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            relay.bind((CLI_IP, 67))  # a DHCP relay agent's socket
            booted = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            booted.bind((CLI_IP, 0))  # a client with an address, talking to 4011
            return {"raw": raw, "bootpc": bootpc, "relay": relay, "booted": booted}

        self.socks = in_netns(self.cli, make)

    def broadcast(self, payload: bytes, mac: str = ENROLLED) -> None:
        """A DHCP packet from 0.0.0.0:68 to 255.255.255.255:67, as firmware sends it."""
        frame = (
            Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / payload
        )
        self.socks["raw"].send(bytes(frame))

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.env.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require(netns_lab(PREFIX))
    cleanup_stale(PREFIX)
    env = Env(PREFIX, tmp_path_factory.mktemp("dhcp-netns"), stop_timeout=5.0)
    lab = Lab(env, env.netns("s"), env.netns("c"))
    try:
        veth(lab.srv, lab.cli, f"{SRV_IP}/24", f"{CLI_IP}/24")
        lab.open_client_sockets()
        yield lab
    finally:
        lab.close()
    leftovers = [n for n in (lab.srv, lab.cli) if n in list_netns()]
    assert not leftovers, f"namespaces not removed: {leftovers}"


@dataclass
class ServerProc:
    proc: Proc

    def stop(self) -> str:
        """Stop the server (by PID); its log."""
        self.proc.stop(5)
        assert self.proc.log_path is not None
        return self.proc.log_path.read_text()


@pytest.fixture
def start_server(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """Start the real DhcpServer (tests/integration/dhcp_server_helper.py) in the server netns."""
    started: list[ServerProc] = []

    def start(*extra: str) -> ServerProc:
        n = len(started)
        argv = [sys.executable, str(HELPER), "--state", str(tmp_path / f"state{n}"),
                "--http-port", str(HTTP_PORT), "--enroll", ENROLLED, *extra]
        proc = lab.env.spawn(f"dhcp-server-{tmp_path.name}-{n}", argv, ns=lab.srv,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
                             cwd=REPO)
        s = ServerProc(proc)
        started.append(s)
        out = proc.popen.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], 20)
        line = out.readline().decode() if ready else ""
        if not line.startswith("READY"):
            raise AssertionError(f"DhcpServer did not start: {line!r}\n{s.stop()}")
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()


def test_netns_bios_uefi_ipxe_http(lab: Lab, start_server: Callable[..., ServerProc]) -> None:
    server = start_server()  # no interface/advertise: address from IP_PKTINFO
    cases = [
        # (request kwargs, expected file, vendor class, option 43)
        ({}, "undionly.kpxe", b"PXEClient", b"\x06\x01\x08\xff"),
        (
            {"arch": 7, "vendor_class": b"PXEClient:Arch:00007:UNDI:003000"},
            "ipxe.efi",
            b"PXEClient",
            None,
        ),
        (
            {"arch": 7, "vendor_class": b"PXEClient:Arch:00007:UNDI:003010", "ipxe": True},
            f"http://{SRV_IP}:{HTTP_PORT}/boot/52-54-00-aa-00-01.ipxe",
            b"PXEClient",
            None,
        ),
        (
            {"ipxe": True},
            f"http://{SRV_IP}:{HTTP_PORT}/boot/52-54-00-aa-00-01.ipxe",
            b"PXEClient",
            b"\x06\x01\x08\xff",
        ),
        (
            {"arch": 16, "vendor_class": b"HTTPClient:Arch:00016:UNDI:003001"},
            f"http://{SRV_IP}:{HTTP_PORT}/ipxe/ipxe.efi",
            b"HTTPClient",
            None,
        ),
    ]
    for kw, file, vc, opt43 in cases:
        xid, data = pxe_request(**kw)  # type: ignore[arg-type]
        lab.broadcast(data)
        r = expect_one(lab.socks["bootpc"], xid)
        assert_proxy_reply(r, codec.OFFER, file, vc)
        assert r.options.get("vendor_specific") == opt43
        assert r.peer == (SRV_IP, 67)
    # an arm64 client: no arm64 boot file configured -> silence
    xid, data = pxe_request(arch=11, vendor_class=b"PXEClient:Arch:00011:UNDI:003000")
    lab.broadcast(data)
    assert receive(lab.socks["bootpc"], xid, SILENCE_WAIT) == []
    log = server.stop()
    assert (
        "mac=52:54:00:aa:00:01 arch=bios offered undionly.kpxe (DHCPOFFER on 67 -> "
        "255.255.255.255:68)"
        in log
    )
    assert "arch=arm64 (option 93 = 11): no boot file for this arch: ignored" in log


def test_netns_arm64_when_configured_and_interface(
    lab: Lab, start_server: Callable[..., ServerProc]
) -> None:
    server = start_server("--arm64", "arm64/snponly.efi", "--interface", "eth0")
    xid, data = pxe_request(arch=11, vendor_class=b"PXEClient:Arch:00011:UNDI:003000")
    lab.broadcast(data)
    r = expect_one(lab.socks["bootpc"], xid)
    assert_proxy_reply(r, codec.OFFER, "arm64/snponly.efi")
    assert "(interface eth0)" in server.stop()


def test_netns_unknown_mac_gets_nothing(lab: Lab, start_server: Callable[..., ServerProc]) -> None:
    server = start_server()
    xid, data = pxe_request(mac=UNKNOWN)
    lab.broadcast(data, mac=UNKNOWN)
    assert receive(lab.socks["bootpc"], xid, SILENCE_WAIT) == []
    assert f"mac={UNKNOWN} arch=bios not enrolled: ignored" in server.stop()


def test_netns_malformed_then_good(lab: Lab, start_server: Callable[..., ServerProc]) -> None:
    server = start_server()
    xid, good = pxe_request()
    for junk in (
        b"",
        os.urandom(200),
        os.urandom(600),
        good[:240] + b"\x35\xff",  # option length past the end
        bytes([2]) + good[1:],  # a BOOTREPLY
        pxe_request(vendor_class=b"MSFT 5.0")[1],  # not PXE
        pxe_request(arch=2)[1],  # Itanium
    ):
        lab.broadcast(junk)
    lab.broadcast(good)
    r = expect_one(lab.socks["bootpc"], xid)
    assert_proxy_reply(r, codec.OFFER, "undionly.kpxe")
    log = server.stop()
    # the pre-filter's reasons, counted in the summary line (no line per datagram), and the
    # parser's for a datagram that got past it (an enrolled MAC), at debug
    summary = [line for line in log.splitlines() if "proxyDHCP dropped" in line]
    assert len(summary) == 1, summary
    for reason in ("truncated 2", "not-bootrequest 2", "malformed 1", "not-pxe 1",
                   "undecodable 1"):
        assert reason in summary[0], (reason, summary)
    assert "client architecture 2 is not one netbootd can boot" in log
    assert "overruns" not in log and "op 2 is not BOOTREQUEST" not in log
    assert "Traceback" not in log


def test_netns_pxe_4011_request(lab: Lab, start_server: Callable[..., ServerProc]) -> None:
    start_server()
    sock = lab.socks["booted"]
    xid, data = pxe_request(
        arch=7,
        vendor_class=b"PXEClient:Arch:00007:UNDI:003000",
        message_type=codec.REQUEST,
        ciaddr=CLI_IP,
        boot_item=b"\x80\x02\x00\x00",
    )
    sock.sendto(data, (SRV_IP, 4011))
    r = expect_one(sock, xid)
    assert_proxy_reply(r, codec.ACK, "ipxe.efi")
    assert r.peer == (SRV_IP, 4011)
    assert r.bootp.ciaddr == CLI_IP
    assert r.options["vendor_specific"] == b"\x47\x04\x80\x02\x00\x00\xff"


def test_netns_relayed_discover_answered_to_relay(
    lab: Lab, start_server: Callable[..., ServerProc]
) -> None:
    start_server()
    relay = lab.socks["relay"]
    xid, data = pxe_request(arch=7, vendor_class=b"PXEClient:Arch:00007:UNDI:003000", giaddr=CLI_IP)
    relay.sendto(data, (SRV_IP, 67))
    r = expect_one(relay, xid)  # unicast to giaddr:67, not broadcast
    assert_proxy_reply(r, codec.OFFER, "ipxe.efi")
    assert r.bootp.giaddr == CLI_IP
    assert receive(lab.socks["bootpc"], xid, 0.2) == []
