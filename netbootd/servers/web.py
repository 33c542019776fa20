"""What every HTTP handler shares: the application's keys (config, store, artifacts, renderer,
served iPXE, identity service, guard), the identity service and the guard, and request helpers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from aiohttp import web

from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.tls import ServerTls
from netbootd.identity.vault import Vault
from netbootd.ipxe.served import ServedIpxe
from netbootd.leases import Leases
from netbootd.model import MacAddress
from netbootd.ratelimit import PerKey
from netbootd.roles.artifacts import Artifacts
from netbootd.store import Store

MAX_EVENT_BODY = 16 * 1024

CFG = web.AppKey("cfg", Config)
STORE = web.AppKey("store", Store)
ARTIFACTS = web.AppKey("artifacts", Artifacts)
RENDERER = web.AppKey("renderer", ScriptRenderer)
IPXE = web.AppKey("ipxe", ServedIpxe)


@dataclass
class IdentityService:
    """What the identity endpoints need besides the store; `https_port` is set once bound.
    `nonce` makes the random bytes of every token and `clock` their issue time (tests pass
    fixed ones)."""

    keys: Vault
    tls: ServerTls | None
    arp: ArpVerifier
    secret: bytes
    token_ttl: int
    https_port: int | None = None
    nonce: Callable[[], bytes] = field(default=lambda: os.urandom(16))
    clock: Callable[[], float] = time.time


IDENTITY = web.AppKey("identity", IdentityService)


@dataclass
class Guard:
    """What binds boots to machines and bounds what unauthenticated requests make us write:
    the DHCP exchanges the proxyDHCP responder saw (shared with it), and the limiters of audit
    rows and log lines (ratelimit.py)."""

    leases: Leases
    interval: float = 60.0
    audits: PerKey = field(init=False)  # refused / unauthenticated requests, per key
    unbound: PerKey = field(init=False)  # log lines of explain-style script fetches, per MAC

    def __post_init__(self) -> None:
        self.audits = PerKey(self.interval)
        self.unbound = PerKey(self.interval)

    def audit(self, store: Store, key: Hashable, now: float, row: Audit) -> int | None:
        """Write `row` (with its count) unless its key had one this interval; then it is
        counted for the summary `flush` writes. Returns the count written, or None."""
        n = self.audits.admit(key, now, row)
        if n is not None:
            store.audit(row.mac, row.event, row.peer, {**row.detail, "count": n}, row.boot)
        return n

    def flush(self, store: Store, now: float) -> int:
        """One summary row per key whose interval is over with refusals still uncounted (the
        serve loop calls this every interval). Returns the rows written."""
        due = self.audits.due(now)
        for _key, n, row in due:
            assert isinstance(row, Audit)
            store.audit(row.mac, row.event, row.peer,
                        {**row.detail, "count": n, "summary": True}, row.boot)
        return len(due)


@dataclass(frozen=True)
class Audit:
    """An audit row a refused or unauthenticated request asks for."""

    event: str  # denied | identity-denied | unauthenticated-report
    mac: MacAddress | None
    peer: str | None
    detail: dict[str, object]
    boot: str | None = None


GUARD = web.AppKey("guard", Guard)


def sockname(request: web.Request) -> tuple[str, int] | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return (str(sockname[0]), int(sockname[1])) if sockname else None


def local_ip(request: web.Request) -> str | None:
    sock = sockname(request)
    return sock[0] if sock else None


def mac_of(request: web.Request) -> MacAddress:
    return MacAddress.parse(request.match_info["mac"])
