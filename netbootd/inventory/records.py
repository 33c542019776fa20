"""What the store hands back about discovered machines, inventories and discovery rules: plain
frozen values (the documents stay canonical JSON text; schema.load reads one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from netbootd.model import MacAddress


@dataclass(frozen=True)
class Discovered:
    """An unknown machine that reported its inventory on a discovery boot."""

    mac: MacAddress
    first_seen: float
    last_seen: float
    source_ip: str | None
    boot: str | None  # the discovery boot's id (tokens.boot_id)
    reports: int
    inventory: str  # canonical netbootd-inventory/1 JSON


@dataclass(frozen=True)
class InventoryRecord:
    """One distinct inventory of a host: first reported, last reported (the same document
    again), and what changed from the one before."""

    id: int
    mac: MacAddress
    reported: float
    last_reported: float
    boot: str | None
    source_ip: str | None
    digest: str
    inventory: str
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscoveryRule:
    """Enroll a discovered machine automatically when every given field of `match` matches:
    vendor, product, serial, disk_serial (shell globs), mac_prefix (a prefix), nics (a count)."""

    id: int
    name: str
    match: dict[str, str | int] = field(default_factory=dict)
    role: str = ""
    hostname: str | None = None  # a template: {serial} {mac} {mac_hex} {product} {vendor} {n}
    created: float = 0.0
    enrolled: int = 0  # machines it enrolled so far ({n} of the next one)
