"""proxyDHCP codec: PXE request bytes -> `PxeRequest`, (`PxeRequest`, `DhcpBoot`) -> reply bytes.

Pure: no sockets, no clock, no logging. `parse` accepts ANY bytes and either returns a
`PxeRequest` or raises `DhcpDropped(reason)`; nothing else escapes it. The option TLVs are
walked here, by hand, with every length checked, because scapy's dissector is lenient (it
silently truncates or mis-parses broken options). Replies are packed with `struct` (scapy's
builder was most of the DHCP path's cost; ARCHITECTURE.md, "proxyDHCP"). scapy stays the
independent oracle: the unit tests dissect every reply built here with scapy's DHCP layer and
check it field by field.

The replies follow what mature servers send, and all three real clients in tests/data/pcaps
(SeaBIOS + iPXE ROM, OVMF + EFI iPXE ROM, OVMF native PXE) boot with them:

 - never an address: yiaddr is always 0.0.0.0, so the site's DHCP server stays in charge;
 - siaddr = next server, `file` = boot file (option 67 instead when longer than 127 bytes),
   sname = the next server's address for TFTP file names (empty for URLs);
 - option 60 `PXEClient` (or `HTTPClient` for UEFI HTTP boot), option 54 our address,
   option 97 (client GUID) echoed unchanged, as the PXE spec requires. RFC 4578 (2.3) defines
   it as exactly 17 bytes: a type (0: GUID; 1-255 reserved) and a 16-byte identifier. A
   request whose option 97 has any other length (an RFC 3396 concatenation of 300 bytes, an
   empty one) is dropped, not answered without it: the PXE spec makes the echo part of a valid
   reply, and no PXE client sends such a GUID (firmware sends 17 bytes, all-zero if unknown);
 - every option of a reply is written as RFC 3396 parts of at most 255 bytes, so no value,
   however long, can make `build_reply` fail;
 - x86 BIOS clients (arch 0) get option 43 = {6: 0x08, END}: "PXE discovery control: boot the
   file named in this offer, no boot-server discovery" (as Pixiecore does). iPXE, BIOS or
   EFI, takes a proxy offer with siaddr + file as is, without asking 4011;
 - UEFI clients get no option 43, like dnsmasq and Pixiecore do, because "some UEFI firmwares
   ignore ProxyDHCP responses that try to bypass boot server discovery" (Pixiecore). EDK2
   classifies such an offer as "BINL" and asks again on UDP 4011, where the DHCPACK carries
   the same boot file. (OVMF itself also accepts {6: 0x08}: measured, but not relied on.)
 - on 4011, a PXE boot item (option 43 sub-option 71) sent by the client is echoed back;
 - option 175.176 (iPXE "no-pxedhcp") is never sent: this IS the ProxyDHCP.

`prefilter` is the cheap first look a flood meets (issue #13, finding 14): a few byte compares
and one set lookup on the raw datagram, before anything is allocated or parsed. It may pass
junk (`parse` still judges it) but never drops a request `parse` accepts and the adapter acts
on. The module is one piece for that reason: the pre-filter and the parser share offsets and
constants and are tested against each other (tests/unit/test_dhcp_prefilter.py).
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from netbootd.errors import DhcpDropped
from netbootd.model import Arch, BootClient, DhcpBoot, MacAddress

PortKind = Literal["dhcp", "pxe"]

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER_LEN = 236  # fixed BOOTP header, before the magic cookie
MIN_REPLY_LEN = 300  # BOOTP minimum; some old PXE ROMs drop shorter replies
FILE_FIELD_LEN = 128
SNAME_FIELD_LEN = 64

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
MESSAGE_TYPES = {
    DISCOVER: "DHCPDISCOVER",
    OFFER: "DHCPOFFER",
    REQUEST: "DHCPREQUEST",
    DECLINE: "DHCPDECLINE",
    ACK: "DHCPACK",
    NAK: "DHCPNAK",
    RELEASE: "DHCPRELEASE",
    INFORM: "DHCPINFORM",
}
_ANSWERED = {DISCOVER, REQUEST, INFORM}

OPT_PAD, OPT_END = 0, 255
OPT_VENDOR_SPECIFIC = 43
OPT_REQUESTED_IP = 50
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_VENDOR_CLASS = 60
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77
OPT_CLIENT_ARCH = 93
OPT_CLIENT_NDI = 94
OPT_CLIENT_GUID = 97
OPT_IPXE_ENCAP = 175
IPXE_FEATURE_HTTPS = 0x14  # its sub-option naming the HTTPS protocol
CLIENT_GUID_LEN = 17  # RFC 4578 2.3: type (0 = GUID) + a 16-byte machine identifier

PXE_DISCOVERY_CONTROL = 6
PXE_BOOT_ITEM = 71
# Discovery control bit 3: "if a boot file name is in this offer, download it; no discovery".
PXE_BOOT_FILE_ONLY = 0x08

# The arch code and vendor class a synthetic (`netbootd explain`) client of each kind sends:
# the vendor classes are the ones the real QEMU clients in tests/data/pcaps send.
_SYNTHETIC = {
    Arch.BIOS: (0, "PXEClient:Arch:00000:UNDI:002001"),
    Arch.UEFI: (7, "PXEClient:Arch:00007:UNDI:003000"),
    Arch.ARM64: (11, "PXEClient:Arch:00011:UNDI:003000"),
    Arch.HTTP: (16, "HTTPClient:Arch:00016:UNDI:003001"),
    Arch.HTTP_ARM64: (19, "HTTPClient:Arch:00019:UNDI:003001"),
}

_OPTION_NAMES = {  # short: `explain` prints them in a 20-column table as "opt NN name"
    1: "subnet-mask",
    3: "router",
    6: "dns-server",
    12: "hostname",
    43: "pxe-options",
    53: "msg-type",
    54: "server-id",
    55: "param-list",
    57: "max-msg-size",
    60: "vendor-class",
    61: "client-id",
    66: "tftp-server",
    67: "bootfile",
    77: "user-class",
    93: "client-arch",
    94: "client-ndi",
    97: "client-guid",
    175: "ipxe-encap",
}
_PXE_SUBOPTION_NAMES = {
    1: "mtftp-ip",
    6: "discovery-control",
    7: "multicast-ip",
    8: "boot-servers",
    9: "boot-menu",
    10: "menu-prompt",
    71: "boot-item",
}




@dataclass(frozen=True)
class PxeRequest:
    """Everything about a PXE client's DHCP request that the reply needs."""

    xid: int
    flags: int
    ciaddr: IPv4Address
    giaddr: IPv4Address
    mac: MacAddress
    message_type: int  # DISCOVER, REQUEST or INFORM
    arch_code: int  # option 93, RFC 4578 / IANA processor architecture type
    arch: Arch
    vendor_class: str  # option 60, e.g. "PXEClient:Arch:00007:UNDI:003000"
    ipxe: bool  # user-class "iPXE" (option 77) or iPXE's option 175 present
    client_guid: bytes | None = None  # option 97, raw (type byte + 16-byte UUID), echoed back
    boot_item: bytes | None = None  # option 43 sub-option 71 (type, layer), echoed on 4011
    requested_ip: IPv4Address | None = None  # option 50: the address a REQUEST is taking
    ipxe_https: bool = False  # iPXE's option 175 lists its HTTPS feature (sub-option 0x14)

    @property
    def exchange_address(self) -> IPv4Address | None:
        """The address this request says the client's DHCP exchange uses: a REQUEST's option 50,
        else its ciaddr (renewing), else None (a DISCOVER has none yet)."""
        if self.message_type != REQUEST:
            return None
        if self.requested_ip is not None:
            return self.requested_ip
        return self.ciaddr if self.ciaddr != _ZERO else None

    @property
    def client(self) -> BootClient:
        return BootClient(self.mac, self.arch, self.ipxe, self.ipxe_https)

    @property
    def message_name(self) -> str:
        return MESSAGE_TYPES.get(self.message_type, str(self.message_type))

    @property
    def relayed(self) -> bool:
        return self.giaddr != _ZERO


_ZERO = IPv4Address(0)
# The fixed BOOTP header (RFC 951/2131): op htype hlen hops xid secs flags ciaddr yiaddr siaddr
# giaddr chaddr(16) sname(64) file(128); `s` fields are NUL-padded by struct.
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


# -- parsing ---------------------------------------------------------------------------------


def _walk(data: bytes, start: int, end: int, what: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) for each TLV in data[start:end]; pads skipped, stops at END.

    Raises DhcpDropped when a length byte is missing or a value overruns the area.
    """
    i = start
    while i < end:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= end:
            raise DhcpDropped(f"{what} {code} has no length byte")
        length = data[i + 1]
        if i + 2 + length > end:
            raise DhcpDropped(
                f"{what} {code} length {length} overruns the packet ({end - i - 2} bytes left)"
            )
        yield code, data[i + 2 : i + 2 + length]
        i += 2 + length


def _options(data: bytes, start: int, end: int, what: str) -> dict[int, bytes]:
    """All TLVs; a repeated option is concatenated (RFC 3396 long options). The walk of
    `_walk`, inlined: this runs for every request answered (~40% less time than through the
    generator, bench/micro.py)."""
    opts: dict[int, bytes] = {}
    i = start
    while i < end:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= end:
            raise DhcpDropped(f"{what} {code} has no length byte")
        j = i + 2 + data[i + 1]
        if j > end:
            raise DhcpDropped(
                f"{what} {code} length {data[i + 1]} overruns the packet ({end - i - 2} bytes left)"
            )
        prev = opts.get(code)
        opts[code] = data[i + 2 : j] if prev is None else prev + data[i + 2 : j]
        i = j
    return opts


def _suboptions(value: bytes | None, what: str) -> dict[int, bytes]:
    """An encapsulated option's sub-options; {} when absent or malformed (anything odd in there
    is ignored: never a reason to drop the request)."""
    if not value:
        return {}
    try:
        return _options(value, 0, len(value), what)
    except DhcpDropped:
        return {}


def _boot_item(option43: bytes | None) -> bytes | None:
    """Sub-option 71 of a client's option 43, if well formed."""
    item = _suboptions(option43, "option 43 sub-option").get(PXE_BOOT_ITEM)
    return item if item is not None and len(item) == 4 else None


def _ipxe_https(option175: bytes | None) -> bool:
    """Does iPXE's option 175 list the HTTPS feature? (iPXE's include/ipxe/features.h: each
    protocol it was built with is a sub-option; Debian 12's builds have no 0x14.)"""
    return IPXE_FEATURE_HTTPS in _suboptions(option175, "option 175 sub-option")


def parse(data: bytes) -> PxeRequest:
    """Decode a PXE client's DHCP request. Raises `DhcpDropped` (and nothing else) otherwise."""
    try:
        return _parse(bytes(data))
    except DhcpDropped:
        raise
    except Exception as e:  # noqa: BLE001  (a codec bug must not become a server crash)
        raise DhcpDropped(f"undecodable packet ({type(e).__name__}: {e})") from None


def _parse(data: bytes) -> PxeRequest:
    if len(data) < HEADER_LEN + len(MAGIC_COOKIE):
        raise DhcpDropped(f"truncated: {len(data)} bytes, a DHCP packet has at least 240")
    op, htype, hlen = data[0], data[1], data[2]
    if op != BOOTREQUEST:
        raise DhcpDropped(f"op {op} is not BOOTREQUEST")
    if htype != 1 or hlen != 6:
        raise DhcpDropped(f"hardware type {htype}/length {hlen} is not Ethernet")
    if data[HEADER_LEN : HEADER_LEN + 4] != MAGIC_COOKIE:
        raise DhcpDropped("no DHCP magic cookie (plain BOOTP)")
    opts = _options(data, HEADER_LEN + 4, len(data), "option")

    mtype = opts.get(OPT_MESSAGE_TYPE)
    if mtype is None:
        raise DhcpDropped("no DHCP message type (option 53)")
    if len(mtype) != 1:
        raise DhcpDropped(f"option 53 has length {len(mtype)}, not 1")
    message_type = mtype[0]
    if message_type not in _ANSWERED:
        name = MESSAGE_TYPES.get(message_type, f"message type {message_type}")
        raise DhcpDropped(f"{name} is not answered by a proxyDHCP server")

    raw_vc = opts.get(OPT_VENDOR_CLASS, b"")
    if not raw_vc.startswith((b"PXEClient", b"HTTPClient")):
        shown = raw_vc[:40].decode("ascii", "replace") if raw_vc else "none"
        raise DhcpDropped(f"not a PXE client (vendor class {shown!r})")
    vendor_class = raw_vc.decode("ascii", "replace")

    raw_arch = opts.get(OPT_CLIENT_ARCH)
    if raw_arch is None:
        raise DhcpDropped("no client architecture (option 93)")
    if len(raw_arch) < 2 or len(raw_arch) % 2:
        raise DhcpDropped(f"option 93 has length {len(raw_arch)}, not a list of 16-bit codes")
    arch_code = int.from_bytes(raw_arch[:2], "big")  # several codes: the first is preferred
    arch = Arch.from_client_arch(arch_code)
    if arch is None:
        raise DhcpDropped(f"client architecture {arch_code} is not one netbootd can boot")

    user_class = opts.get(OPT_USER_CLASS, b"")
    ipxe = b"iPXE" in user_class or OPT_IPXE_ENCAP in opts

    guid = opts.get(OPT_CLIENT_GUID)
    if guid is not None and len(guid) != CLIENT_GUID_LEN:
        raise DhcpDropped(f"option 97 (client GUID) has length {len(guid)}, RFC 4578 defines "
                          f"{CLIENT_GUID_LEN}")

    return PxeRequest(
        xid=int.from_bytes(data[4:8], "big"),
        flags=int.from_bytes(data[10:12], "big"),
        ciaddr=_ipv4(data[12:16]),
        giaddr=_ipv4(data[24:28]),
        mac=MacAddress(data[28:34]),
        message_type=message_type,
        arch_code=arch_code,
        arch=arch,
        vendor_class=vendor_class,
        ipxe=ipxe,
        ipxe_https=ipxe and _ipxe_https(opts.get(OPT_IPXE_ENCAP)),
        client_guid=guid,
        boot_item=_boot_item(opts.get(OPT_VENDOR_SPECIFIC)),
        requested_ip=_address(opts.get(OPT_REQUESTED_IP)),
    )


# -- the pre-filter --------------------------------------------------------------------------

# Why `prefilter` drops a datagram: the adapter's drop counters are keyed by these.
PRE_TRUNCATED = "truncated"
PRE_NOT_REQUEST = "not-bootrequest"
PRE_NO_COOKIE = "no-dhcp-cookie"
PRE_UNKNOWN_MAC = "unknown-mac"
PRE_MESSAGE_TYPE = "message-type"
PRE_NOT_PXE = "not-pxe"
PRE_MALFORMED = "malformed"
PREFILTER_REASONS = (PRE_TRUNCATED, PRE_NOT_REQUEST, PRE_NO_COOKIE, PRE_UNKNOWN_MAC,
                     PRE_MESSAGE_TYPE, PRE_NOT_PXE, PRE_MALFORMED)
# The message types a port's adapter acts on: DISCOVERs are answered on 67, REQUEST/INFORM on
# 4011; a REQUEST on 67 (to the site's server) is not answered but tells the adapter which
# address the client takes (`PxeRequest.exchange_address`, leases.py).
_PORT_TYPES: dict[PortKind, tuple[int, ...]] = {"dhcp": (DISCOVER, REQUEST),
                                                "pxe": (REQUEST, INFORM)}
_OPTIONS_AT = HEADER_LEN + len(MAGIC_COOKIE)
_CHADDR = slice(28, 34)
_COOKIE = slice(HEADER_LEN, _OPTIONS_AT)


def prefilter(data: bytes, port_kind: PortKind, known: Container[bytes]) -> str | None:
    """None if `data` may be a request the adapter acts on (then `parse` decides), else why not
    (one of PREFILTER_REASONS). `known`: the enrolled MACs as 6-byte strings.

    Cheapest and most telling first: the fixed header, the MAC, then option 53 when it is the
    first option (real clients put it there; elsewhere it is left to `parse`), then the vendor
    class, found by a substring search; only a request that names neither PXEClient nor
    HTTPClient anywhere is walked option by option (an RFC 3396 split option 60 would hide it).
    """
    if len(data) < _OPTIONS_AT:
        return PRE_TRUNCATED
    if data[0] != BOOTREQUEST or data[1] != 1 or data[2] != 6:
        return PRE_NOT_REQUEST
    if data[_COOKIE] != MAGIC_COOKIE:
        return PRE_NO_COOKIE
    if data[_CHADDR] not in known:
        return PRE_UNKNOWN_MAC
    if (len(data) > _OPTIONS_AT + 2 and data[_OPTIONS_AT] == OPT_MESSAGE_TYPE
            and data[_OPTIONS_AT + 1] == 1
            and data[_OPTIONS_AT + 2] not in _PORT_TYPES[port_kind]):
        return PRE_MESSAGE_TYPE  # a second option 53 would make parse drop it anyway
    if b"PXEClient" in data or b"HTTPClient" in data:
        return None
    try:
        vendor_class = _options(data, _OPTIONS_AT, len(data), "option").get(OPT_VENDOR_CLASS)
    except DhcpDropped:
        return PRE_MALFORMED
    if vendor_class is None or not vendor_class.startswith((b"PXEClient", b"HTTPClient")):
        return PRE_NOT_PXE
    return None


def _ipv4(raw: bytes) -> IPv4Address:
    return _ZERO if raw == b"\0\0\0\0" else IPv4Address(raw)  # most often 0.0.0.0


def _address(raw: bytes | None) -> IPv4Address | None:
    """A 4-byte address option; anything else (absent, malformed, 0.0.0.0) is None."""
    if raw is None or len(raw) != 4 or raw == bytes(4):
        return None
    return IPv4Address(raw)


def ignore_reason(req: PxeRequest, port_kind: PortKind) -> str | None:
    """Why a well-formed request on this port gets no answer, or None if it is answered.

    Port 67 answers DISCOVERs only (REQUESTs there are for the site's DHCP server); port 4011
    answers REQUEST/INFORM (boot server discovery), never a DISCOVER.
    """
    if port_kind == "dhcp" and req.message_type != DISCOVER:
        return f"{req.message_name} on port 67 is for the DHCP server, not the proxy"
    if port_kind == "pxe" and req.message_type == DISCOVER:
        return "DHCPDISCOVER on port 4011"
    return None


# -- building --------------------------------------------------------------------------------


def _pxe_vendor_options(req: PxeRequest, port_kind: PortKind) -> bytes | None:
    """Option 43 content, or None to leave option 43 out."""
    if port_kind == "pxe":
        # Boot server reply: echo the boot item the client asked for (PXE spec 2.1, 2.2.5).
        if req.boot_item is None:
            return None
        return bytes([PXE_BOOT_ITEM, len(req.boot_item)]) + req.boot_item + bytes([OPT_END])
    if req.arch is Arch.BIOS:
        return bytes([PXE_DISCOVERY_CONTROL, 1, PXE_BOOT_FILE_ONLY, OPT_END])
    return None


def _option(code: int, value: bytes) -> bytes:
    """One option as TLVs: RFC 3396 parts of at most 255 bytes (one part if it fits; an empty
    value is one empty part)."""
    if len(value) <= 255:
        return bytes((code, len(value))) + value
    return b"".join(bytes((code, len(value[i : i + 255]))) + value[i : i + 255]
                    for i in range(0, len(value), 255))


def build_reply(
    req: PxeRequest, boot: DhcpBoot, server_ip: IPv4Address, port_kind: PortKind
) -> bytes:
    """The proxyDHCP reply to `req`: DHCPOFFER on port 67, DHCPACK on port 4011.

    yiaddr is always 0.0.0.0. `boot.filename` goes into the `file` field when it fits
    (127 bytes + NUL), otherwise into option 67 only.
    """
    filename = boot.filename.encode("utf-8")
    is_url = "://" in boot.filename
    in_file_field = len(filename) < FILE_FIELD_LEN
    sname = b"" if is_url else str(boot.next_server).encode("ascii")
    vendor_class = boot.vendor_class.encode("ascii")

    opts = bytearray((OPT_MESSAGE_TYPE, 1, OFFER if port_kind == "dhcp" else ACK))
    opts += bytes((OPT_SERVER_ID, 4)) + server_ip.packed
    opts += _option(OPT_VENDOR_CLASS, vendor_class)
    if req.client_guid is not None:
        opts += _option(OPT_CLIENT_GUID, req.client_guid)
    vendor = _pxe_vendor_options(req, port_kind)
    if vendor is not None:
        opts += _option(OPT_VENDOR_SPECIFIC, vendor)
    if not in_file_field:
        opts += _option(OPT_BOOTFILE, filename)
    opts.append(OPT_END)

    raw = _HEADER.pack(
        BOOTREPLY, 1, 6, 0, req.xid, 0, req.flags,
        req.ciaddr.packed, _ZERO.packed, boot.next_server.packed, req.giaddr.packed,
        req.mac.packed, sname, filename if in_file_field else b"",
    ) + MAGIC_COOKIE + opts
    return raw + bytes(max(0, MIN_REPLY_LEN - len(raw)))


# -- explain ---------------------------------------------------------------------------------


def synthetic_request(client: BootClient, port_kind: PortKind) -> PxeRequest:
    """The request a real client of this kind sends, so `explain` can show its reply."""
    code, vendor_class = _SYNTHETIC[client.arch]
    return PxeRequest(
        xid=0,
        flags=0x8000 if port_kind == "dhcp" else 0,
        ciaddr=_ZERO,
        giaddr=_ZERO,
        mac=client.mac,
        message_type=DISCOVER if port_kind == "dhcp" else REQUEST,
        arch_code=code,
        arch=client.arch,
        vendor_class=vendor_class,
        ipxe=client.ipxe,
        ipxe_https=client.ipxe_https,
        client_guid=bytes(17),
        boot_item=None,
    )


def _show_pxe_options(value: bytes) -> str:
    try:
        subs = list(_walk(value, 0, len(value), "sub-option"))
    except DhcpDropped:
        return value.hex()
    parts = []
    for code, v in subs:
        name = _PXE_SUBOPTION_NAMES.get(code, str(code))
        parts.append(f"{name}=0x{v.hex()}" if len(v) != 1 else f"{name}={v[0]}")
    return ", ".join(parts) or "(empty)"


def _show_option(code: int, value: bytes) -> str:
    if code == OPT_MESSAGE_TYPE and len(value) == 1:
        return MESSAGE_TYPES.get(value[0], str(value[0]))
    if code == OPT_SERVER_ID and len(value) == 4:
        return str(IPv4Address(value))
    if code in (OPT_VENDOR_CLASS, OPT_BOOTFILE, 66, OPT_USER_CLASS):
        return value.decode("ascii", "replace")
    if code == OPT_VENDOR_SPECIFIC:
        return _show_pxe_options(value)
    if code == OPT_CLIENT_ARCH and len(value) >= 2:
        return str(int.from_bytes(value[:2], "big"))
    return value.hex()


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("ascii", "replace")


def reply_summary(reply: bytes) -> list[tuple[str, str]]:
    """Human-readable fields of a reply built by `build_reply`, for `netbootd explain`."""
    if len(reply) < HEADER_LEN + 4 or reply[HEADER_LEN : HEADER_LEN + 4] != MAGIC_COOKIE:
        raise DhcpDropped("not a DHCP packet")
    opts = list(_walk(reply, HEADER_LEN + 4, len(reply), "option"))
    mtype = next((v for c, v in opts if c == OPT_MESSAGE_TYPE and len(v) == 1), b"")
    op = "BOOTREPLY" if reply[0] == BOOTREPLY else "BOOTREQUEST" if reply[0] == 1 else str(reply[0])
    rows: list[tuple[str, str]] = [
        ("op", f"{op} {MESSAGE_TYPES.get(mtype[0], '?') if mtype else '(no message type)'}"),
        ("xid", f"0x{int.from_bytes(reply[4:8], 'big'):08x}"),
        ("flags", "broadcast" if reply[10] & 0x80 else "unicast"),
        ("chaddr", str(MacAddress(reply[28:34]))),
        ("ciaddr", str(IPv4Address(reply[12:16]))),
        ("yiaddr", str(IPv4Address(reply[16:20]))),
        ("siaddr (next server)", str(IPv4Address(reply[20:24]))),
        ("giaddr", str(IPv4Address(reply[24:28]))),
        ("sname", _cstr(reply[44:108]) or "(empty)"),
        ("file", _cstr(reply[108:236]) or "(empty)"),
    ]
    merged: dict[int, bytes] = {}
    for code, value in opts:
        merged[code] = merged.get(code, b"") + value
    for code, value in merged.items():
        name = _OPTION_NAMES.get(code, "unknown")
        rows.append((f"opt {code} {name}", _show_option(code, value)))
    return rows
