"""Wires the servers together and owns their lifecycle: startup, signals, graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from netbootd import descriptors, lookup, netutil, policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import ConfigError
from netbootd.fsutil import private_dir
from netbootd.identity import tls, vault
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.vault import Vault
from netbootd.ipxe.build import ipxe_dir
from netbootd.ipxe.served import ServedIpxe
from netbootd.leases import Leases
from netbootd.periodic import Periodic
from netbootd.roles.artifacts import Artifacts, remove_dead_temp_files
from netbootd.roles.uki import UkiBuilder
from netbootd.servers import api, chain_http, dashboard, metrics
from netbootd.servers.chain_http import ChainService
from netbootd.servers.dhcp import DhcpServer
from netbootd.servers.http import HttpServer
from netbootd.servers.iscsi import IscsiReconciler
from netbootd.servers.netwatch import InterfaceWatch
from netbootd.servers.tftp import TftpServer
from netbootd.servers.web import Guard, IdentityService
from netbootd.stemcell.gold import remove_dead_gold_imports
from netbootd.store import Store

log = logging.getLogger("netbootd")

def interface_ipv4(name: str) -> IPv4Address:
    """The IPv4 address to advertise for `interface` (ConfigError if it has none)."""
    addr = netutil.interface_ipv4(name)
    if addr is None:
        raise ConfigError(f"interface: {name!r} does not exist or has no IPv4 address")
    return addr


class Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class ProvisionSweeper(Periodic):
    """Every `interval` seconds, clear re-provision flags whose TTL passed (policy.provision_flag
    decides) so `provision-expired` is recorded even for a host that never boots again. A boot
    after the TTL never gets the flag either way: the script handler asks the same policy."""

    name = "re-provision expiry sweep"

    def __init__(self, store: Store, interval: float = 30.0) -> None:
        super().__init__(interval, log)
        self.store = store

    def sweep(self) -> None:
        now = time.time()
        for mac in self.store.expire_provisions(now, lambda a: policy.provision_flag(a, now)):
            log.info("mac=%s re-provision flag expired: cleared", mac)

    async def tick(self) -> None:
        self.sweep()


class Housekeeping(Periodic):
    """Every `guard.interval` seconds, the summary rows of refusals the audit limiter held back
    and the expiry of discovered machines not seen for `discovery.expire` (never enrolled: they
    go even when no other report comes); every `retention.interval`, the retention sweep (old
    events, per-host and unattributed caps, long-expired tokens): what unauthenticated traffic
    writes stays bounded."""

    name = "audit and retention housekeeping"

    def __init__(self, cfg: Config, store: Store, guard: Guard) -> None:
        super().__init__(max(1.0, min(guard.interval or 60.0, 60.0)), log)
        self.cfg, self.store, self.guard = cfg, store, guard
        self._next_sweep = 0.0

    def sweep(self, now: float) -> None:
        r = self.cfg.retention
        before = now - r.events_days * 86400 if r.events_days else None
        gone = self.store.purge_events(before, r.events_per_host, r.unattributed_events)
        if gone:
            log.info("retention: %d old event(s) deleted", gone)
        self._next_sweep = now + r.interval

    def expire_discoveries(self, now: float) -> int:
        gone = self.store.expire_discovered(now, self.cfg.discovery.expire)
        if gone:
            log.info("discovery: %d discovered machine(s) not seen for %ds forgotten "
                     "(discovery.expire)", gone, self.cfg.discovery.expire)
        return gone

    async def tick(self) -> None:
        now = time.time()
        self.guard.flush(self.store, now)
        await asyncio.to_thread(self.expire_discoveries, now)
        if now >= self._next_sweep:  # in a thread: a big sweep must not pause the servers
            await asyncio.to_thread(self.sweep, now)


class RsaFiller(Periodic):
    """Every few seconds, the RSA host keys bulk enrollment left pending (vault.complete_rsa),
    one at a time in a thread (OpenSSL releases the GIL: serving goes on), a bounded number per
    round. A bundle that needs one first makes it itself (servers/identity_bundle.py)."""

    name = "RSA host key generation"

    def __init__(self, store: Store, keys: Vault, interval: float = 5.0, batch: int = 20) -> None:
        super().__init__(interval, log)
        self.store, self.keys, self.batch = store, keys, batch
        self.made = 0

    async def tick(self) -> None:
        pending = await asyncio.to_thread(self.store.pending_rsa, self.batch)
        for pub in pending:
            await asyncio.to_thread(vault.complete_rsa, self.store, self.keys, pub)
            self.made += 1
        if pending:
            log.info("made %d pending RSA host key(s) (%d so far)", len(pending), self.made)


class TlsRenewer(Periodic):
    """Hourly: re-issue the HTTPS certificate before it expires, or when the advertised
    address changed (policy.tls_reissue decides; the running context follows the files)."""

    name = "TLS certificate renewal"

    def __init__(self, cfg: Config, interval: float = 3600.0) -> None:
        super().__init__(interval, log)
        self.cfg = cfg

    async def tick(self) -> None:
        cfg = self.cfg
        address = lookup.server_address(cfg, None)
        await asyncio.to_thread(tls.ensure, cfg.state_dir, [address] if address else [],
                                cfg.https.names)


@dataclass
class Netbootd:
    cfg: Config
    servers: list[Server] = field(default_factory=list)

    @classmethod
    def build(cls, cfg: Config) -> Netbootd:
        # The interface must have an address to start with; after that it is followed (a new
        # address or a recreated interface: servers/netwatch.py), not frozen into the config.
        started_on = interface_ipv4(cfg.interface) if cfg.interface else None
        store = Store(cfg.state_dir)
        artifacts = Artifacts(cfg.state_dir)
        swept = remove_dead_temp_files(cfg.state_dir)  # what killed imports left (#13)
        if swept.removed:
            log.info("removed %d temp file(s) of killed imports (%d bytes)", swept.removed,
                     swept.bytes)
        if gold := remove_dead_gold_imports(cfg):
            log.info("removed %d temp file(s) of killed gold image imports", gold)
        renderer = ScriptRenderer(cfg.templates_dir)
        keys = Vault(cfg.state_dir)
        server_tls = None
        if cfg.https.enabled:
            first = cfg.advertise_address or started_on
            addresses = [str(first)] if first else []
            if tls.ensure(cfg.state_dir, addresses, cfg.https.names):
                log.info("created netbootd's CA and HTTPS certificate in %s",
                         tls.tls_dir(cfg.state_dir))
            server_tls = tls.ServerTls(cfg.state_dir)
            log.info("HTTPS key pin %s", server_tls.pin)
        else:
            log.warning("HTTPS is disabled: armed host identities are not offered")
        ident = IdentityService(
            keys=keys,
            tls=server_tls,
            arp=ArpVerifier(cfg.identity.verify_arp),
            secret=keys.token_secret(),
            token_ttl=cfg.identity.token_ttl,
        )
        # The proxyDHCP responder records each enrolled MAC's DHCP exchange; the HTTP adapter
        # binds that MAC's boot to it (policy.boot_binding).
        guard = Guard(Leases(cfg.security.dhcp_window), cfg.security.unauthenticated_interval)
        # netbootd's own iPXE build, while it trusts the CA and chains to where HTTPS is
        ipxe = ServedIpxe(cfg.state_dir, lambda: lookup.ipxe_chain_target(cfg))
        http = HttpServer(cfg, store, artifacts, renderer, ident, guard, ipxe)
        chain_http.register(http.app, ChainService(UkiBuilder(cfg.state_dir, artifacts),
                                                   cfg.boot.uki_stub, cfg.state_dir,
                                                   cfg.boot.uki_stub_arm64, cfg.boot.shim))
        api.register(http.app)  # /api/v1/... (HTTPS + bearer tokens), /metrics, the dashboard
        metrics.register(http.app)
        dashboard.register(http.app)
        servers: list[Server] = [http, ProvisionSweeper(store), Housekeeping(cfg, store, guard)]
        if cfg.identity.rsa_fill_interval > 0:
            servers.append(RsaFiller(store, keys, cfg.identity.rsa_fill_interval))
        if server_tls is not None:
            servers.append(TlsRenewer(cfg))
        if cfg.iscsi.reconcile_interval > 0:  # keeps tgtd holding the iSCSI hosts' targets
            servers.append(IscsiReconciler(cfg, store))
        if cfg.tftp.enabled:
            root = cfg.tftp_root
            if root is None:  # no distro iPXE: an empty root, netbootd's build on top of it
                root = private_dir(ipxe_dir(cfg.state_dir) / "tftp-root")
                log.warning("no tftp.root configured and /usr/lib/ipxe is absent: TFTP serves "
                            "only netbootd's own iPXE build (`netbootd ipxe build`)")
            servers.append(
                TftpServer(
                    root, str(cfg.tftp.listen), cfg.tftp.port,
                    trusted_symlinks=cfg.boot_file_names, overlay=ipxe.path,
                    max_transfers=cfg.tftp.max_transfers,
                    max_per_source=cfg.tftp.max_per_source,
                )
            )
        if cfg.dhcp.enabled:
            dhcp = DhcpServer(cfg, store, guard.leases, ipxe=ipxe)
            http.app[metrics.DHCP_STATS] = dhcp.stats
            servers.append(dhcp)
            if cfg.interface:
                servers.insert(0, InterfaceWatch(cfg.interface, [dhcp.interface_changed]))
        return cls(cfg, servers)

    def check_descriptors(self) -> None:
        """RLIMIT_NOFILE raised to what the limits need; if still short, one warning and a lower
        HTTP connection limit, so HTTP cannot take TFTP's and proxyDHCP's (descriptors.py)."""
        http = [s for s in self.servers if isinstance(s, HttpServer)]
        tftp = [s for s in self.servers if isinstance(s, TftpServer)]
        budget = descriptors.Budget(
            self.cfg.http.max_connections if http else 0,
            sum(t.max_transfers for t in tftp),
            any(isinstance(s, DhcpServer) for s in self.servers),
        )
        verdict = descriptors.check(budget)
        if verdict.raised_from is not None:
            log.info("descriptor limit raised from %d to %d (hard limit %d)",
                     verdict.raised_from, verdict.soft, verdict.hard)
        if verdict.warning is not None:
            log.warning("%s", verdict.warning)
            for h in http:
                h.connection_cap = verdict.http_connections

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started: list[Server] = []
        self.check_descriptors()
        try:
            for s in self.servers:
                await s.start()
                started.append(s)
            # Everything built at startup lives until shutdown: keep it out of the collector's
            # full passes, which otherwise pause serving for tens of ms (DHCP latency spikes).
            gc.freeze()
            cfg = self.cfg
            log.info(
                "netbootd serving: http=%s:%d https=%s tftp=%s dhcp=%s advertise=%s state=%s",
                cfg.http.listen, cfg.http.port,
                f"{cfg.https.listen}:{cfg.https.port}" if cfg.https.enabled else "off",
                f"{cfg.tftp.port} root={cfg.tftp_root}"
                if cfg.tftp.enabled and cfg.tftp_root else "off",
                f"{cfg.dhcp.port}+{cfg.dhcp.pxe_port}" if cfg.dhcp.enabled else "off",
                cfg.advertise_address or (f"{cfg.interface}'s address" if cfg.interface
                                          else "(address the client reached)"),
                cfg.state_dir,
            )
            await stop.wait()
            log.info("shutting down")
        finally:
            for s in reversed(started):
                try:
                    await s.stop()
                except Exception:
                    log.exception("error while stopping %s", type(s).__name__)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
