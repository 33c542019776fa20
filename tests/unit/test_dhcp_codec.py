"""The proxyDHCP codec against packets from three real QEMU PXE clients (tests/data/pcaps).

Replies are checked field by field with scapy's own dissector, not with the codec's parser.
"""

from __future__ import annotations

import contextlib
import random
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from netbootd import policy
from netbootd.codec import dhcp as codec
from netbootd.codec.dhcp import PxeRequest
from netbootd.errors import DhcpDropped
from netbootd.model import (
    HTTP_ARCHES,
    Arch,
    BootClient,
    BootFileNames,
    DhcpBoot,
    Host,
    MacAddress,
    Urls,
)

PCAPS = Path(__file__).resolve().parent.parent / "data" / "pcaps"
MAC = MacAddress.parse("52:54:00:12:34:56")
SERVER = IPv4Address("192.168.77.1")
CLIENT_IP = IPv4Address("192.168.77.158")
GUID = bytes(17)  # QEMU's SMBIOS UUID is all zeroes: type 0 + 16 zero bytes
URLS = Urls.for_address(SERVER, 8080)
FILES = BootFileNames()
HOST = Host(MAC, "web")
SCRIPT_URL = "http://192.168.77.1:8080/boot/52-54-00-12-34-56.ipxe"


def udp_payloads(name: str) -> list[tuple[int, int, bytes]]:
    """(sport, dport, payload) of every packet in a capture."""
    out = []
    for pkt in rdpcap(str(PCAPS / name)):
        u = pkt[UDP]
        out.append((int(u.sport), int(u.dport), bytes(u.payload)))
    return out


def client_packets(name: str, dport: int) -> list[bytes]:
    """The PXE client's requests (not the guest's udhcpc ones) sent to `dport`."""
    return [p for s, d, p in udp_payloads(name) if d == dport and p[0] == 1 and b"PXEClient" in p]


def first_discover(name: str) -> bytes:
    return client_packets(name, 67)[0]


def options(raw: bytes) -> dict[str | int, object]:
    """Options of a reply as scapy dissects them (repeated options collected in a list)."""
    dhcp = BOOTP(raw)[DHCP]
    out: dict[str | int, object] = {}
    for opt in dhcp.options:
        if isinstance(opt, tuple):
            name, *values = opt
            value = values[0] if len(values) == 1 else tuple(values)
            if name in out:
                prev = out[name]
                out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                out[name] = value
    return out


def encode_request(
    mac: str = "52:54:00:12:34:56",
    arch: int | None = 0,
    vendor_class: bytes | None = b"PXEClient:Arch:00000:UNDI:002001",
    message_type: int = 1,
    user_class: bytes | None = None,
    extra: list[tuple[int | str, bytes]] | None = None,
    op: int = 1,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
) -> bytes:
    opts: list[tuple[int | str, object] | str] = [("message-type", message_type)]
    if arch is not None:
        opts.append(("pxe_client_architecture", arch.to_bytes(2, "big")))
    if vendor_class is not None:
        opts.append(("vendor_class_id", vendor_class))
    if user_class is not None:
        opts.append(("user_class", user_class))
    opts.extend(extra or [])
    opts.append("end")
    pkt = BOOTP(
        op=op,
        xid=0x1234ABCD,
        flags=0x8000,
        ciaddr=ciaddr,
        giaddr=giaddr,
        chaddr=MacAddress.parse(mac).packed + bytes(10),
    ) / DHCP(options=opts)
    return bytes(pkt)


# -- the three real clients -------------------------------------------------------------------

REAL_CLIENTS = {
    # capture: (arch code, Arch, iPXE?, vendor class, broadcast flag)
    "seabios-ipxe-rom.pcap": (0, Arch.BIOS, True, "PXEClient:Arch:00000:UNDI:002001", 0),
    "ovmf-efi-ipxe-rom.pcap": (7, Arch.UEFI, True, "PXEClient:Arch:00007:UNDI:003010", 0),
    "ovmf-native-pxe.pcap": (7, Arch.UEFI, False, "PXEClient:Arch:00007:UNDI:003000", 0x8000),
}


@pytest.mark.parametrize("capture", sorted(REAL_CLIENTS))
def test_real_discover_parses(capture: str) -> None:
    code, arch, ipxe, vendor_class, flags = REAL_CLIENTS[capture]
    raw = first_discover(capture)
    req = codec.parse(raw)
    assert req.message_type == codec.DISCOVER
    assert req.message_name == "DHCPDISCOVER"
    assert req.mac == MAC
    assert (req.arch_code, req.arch, req.ipxe) == (code, arch, ipxe)
    assert req.vendor_class == vendor_class
    assert req.client_guid == GUID
    assert req.boot_item is None
    assert req.flags == flags
    assert req.xid == int.from_bytes(raw[4:8], "big")
    assert (req.ciaddr, req.giaddr) == (IPv4Address(0), IPv4Address(0))
    assert not req.relayed
    assert req.client == BootClient(MAC, arch, ipxe)


def test_real_boot_server_requests_parse() -> None:
    # SeaBIOS iPXE answered dnsmasq's PXE menu with a boot-server discovery on 4011: short
    # vendor class, xid 0, boot item 0x8002 layer 0 in option 43.71.
    (raw,) = client_packets("seabios-ipxe-rom.pcap", 4011)
    req = codec.parse(raw)
    assert req.message_type == codec.REQUEST
    assert (req.vendor_class, req.arch, req.ipxe) == ("PXEClient", Arch.BIOS, True)
    assert req.boot_item == bytes.fromhex("80020000")
    assert req.ciaddr == CLIENT_IP
    assert req.xid == 0
    # OVMF's own PXE asks 4011 (from source port 4011) after a proxy offer without option 43.
    first, second = client_packets("ovmf-native-pxe.pcap", 4011)
    req = codec.parse(first)
    assert (req.message_type, req.arch, req.ipxe, req.boot_item) == (
        codec.REQUEST,
        Arch.UEFI,
        False,
        None,
    )
    assert req.ciaddr == CLIENT_IP
    assert req.vendor_class == "PXEClient:Arch:00007:UNDI:003000"
    assert codec.parse(second).ipxe  # ...and then ipxe.efi's ProxyDHCPREQUEST
    sources = [s for s, d, p in udp_payloads("ovmf-native-pxe.pcap") if d == 4011 and p[0] == 1]
    assert sources == [4011, 68]  # OVMF sends from port 4011: answer to the source port


@pytest.mark.parametrize("capture", sorted(REAL_CLIENTS))
def test_everything_else_in_the_captures_is_dropped(capture: str) -> None:
    for _sport, _dport, raw in udp_payloads(capture):
        if raw[0] == 2:
            with pytest.raises(DhcpDropped, match="op 2 is not BOOTREQUEST"):
                codec.parse(raw)
        elif b"udhcp" in raw:  # the guest's busybox DHCP client: not PXE
            with pytest.raises(DhcpDropped, match="not a PXE client"):
                codec.parse(raw)
        else:
            assert codec.parse(raw).mac == MAC


# -- replies ----------------------------------------------------------------------------------


def boot_for(req: PxeRequest) -> DhcpBoot:
    boot = policy.dhcp_boot(HOST, req.client, SERVER, URLS, FILES)
    assert boot is not None
    return boot


@pytest.mark.parametrize("capture", sorted(REAL_CLIENTS))
def test_offer_to_real_discover(capture: str) -> None:
    _code, arch, ipxe, _vc, flags = REAL_CLIENTS[capture]
    req = codec.parse(first_discover(capture))
    boot = boot_for(req)
    raw = codec.build_reply(req, boot, SERVER, "dhcp")
    assert len(raw) >= 300
    b = BOOTP(raw)
    assert (b.op, b.htype, b.hlen) == (2, 1, 6)
    assert b.xid == req.xid and b.flags == flags
    assert b.chaddr[:6] == MAC.packed and b.chaddr[6:] == bytes(10)
    assert (b.ciaddr, b.yiaddr, b.siaddr, b.giaddr) == (
        "0.0.0.0",
        "0.0.0.0",
        "192.168.77.1",
        "0.0.0.0",
    )
    expected_file = SCRIPT_URL if ipxe else "ipxe.efi"
    assert b.file.rstrip(b"\0") == expected_file.encode()
    assert b.sname.rstrip(b"\0") == (b"" if ipxe else b"192.168.77.1")
    o = options(raw)
    assert o["message-type"] == codec.OFFER
    assert o["server_id"] == "192.168.77.1"
    assert o["vendor_class_id"] == b"PXEClient"
    assert o["pxe_client_machine_identifier"] == GUID
    if arch is Arch.BIOS:  # discovery control: boot the file named here, no discovery
        assert o["vendor_specific"] == b"\x06\x01\x08\xff"
    else:  # UEFI: no option 43, so firmware treats it as a "BINL" offer and asks 4011
        assert "vendor_specific" not in o
    assert set(o) <= {
        "message-type",
        "server_id",
        "vendor_class_id",
        "pxe_client_machine_identifier",
        "vendor_specific",
    }
    assert 175 not in o and "boot-file-name" not in o


def test_bios_rom_without_ipxe_gets_undionly_and_discovery_bypass() -> None:
    raw = encode_request(extra=[("pxe_client_machine_identifier", b"\x00" + bytes(range(16)))])
    req = codec.parse(raw)
    assert (req.arch, req.ipxe) == (Arch.BIOS, False)
    reply = codec.build_reply(req, boot_for(req), SERVER, "dhcp")
    b = BOOTP(reply)
    assert b.file.rstrip(b"\0") == b"undionly.kpxe" and b.sname.rstrip(b"\0") == b"192.168.77.1"
    o = options(reply)
    assert o["vendor_specific"] == b"\x06\x01\x08\xff"
    assert o["pxe_client_machine_identifier"] == b"\x00" + bytes(range(16))


def test_ack_on_4011_to_ovmf_native_pxe() -> None:
    raw = client_packets("ovmf-native-pxe.pcap", 4011)[0]
    req = codec.parse(raw)
    reply = codec.build_reply(req, boot_for(req), SERVER, "pxe")
    b = BOOTP(reply)
    assert b.op == 2 and b.xid == req.xid
    assert (b.ciaddr, b.yiaddr, b.siaddr) == (str(CLIENT_IP), "0.0.0.0", "192.168.77.1")
    assert b.file.rstrip(b"\0") == b"ipxe.efi" and b.sname.rstrip(b"\0") == b"192.168.77.1"
    o = options(reply)
    assert o["message-type"] == codec.ACK
    assert o["server_id"] == "192.168.77.1"
    assert o["vendor_class_id"] == b"PXEClient"
    assert o["pxe_client_machine_identifier"] == GUID
    assert "vendor_specific" not in o


def test_ack_on_4011_echoes_the_boot_item() -> None:
    (raw,) = client_packets("seabios-ipxe-rom.pcap", 4011)
    req = codec.parse(raw)
    reply = codec.build_reply(req, boot_for(req), SERVER, "pxe")
    o = options(reply)
    assert o["message-type"] == codec.ACK
    assert o["vendor_specific"] == bytes.fromhex("470480020000ff")  # 71: type 0x8002, layer 0
    assert BOOTP(reply).file.rstrip(b"\0") == SCRIPT_URL.encode()
    assert BOOTP(reply).flags == 0x8000  # echoed


def test_http_boot_client() -> None:
    req = codec.synthetic_request(BootClient(MAC, Arch.HTTP), "dhcp")
    assert req.vendor_class == "HTTPClient:Arch:00016:UNDI:003001" and req.arch_code == 16
    raw = encode_request(arch=16, vendor_class=b"HTTPClient:Arch:00016:UNDI:003001")
    req = codec.parse(raw)
    assert req.arch is Arch.HTTP
    boot = boot_for(req)
    reply = codec.build_reply(req, boot, SERVER, "dhcp")
    b = BOOTP(reply)
    assert b.file.rstrip(b"\0") == b"http://192.168.77.1:8080/ipxe/ipxe.efi"
    assert b.sname.rstrip(b"\0") == b"" and b.yiaddr == "0.0.0.0"
    o = options(reply)
    assert o["vendor_class_id"] == b"HTTPClient"
    assert "vendor_specific" not in o and "pxe_client_machine_identifier" not in o


def test_long_boot_file_goes_to_option_67() -> None:
    req = codec.parse(first_discover("seabios-ipxe-rom.pcap"))
    for n in (127, 128, 200, 255, 256, 600):
        name = "http://192.168.77.1/" + "x" * (n - 20)
        assert len(name) == n
        reply = codec.build_reply(req, DhcpBoot(name, SERVER), SERVER, "dhcp")
        b, o = BOOTP(reply), options(reply)
        if n <= 127:  # fits the 128-byte file field with its NUL
            assert b.file.rstrip(b"\0") == name.encode() and "boot-file-name" not in o
        else:
            assert b.file == bytes(128)
            parts = o["boot-file-name"]
            joined = b"".join(parts) if isinstance(parts, list) else parts
            assert joined == name.encode()  # RFC 3396: split into 255-byte pieces


def test_relayed_request_keeps_giaddr() -> None:
    raw = encode_request(
        giaddr="10.9.8.7", arch=7, vendor_class=b"PXEClient:Arch:00007:UNDI:003000"
    )
    req = codec.parse(raw)
    assert req.relayed and req.giaddr == IPv4Address("10.9.8.7")
    assert BOOTP(codec.build_reply(req, boot_for(req), SERVER, "dhcp")).giaddr == "10.9.8.7"


def test_ipxe_detected_by_option_175_alone() -> None:
    req = codec.parse(encode_request(extra=[(175, b"\xb1\x05\x01\x1a\xf4\x10\x00")]))
    assert req.ipxe
    req = codec.parse(encode_request(user_class=b"\x04iPXE"))  # RFC 3004 form
    assert req.ipxe
    assert not codec.parse(encode_request(user_class=b"gPXE")).ipxe


def test_ipxe_https_feature_read_from_option_175() -> None:
    # sub-options as iPXE sends them (features.h): 0x13 HTTP, 0x14 HTTPS, 0x15 TFTP, 1 byte each
    with_https = b"\x13\x01\x01\x14\x01\x01\x15\x01\x01"
    req = codec.parse(encode_request(user_class=b"iPXE", extra=[(175, with_https)]))
    assert req.ipxe and req.ipxe_https and req.client.ipxe_https
    # Debian 12's iPXE: HTTP and TFTP, no HTTPS; a truncated sub-option reads as no HTTPS
    for value in (b"\x13\x01\x01\x15\x01\x01", b"\x13\x01\x01\x14\x05\x01", b""):
        req = codec.parse(encode_request(user_class=b"iPXE", extra=[(175, value)]))
        assert req.ipxe and not req.ipxe_https
    # option 175 HTTPS from something that is not iPXE cannot happen (175 makes it iPXE); a
    # PXE ROM without 175 never has it
    assert not codec.parse(encode_request()).ipxe_https


def test_arch_list_uses_first_code_and_arm64() -> None:
    raw = encode_request(arch=None, extra=[("pxe_client_architecture", b"\x00\x0b\x00\x07")])
    assert codec.parse(raw).arch is Arch.ARM64


def test_ignore_reason_by_port() -> None:
    disc = codec.parse(first_discover("ovmf-native-pxe.pcap"))
    req = codec.parse(client_packets("ovmf-native-pxe.pcap", 67)[1])
    assert req.message_type == codec.REQUEST
    assert codec.ignore_reason(disc, "dhcp") is None
    assert codec.ignore_reason(req, "pxe") is None
    assert "for the DHCP server" in (codec.ignore_reason(req, "dhcp") or "")
    assert "DISCOVER on port 4011" in (codec.ignore_reason(disc, "pxe") or "")
    inform = codec.parse(encode_request(message_type=codec.INFORM))
    assert codec.ignore_reason(inform, "pxe") is None


# -- explain ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(Arch))
@pytest.mark.parametrize("port_kind", ["dhcp", "pxe"])
def test_synthetic_requests_round_trip(arch: Arch, port_kind: codec.PortKind) -> None:
    req = codec.synthetic_request(BootClient(MAC, arch, ipxe=False), port_kind)
    assert req.client == BootClient(MAC, arch, False)
    assert Arch.from_client_arch(req.arch_code) is arch
    assert req.message_type == (codec.DISCOVER if port_kind == "dhcp" else codec.REQUEST)
    assert req.vendor_class.startswith("HTTPClient" if arch in HTTP_ARCHES else "PXEClient")
    boot = policy.dhcp_boot(HOST, req.client, SERVER, URLS, BootFileNames(arm64="a/b.efi"))
    assert boot is not None
    reply = codec.build_reply(req, boot, SERVER, port_kind)
    assert BOOTP(reply).yiaddr == "0.0.0.0"


def test_reply_summary() -> None:
    req = codec.synthetic_request(BootClient(MAC, Arch.BIOS), "dhcp")
    rows = dict(codec.reply_summary(codec.build_reply(req, boot_for(req), SERVER, "dhcp")))
    assert rows["op"] == "BOOTREPLY DHCPOFFER"
    assert rows["yiaddr"] == "0.0.0.0"
    assert rows["siaddr (next server)"] == "192.168.77.1"
    assert rows["sname"] == "192.168.77.1"
    assert rows["file"] == "undionly.kpxe"
    assert rows["chaddr"] == "52:54:00:12:34:56"
    assert rows["opt 53 msg-type"] == "DHCPOFFER"
    assert rows["opt 54 server-id"] == "192.168.77.1"
    assert rows["opt 60 vendor-class"] == "PXEClient"
    assert rows["opt 43 pxe-options"] == "discovery-control=8"
    assert rows["opt 97 client-guid"] == "00" * 17
    assert all(len(k) <= 20 for k in rows)  # fits `explain`'s table
    with pytest.raises(DhcpDropped):
        codec.reply_summary(b"garbage")


# -- hostile input ----------------------------------------------------------------------------

BAD = {
    "empty": b"",
    "one byte": b"\x01",
    "header only": encode_request()[:236],
    "wrong op": encode_request(op=2),
    "op 0": encode_request(op=0),
    "no magic cookie": encode_request()[:236] + b"\x00\x00\x00\x00" + encode_request()[240:],
    "no message type": bytes(encode_request())[:240] + b"\x3c\x09PXEClient\x5d\x02\x00\x00\xff",
    "DHCPRELEASE": encode_request(message_type=7),
    "DHCPOFFER": encode_request(message_type=2),
    "no vendor class": encode_request(vendor_class=None),
    "Windows client": encode_request(vendor_class=b"MSFT 5.0"),
    "lower-case pxeclient": encode_request(vendor_class=b"pxeclient"),
    "no arch": encode_request(arch=None),
    "arch 2 (Itanium)": encode_request(arch=2),
    "arch 0xffff": encode_request(arch=0xFFFF),
    "arch odd length": encode_request(arch=None, extra=[("pxe_client_architecture", b"\x00")]),
    "arch 3 bytes": encode_request(arch=None, extra=[("pxe_client_architecture", b"\x00\x00\x07")]),
    "message type 2 bytes": bytes(encode_request())[:240]
    + b"\x35\x02\x01\x01\x3c\x09PXEClient\x5d\x02\x00\x00\xff",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_packets_are_dropped(name: str) -> None:
    with pytest.raises(DhcpDropped) as e:
        codec.parse(BAD[name])
    assert e.value.reason and str(e.value) == e.value.reason


def test_hardware_type_and_length() -> None:
    good = bytearray(encode_request())
    for offset, value in ((1, 6), (2, 16), (2, 0)):
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(DhcpDropped, match="not Ethernet"):
            codec.parse(bytes(bad))


def test_option_length_overrunning_the_packet() -> None:
    raw = bytearray(first_discover("ovmf-native-pxe.pcap"))
    # option 53 is the first option: give it a length that runs past the end
    assert raw[240] == 53
    raw[241] = 255
    with pytest.raises(DhcpDropped, match="overruns"):
        codec.parse(bytes(raw))
    # an option code with no length byte at the very end
    with pytest.raises(DhcpDropped, match="no length byte"):
        codec.parse(bytes(encode_request()[:-1]) + b"\x3d")


@pytest.mark.parametrize("capture", sorted(REAL_CLIENTS))
def test_every_truncation_of_a_real_packet(capture: str) -> None:
    raw = first_discover(capture)
    full = codec.parse(raw)
    accepted = 0
    for n in range(len(raw)):
        try:
            req = codec.parse(raw[:n])
        except DhcpDropped:
            continue
        # only a cut on an option boundary after options 53, 60 and 93 still parses, the same
        accepted += 1
        assert (req.mac, req.arch, req.vendor_class, req.xid) == (
            full.mac,
            full.arch,
            full.vendor_class,
            full.xid,
        )
    assert accepted < 20


def test_options_without_end_marker_are_accepted() -> None:
    raw = encode_request()
    assert raw.endswith(b"\xff")
    assert codec.parse(raw[:-1]).arch is Arch.BIOS


def test_repeated_option_is_concatenated() -> None:
    raw = encode_request(vendor_class=None, extra=[(60, b"PXECl"), (60, b"ient:Arch:00000")])
    assert codec.parse(raw).vendor_class == "PXEClient:Arch:00000"


def test_malformed_option_43_only_loses_the_boot_item() -> None:
    req = codec.parse(encode_request(extra=[("vendor_specific", b"\x47\x09\x80")]))
    assert req.boot_item is None


def test_random_bytes_only_ever_raise_dhcpdropped() -> None:
    rng = random.Random(4011)
    for _ in range(3000):
        blob = rng.randbytes(rng.choice([rng.randrange(0, 300), rng.randrange(236, 600)]))
        with contextlib.suppress(DhcpDropped):
            codec.parse(blob)


def test_mutated_real_packets_only_ever_raise_dhcpdropped() -> None:
    rng = random.Random(67)
    seeds = [p for c in REAL_CLIENTS for p in client_packets(c, 67) + client_packets(c, 4011)]
    parsed = 0
    for _ in range(6000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            if not raw:
                break
            pos = rng.randrange(0, len(raw))
            if rng.random() < 0.7 and pos >= 240:
                raw[pos] = rng.randrange(256)  # mostly hit the options
            elif rng.random() < 0.5:
                del raw[pos:]
            else:
                raw[pos] = rng.randrange(256)
        try:
            req = codec.parse(bytes(raw))
        except DhcpDropped:
            continue
        parsed += 1
        assert isinstance(req.mac, MacAddress) and isinstance(req.arch, Arch)
        codec.build_reply(req, DhcpBoot("ipxe.efi", SERVER), SERVER, "pxe")
    assert parsed > 100  # the mutations leave plenty of packets that still parse


def test_non_bytes_like_input_is_dropped_too() -> None:
    with pytest.raises(DhcpDropped):
        codec.parse(memoryview(b"\x01" * 10))  # type: ignore[arg-type]
    with pytest.raises(DhcpDropped):
        codec.parse(None)  # type: ignore[arg-type]


def test_no_option_175_176_ever() -> None:
    for capture in REAL_CLIENTS:
        for raw in client_packets(capture, 67):
            req = codec.parse(raw)
            reply = codec.build_reply(req, boot_for(req), SERVER, "dhcp")
            assert 175 not in options(reply)


# -- option 97 (issue #13, finding 10) ----------------------------------------------------------


@pytest.mark.parametrize("port_kind", ["dhcp", "pxe"])
def test_option_97_longer_than_255_bytes_is_dropped_not_a_traceback(
    port_kind: codec.PortKind,
) -> None:
    """RFC 3396 lets a client split a 300-byte option 97 over two TLVs; the codec concatenates
    them. RFC 4578 defines option 97 as 17 bytes, so such a request is dropped (a DhcpDropped,
    counted), where build_reply used to raise ValueError ("bytes must be in range(0, 256)")."""
    raw = encode_request(message_type=1 if port_kind == "dhcp" else 3,
                         extra=[(97, b"\x00" + bytes(254)), (97, bytes(45))])
    with pytest.raises(DhcpDropped, match="option 97"):
        req = codec.parse(raw)
        codec.build_reply(req, DhcpBoot("ipxe.efi", SERVER), SERVER, port_kind)


@pytest.mark.parametrize("length", [0, 1, 16, 18, 255])
def test_option_97_of_any_length_but_17_is_dropped(length: int) -> None:
    with pytest.raises(DhcpDropped, match=f"option 97 .*length {length}"):
        codec.parse(encode_request(extra=[(97, bytes(length))]))


def test_option_97_of_17_bytes_is_echoed_unchanged_whatever_its_type() -> None:
    guid = b"\x01" + bytes(range(16))  # a reserved type: opaque to us, echoed as is
    req = codec.parse(encode_request(extra=[(97, guid)]))
    reply = codec.build_reply(req, DhcpBoot("ipxe.efi", SERVER), SERVER, "dhcp")
    assert options(reply)["pxe_client_machine_identifier"] == guid


def test_build_reply_splits_any_long_option() -> None:
    """No value reaching build_reply can overflow a length byte: a long boot file name and a
    long vendor class both go out as RFC 3396 parts (scapy sees the parts; joined, the value)."""
    req = codec.parse(encode_request(extra=[(97, GUID)]))
    boot = DhcpBoot("http://x/" + "a" * 600, SERVER, vendor_class="PXEClient" + "x" * 300)
    reply = codec.build_reply(req, boot, SERVER, "dhcp")
    o = options(reply)
    assert b"".join(o["boot-file-name"]) == boot.filename.encode()
    assert b"".join(o["vendor_class_id"]) == boot.vendor_class.encode()
