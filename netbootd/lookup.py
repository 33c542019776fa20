"""Lookups for stem-cell boots: everything `policy.stem_cell` needs to decide how a host boots
under its role's mode, gathered from the store and the config as values. No decisions here."""

from __future__ import annotations

from netbootd.config import Config
from netbootd.errors import NetbootdError
from netbootd.model import BootMode, Host, StemCell
from netbootd.stemcell import iscsi, nfs_tree
from netbootd.store import Store


def stem_inputs(store: Store, cfg: Config, host: Host, server: str | None) -> StemCell:
    """`server`: the address the host reached netbootd at (used when neither nfs.server /
    iscsi.portal nor advertise_address says where hosts find the storage)."""
    boot = store.role_boot(host.role)
    if boot.mode is BootMode.NFS_STORE:
        synced = store.nfs_sync(host.role)
        nfs_server = str(cfg.nfs.server) if cfg.nfs.server else (
            str(cfg.advertise_address) if cfg.advertise_address else server)
        return StemCell(
            boot,
            nfs_server=nfs_server,
            nfs_store=str(nfs_tree.store_dir(cfg)),
            nfs_host=str(nfs_tree.host_dir(cfg, host.mac)),
            toplevel=synced[0] if synced else None,  # what is in the store, not what is wanted
            upper=cfg.nfs.upper,
        )
    if boot.mode is BootMode.ISCSI:
        try:
            portal: str | None = iscsi.portal(cfg, server)
        except NetbootdError:
            portal = None
        return StemCell(boot, portal=portal, lun=store.lun(host.mac))
    return StemCell(boot)
