"""The NFS export tree of `nfs-store` hosts, under `nfs.root` (default `<state>/nfs`):

    store/<hash>-<name>         every synced role's closure, one directory (or file) per store
                                path, shared by all roles: a path already there is never copied
                                again (deduplicated by store path); exported read-only
    hosts/<aa-bb-cc-dd-ee-ff>/  one writable directory per host; exported read-write

`netbootd nfs sync <role>` copies the closure of the role's toplevel into store/ (each path
into a temporary name, then renamed: a reader sees a path whole or not at all) and records what
the role's hosts now boot. `netbootd nfs exports` renders ganesha.conf or the kernel's exports
file for exactly these directories (codec/nfs.py). The stem-cell initramfs
(images/stem-cell/) mounts store/ read-only under the store directory with an overlay and the
host's directory read-write, then switches into the toplevel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netbootd.codec.nfs import Export
from netbootd.config import Config
from netbootd.errors import InvalidInput, NfsTreeError, NotFound
from netbootd.model import BootMode, Host, MacAddress
from netbootd.store import Store

log = logging.getLogger("netbootd.nfs")

STORE_EXPORT_ID = 1
FIRST_HOST_EXPORT_ID = 100
_STORE_NAME = re.compile(r"[0-9a-z]{32}-[A-Za-z0-9._+?=-]+")




def store_dir(cfg: Config) -> Path:
    return cfg.nfs_root / "store"


def host_dir(cfg: Config, mac: MacAddress) -> Path:
    return cfg.nfs_root / "hosts" / mac.hyphen


@dataclass
class SyncReport:
    toplevel: str
    paths: int = 0
    present: int = 0  # already in the store (another role's, or an earlier sync's)
    copied: int = 0
    bytes_copied: int = 0

    def summary(self) -> str:
        return (f"{self.paths} store paths: {self.present} already in the NFS store, "
                f"{self.copied} copied ({self.bytes_copied / 1e6:.1f} MB)")


def _tree_size(p: Path) -> int:
    if not p.is_dir() or p.is_symlink():
        return p.lstat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, fs in os.walk(p) for f in fs)


def _rm_tree(p: Path) -> None:
    """Remove a (partial) copy of a store path, whose directories may be read-only."""
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir() and not p.is_symlink():
        for d, dirs, _ in os.walk(p):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(Path(d) / name, 0o755)
        with contextlib.suppress(OSError):
            os.chmod(p, 0o755)
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _copy_path(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    _rm_tree(tmp)
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
        elif src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        os.replace(tmp, dest)
    except OSError as e:
        _rm_tree(tmp)
        raise NfsTreeError(f"cannot copy {src} into the NFS store: {e.strerror or e}") from None


def sync(store: Store, cfg: Config, role: str, toplevel: str,
         closure: Callable[[Path], list[Path]], log_line: Callable[[str], None] | None = None
         ) -> SyncReport:
    """Copy the closure of `toplevel` (`closure(path)`: Nix's `nix-store -qR`) into the shared
    store, skipping paths already there, and record that `role` boots `toplevel`."""
    top = Path(toplevel)
    if not top.is_absolute() or not _STORE_NAME.fullmatch(top.name):
        raise InvalidInput(f"not a store path: {toplevel!r}")
    if not top.exists():
        raise NotFound(f"{toplevel} does not exist here (build or copy it first)")
    paths = closure(top)
    if top not in paths:
        paths.append(top)
    rep = SyncReport(str(top), len(paths))
    dest_root = store_dir(cfg)
    dest_root.mkdir(parents=True, exist_ok=True)
    os.chmod(dest_root, 0o755)
    for p in sorted(paths):
        if p.parent != top.parent or not _STORE_NAME.fullmatch(p.name):
            raise NfsTreeError(f"{p} is not in {top.parent} like {top}: one store directory only")
        dest = dest_root / p.name
        if dest.exists() or dest.is_symlink():
            rep.present += 1
            continue
        _copy_path(p, dest)
        rep.copied += 1
        rep.bytes_copied += _tree_size(dest)
        if log_line:
            log_line(f"copied {p.name}")
    store.record_nfs_sync(role, str(top), [str(p) for p in sorted(paths)])
    return rep


def ensure_host_dir(store: Store, cfg: Config, mac: MacAddress) -> tuple[Path, int]:
    """The host's writable directory (made if missing) and its stable export id."""
    d = host_dir(cfg, mac)
    try:
        d.mkdir(parents=True, exist_ok=True)
        if stat.S_IMODE(d.stat().st_mode) != 0o755:
            os.chmod(d, 0o755)
    except OSError as e:
        raise NfsTreeError(f"cannot create {d}: {e.strerror or e}") from None
    return d, store.nfs_export_id(mac, FIRST_HOST_EXPORT_ID)


def nfs_hosts(store: Store) -> list[Host]:
    """Enrolled hosts whose role boots nfs-store."""
    modes = store.role_boots()
    return [h for h in store.hosts()
            if (b := modes.get(h.role)) is not None and b.mode is BootMode.NFS_STORE]


def exports(store: Store, cfg: Config) -> list[Export]:
    """The store (read-only) and every nfs-store host's directory (read-write); the host
    directories are made here if missing."""
    root = store_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    clients = tuple(cfg.nfs.clients)
    out = [Export(STORE_EXPORT_ID, str(root), False, clients, "the shared store (read-only)")]
    for h in nfs_hosts(store):
        d, export_id = ensure_host_dir(store, cfg, h.mac)
        out.append(Export(export_id, str(d), True, clients, f"{h.name} ({h.mac}), role {h.role}"))
    return out

