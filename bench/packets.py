"""Pre-built PXE DHCP packets and raw-socket helpers for the load generators.

The DISCOVER is what a real firmware PXE client sends (options, order and vendor class as in
tests/data/pcaps: OVMF native PXE is arch 7, SeaBIOS's PXE arch 0), as a whole Ethernet frame
from 0.0.0.0:68 to the broadcast address. Only the xid changes between sends: UDP checksum 0
("none", valid for IPv4) keeps that a 4-byte patch.
"""

from __future__ import annotations

import ctypes
import socket
import struct

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
XID_OFFSET = 14 + 20 + 8 + 4  # Ethernet + IPv4 (no options) + UDP + BOOTP op/htype/hlen/hops
BOOTP_OFFSET = 14 + 20 + 8

PARAMS_FIRMWARE = bytes(
    [
        1,
        2,
        3,
        4,
        5,
        6,
        12,
        13,
        15,
        17,
        18,
        22,
        23,
        28,
        40,
        41,
        42,
        43,
        50,
        51,
        54,
        58,
        59,
        60,
        66,
        67,
        97,
        128,
        129,
        130,
        131,
        132,
        133,
        134,
        135,
    ]
)
PARAMS_IPXE = bytes(
    [
        1,
        3,
        6,
        7,
        12,
        15,
        17,
        26,
        43,
        60,
        66,
        67,
        119,
        128,
        129,
        130,
        131,
        132,
        133,
        134,
        135,
        175,
        203,
    ]
)
VENDOR = {0: b"PXEClient:Arch:00000:UNDI:002001", 7: b"PXEClient:Arch:00007:UNDI:003000"}
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def _opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def bootp(
    mac: bytes,
    xid: int,
    msg: int,
    arch: int,
    ipxe: bool = False,
    ciaddr: bytes = bytes(4),
    broadcast: bool = True,
) -> bytes:
    """The BOOTP/DHCP payload of a PXE client's request."""
    opts = _opt(53, bytes([msg])) + _opt(57, struct.pack("!H", 1472))
    if ipxe:
        opts += (
            _opt(93, struct.pack("!H", arch))
            + _opt(94, b"\x01\x02\x01")
            + _opt(60, VENDOR[arch])
            + _opt(77, b"iPXE")
            + _opt(55, PARAMS_IPXE)
            + _opt(175, b"\xb1\x05\x01\x1a\xf4\x10\x00")
            + _opt(61, b"\x01" + mac)
            + _opt(97, bytes(1) + mac * 2 + bytes(4))
        )
    else:
        opts += (
            _opt(55, PARAMS_FIRMWARE)
            + _opt(97, bytes(1) + mac * 2 + bytes(4))
            + _opt(94, b"\x01\x03\x00")
            + _opt(93, struct.pack("!H", arch))
            + _opt(60, VENDOR[arch])
        )
    opts += b"\xff"
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        6,
        0,
        xid,
        0,
        0x8000 if broadcast else 0,
        ciaddr,
        bytes(4),
        bytes(4),
        bytes(4),
        mac + bytes(10),
        b"",
        b"",
    )
    return header + b"\x63\x82\x53\x63" + opts


def _ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def broadcast_frame(src_mac: bytes, payload: bytes, sport: int = 68, dport: int = 67) -> bytearray:
    """Ethernet broadcast frame: 0.0.0.0:sport -> 255.255.255.255:dport, UDP checksum 0."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp) + len(payload),
            0,
            0,
            64,
            17,
            0,
            bytes(4),
            b"\xff" * 4,
        )
    )
    ip[10:12] = struct.pack("!H", _ip_checksum(bytes(ip)))
    return bytearray(
        b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_IP) + bytes(ip) + udp + payload
    )


def set_xid(frame: bytearray, xid: int) -> None:
    frame[XID_OFFSET : XID_OFFSET + 4] = xid.to_bytes(4, "big")


# Classic BPF: IPv4, UDP, not a fragment, destination port 68 (what `tcpdump -dd 'udp dst port 68'`
# compiles to, for Ethernet). Keeps our own outgoing DISCOVERs (dport 67) and all else out.
_BPF_DPORT_68 = [
    (0x28, 0, 0, 12),
    (0x15, 0, 8, ETH_P_IP),
    (0x30, 0, 0, 23),
    (0x15, 0, 6, 17),
    (0x28, 0, 0, 20),
    (0x45, 4, 0, 0x1FFF),
    (0xB1, 0, 0, 14),
    (0x48, 0, 0, 16),
    (0x15, 0, 1, 68),
    (0x06, 0, 0, 262144),
    (0x06, 0, 0, 0),
]
_keep_alive: list[object] = []


def reply_socket(iface: str, rcvbuf: int = 16 << 20) -> socket.socket:
    """AF_PACKET socket on iface that receives UDP datagrams to port 68 (whatever their MAC),
    with kernel receive timestamps (SO_TIMESTAMPNS)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    prog = b"".join(struct.pack("HBBI", *i) for i in _BPF_DPORT_68)
    buf = ctypes.create_string_buffer(prog)
    _keep_alive.append(buf)
    s.setsockopt(
        socket.SOL_SOCKET,
        SO_ATTACH_FILTER,
        struct.pack("HL", len(_BPF_DPORT_68), ctypes.addressof(buf)),
    )
    s.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVBUFFORCE if hasattr(socket, "SO_RCVBUFFORCE") else 33,
        rcvbuf,
    )
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((iface, ETH_P_IP))
    s.setblocking(False)
    return s


def send_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((iface, 0))
    return s


def recv_reply(s: socket.socket) -> tuple[bytes, int] | None:
    """(BOOTP payload, kernel receive time in ns) of the next queued reply, or None."""
    try:
        data, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(16))
    except BlockingIOError:
        return None
    ts = 0
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
            sec, nsec = struct.unpack("qq", cdata[:16])
            ts = sec * 1_000_000_000 + nsec
    ihl = (data[14] & 0x0F) * 4
    return data[14 + ihl + 8 :], ts


def parse_reply(p: bytes) -> dict[str, object] | None:
    """The fields of a DHCP reply the generators check; None if it is not one."""
    if len(p) < 240 or p[0] != 2 or p[236:240] != b"\x63\x82\x53\x63":
        return None
    opts: dict[int, bytes] = {}
    i = 240
    while i < len(p):
        code = p[i]
        if code == 0:
            i += 1
            continue
        if code == 255 or i + 1 >= len(p):
            break
        n = p[i + 1]
        opts[code] = opts.get(code, b"") + p[i + 2 : i + 2 + n]
        i += 2 + n
    file_field = p[108:236].split(b"\0", 1)[0]
    return {
        "xid": int.from_bytes(p[4:8], "big"),
        "chaddr": p[28:34],
        "siaddr": socket.inet_ntoa(p[20:24]),
        "msg": opts.get(53, b"\0")[0],
        "file": (file_field or opts.get(67, b"").rstrip(b"\0")).decode("latin-1"),
        "has_43": 43 in opts,
    }
