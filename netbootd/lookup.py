"""Gathering, as values, everything the policy needs -- no decisions here.

The HTTP adapter, the DHCP adapter and `explain` all call these, so what `explain` prints is
computed from the same inputs the servers use:

- `server_address`: the configured address, the serving interface's address and the local
  address a request arrived on, handed to `policy.advertised_address`;
- `KnownMacs`: the enrolled MACs (and their host rows), cached until the database changes;
- `script_inputs`: for a host's iPXE script, its host row, the generation it boots, its role's
  re-provision flag, its pending re-provision, its identity's state and machine-id and its
  stem-cell layout (`stem_inputs`), as one `model.ScriptInputs`;
- `discovery_image`, `rule_inputs`: what an unknown machine boots under unknown_policy =
  "discover", and the discovery rules its report is matched against.
"""

from __future__ import annotations

from typing import Any

from netbootd import netutil, policy
from netbootd.config import Config
from netbootd.errors import NotFound
from netbootd.inventory import schema
from netbootd.inventory.records import DiscoveryRule
from netbootd.model import BootChain, BootMode, Host, Image, MacAddress, ScriptInputs, StemCell
from netbootd.stemcell import nfs_tree
from netbootd.store import Store


class KnownMacs:
    """The enrolled MACs, cached until the database changes (`Store.change_stamp`), for the DHCP
    adapter, which asks about every datagram of a flood; and the host rows and role boot chains
    its answers need.

    `refresh(now)` is called once per batch of datagrams: one stamp read (a PRAGMA, ~4 us).
    When the stamp moved, the memo of host rows (`host`) is forgotten at once, so answers follow
    the database as of the batch; the set of 6-byte MACs the pre-filter compares (`packed`) is
    re-read then too, but at most once per `reload_interval` seconds: a re-read costs ~3 ms per
    10,000 hosts, and every commit moves the stamp (a boot storm's reports commit hundreds of
    times a second). A MAC enrolled in between is not in `packed` yet; the adapter lets a few
    such datagrams a second through to `host`, which reads the row.
    """

    def __init__(self, store: Store, reload_interval: float = 1.0) -> None:
        self.store = store
        self.reload_interval = reload_interval
        self._stamp: tuple[int, int] | None = None  # the database as `_hosts` knows it
        self._set_stamp: tuple[int, int] | None = None  # ... and as `packed` knows it
        self._loaded_at = float("-inf")
        self.packed: frozenset[bytes] = frozenset()
        self._hosts: dict[bytes, Host | None] = {}
        self._chains: dict[str, BootChain] = {}

    def refresh(self, now: float) -> frozenset[bytes]:
        """Look at the database's stamp; the current `packed` set. Raises StoreError."""
        stamp = self.store.change_stamp()
        if stamp != self._stamp:
            self._hosts.clear()
            self._chains.clear()
            self._stamp = stamp
        if stamp != self._set_stamp and now - self._loaded_at >= self.reload_interval:
            self.packed = self.store.known_macs_packed()
            self._set_stamp, self._loaded_at = stamp, now
        return self.packed

    def host(self, mac: MacAddress) -> Host | None:
        """`store.host(mac)`, remembered until `refresh` sees the database change (before the
        first `refresh`: not remembered). Raises StoreError."""
        key = mac.packed
        try:
            return self._hosts[key]
        except KeyError:
            pass
        host = self.store.host(mac)
        if self._stamp is not None:
            if len(self._hosts) >= 65536:
                self._hosts.clear()
            self._hosts[key] = host
        return host

    def boot_chain(self, cfg: Config, host: Host) -> BootChain:
        """`boot_chain(store, cfg, host, signing=False)` (what the DHCP adapter asks), remembered
        per role like `host`. Raises StoreError."""
        try:
            return self._chains[host.role]
        except KeyError:
            pass
        chain = boot_chain(self.store, cfg, host, False)
        if self._stamp is not None:
            self._chains[host.role] = chain
        return chain

    def __contains__(self, mac: MacAddress) -> bool:
        return self.host(mac) is not None


def server_address(cfg: Config, arrived_on: str | None) -> str | None:
    """Which address clients are told to contact, for a request that arrived on `arrived_on`
    (None: not a request, e.g. `explain`)."""
    interface = None
    if cfg.advertise_address is None and cfg.interface:
        interface = netutil.interface_ipv4(cfg.interface)
    return policy.advertised_address(cfg.advertise_address, interface, arrived_on)


def ipxe_chain_target(cfg: Config) -> tuple[str | None, int | None]:
    """Where netbootd's iPXE build must chain to for its current config (served.Where): the
    advertised address (None: answered per request, not checked) and the HTTPS port (0: HTTPS
    is off)."""
    return server_address(cfg, None), cfg.https.port if cfg.https.enabled else 0


def script_inputs(store: Store, cfg: Config, mac: MacAddress,
                  arrived_on: str | None) -> ScriptInputs | None:
    """What the policy needs for `mac`'s script; None if it is not enrolled. A host whose role
    has no image (or not the pinned generation) is an operator error, never "unknown"."""
    host = store.host(mac)
    if host is None:
        return None
    # The policy names the generation (a pin, or the role's current one, read with the image in
    # one transaction so a switch is seen whole).
    generation = policy.boot_generation(host)
    image = store.image(host.role, generation)
    if image is None:
        which = f"generation {generation}" if generation is not None else "image"
        raise NotFound(f"role {host.role!r} of {mac} has no {which}")
    role = store.role(host.role)
    server = server_address(cfg, arrived_on)
    identity = store.identity_state(mac)
    public = store.identity(mac, identity.generation) if identity is not None else None
    return ScriptInputs(
        host=host,
        image=image,
        flag_word=policy.flag_word(role.provision_flag if role else None, cfg.provision.flag),
        arming=store.provision(mac),
        identity=identity,
        stem=stem_inputs(store, cfg, host, server),
        server=server,
        machine_id=public.machine_id if public is not None else None,
        inventory=_inventory(store, mac),
    )


def _inventory(store: Store, mac: MacAddress) -> dict[str, Any] | None:
    """The host's latest inventory document (what a role template reads as host.inventory)."""
    rec = store.inventory(mac)
    return schema.load(rec.inventory).document() if rec is not None else None


def stem_inputs(store: Store, cfg: Config, host: Host, server: str | None) -> StemCell:
    """The role's boot mode and, for nfs-store, the NFS server, export paths and the synced
    toplevel; for iscsi, the portal and the host's LUN. `server`: the advertised address."""
    boot = store.role_boot(host.role)
    if boot.mode is BootMode.NFS_STORE:
        synced = store.nfs_sync(host.role)
        return StemCell(
            boot,
            nfs_server=policy.nfs_server(cfg.nfs.server, server),
            nfs_store=str(nfs_tree.store_dir(cfg)),
            nfs_host=str(nfs_tree.host_dir(cfg, host.mac)),
            toplevel=synced[0] if synced else None,  # what is in the store, not what is wanted
            upper=cfg.nfs.upper,
        )
    if boot.mode is BootMode.ISCSI:
        return StemCell(boot, portal=policy.iscsi_portal(cfg.iscsi.portal, server),
                        lun=store.lun(host.mac))
    return StemCell(boot)


def boot_chain(store: Store, cfg: Config, host: Host, signing: bool) -> BootChain:
    """The host's boot chain: its role's settings (`role_chain`) over the configured defaults;
    `signing`: netbootd has Secure Boot keys to sign UKIs with."""
    return policy.boot_chain(store.role_chain(host.role), cfg.boot.transport, cfg.boot.http_boot,
                             signing, cfg.boot.loader)


def discovery_image(store: Store, cfg: Config) -> Image:
    """The image unknown machines boot under unknown_policy = "discover": the current generation
    of the `discovery.role` role. Its absence is an operator error (the script is a 500 that
    says so), never silence."""
    image = store.image(cfg.discovery.role, None)
    if image is None:
        raise NotFound(f"unknown_policy is \"discover\" but role {cfg.discovery.role!r} has no "
                       "image: build images/discovery/ and `netbootd role add "
                       f"{cfg.discovery.role} --kernel ... --initrd ...`")
    return image


def rule_inputs(store: Store) -> list[DiscoveryRule]:
    """The discovery rules, in the order the policy tries them."""
    return store.rules()
