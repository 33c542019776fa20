"""Asking the kernel about local interfaces."""

from __future__ import annotations

import fcntl
import socket
import struct
from ipaddress import IPv4Address

SIOCGIFADDR = 0x8915


def interface_ipv4(name: str) -> IPv4Address | None:
    """The primary IPv4 address of interface `name`; None if it has none or does not exist."""
    if not name or len(name) > 15 or "/" in name or "\0" in name:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()))
        except OSError:
            return None
    return IPv4Address(res[20:24])
