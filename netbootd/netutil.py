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


def parse_fib_trie(text: str) -> tuple[frozenset[IPv4Address], frozenset[IPv4Address]]:
    """(this host's addresses, its subnets' broadcast addresses) from /proc/net/fib_trie: each
    address line is followed by the routes it is the key of (`/32 host LOCAL`, `/32 link
    BROADCAST`)."""
    local: set[IPv4Address] = set()
    broadcast: set[IPv4Address] = set()
    last: IPv4Address | None = None
    for line in text.splitlines():
        item = line.strip()
        if item.startswith("|-- "):
            try:
                last = IPv4Address(item[4:].strip())
            except ValueError:
                last = None
        elif last is not None and item.startswith("/"):
            if item.endswith("host LOCAL"):
                local.add(last)
            elif item.endswith("link BROADCAST"):
                broadcast.add(last)
    return frozenset(local), frozenset(broadcast)


def local_ipv4_addresses() -> frozenset[IPv4Address]:
    """Every IPv4 address of this host's network namespace, and its subnets' broadcast
    addresses (empty if /proc/net/fib_trie cannot be read)."""
    try:
        with open("/proc/net/fib_trie") as f:
            local, broadcast = parse_fib_trie(f.read())
    except OSError:
        return frozenset()
    return local | broadcast
