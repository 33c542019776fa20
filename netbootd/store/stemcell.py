"""SQL for stem-cell boots (migration 5): role boot modes, gold images, hosts' iSCSI LUNs, the
NFS store's synced closures and the per-host NFS exports."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import BootMode, GoldImage, IscsiLun, MacAddress, RoleBoot
from netbootd.store.db import Database, Row, fetch_all

_BOOT_COLUMNS = "role, mode, toplevel, gold, data_size, san, local"
_GOLD_COLUMNS = "name, version, file, size, created, source"
_LUN_COLUMNS = ("mac, tid, target, initiator, gold, gold_version, method, root, data, data_size,"
                " created, cloned")


class StemCellQueries(Database):
    # -- role boot modes ------------------------------------------------------------------

    def role_boot(self, role: str) -> RoleBoot:
        """The role's boot mode and settings; a role nobody set a mode for boots `ramdisk`."""
        rows = self._read(f"SELECT {_BOOT_COLUMNS} FROM role_boot WHERE role=?", (role,))
        return _role_boot(rows[0]) if rows else RoleBoot(role)

    def role_boots(self) -> dict[str, RoleBoot]:
        rows = self._read(f"SELECT {_BOOT_COLUMNS} FROM role_boot")
        return {b.role: b for b in map(_role_boot, rows)}

    def set_role_boot(self, boot: RoleBoot) -> RoleBoot:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM roles WHERE name=?", (boot.role,)).fetchone() is None:
                raise NotFound(f"unknown role {boot.role!r}")
            if boot.gold is not None and db.execute(
                "SELECT 1 FROM iscsi_gold WHERE name=?", (boot.gold,)
            ).fetchone() is None:
                raise NotFound(f"no gold image {boot.gold!r} (netbootd iscsi gold import)")
            db.execute(
                f"INSERT INTO role_boot({_BOOT_COLUMNS}, changed) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(role) DO UPDATE SET mode=excluded.mode, toplevel=excluded.toplevel,"
                " gold=excluded.gold, data_size=excluded.data_size, san=excluded.san,"
                " local=excluded.local, changed=excluded.changed",
                (boot.role, boot.mode.value, boot.toplevel, boot.gold, boot.data_size, boot.san,
                 boot.local, time.time()),
            )
        return boot

    # -- gold images ------------------------------------------------------------------------

    def add_gold(self, name: str, file_for: Callable[[int], str], size: int, source: str,
                 place: Callable[[int], None]) -> GoldImage:
        """Append a version of gold image `name`: `place(version)` moves the (already written)
        file to `file_for(version)` inside the transaction that numbers it -- a rename, quick --
        so two imports never claim one version and no row names a file that is not there."""
        now = time.time()
        with self._tx() as db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM iscsi_gold WHERE name=?", (name,)
            ).fetchone()
            version = int(last) + 1
            place(version)
            db.execute(
                f"INSERT INTO iscsi_gold({_GOLD_COLUMNS}) VALUES (?,?,?,?,?,?)",
                (name, version, file_for(version), size, now, source),
            )
        return GoldImage(name, version, file_for(version), size, now, source)

    def gold(self, name: str, version: int | None = None) -> GoldImage | None:
        """A version of gold image `name`, or its newest (the current one)."""
        if version is None:
            rows = self._read(f"SELECT {_GOLD_COLUMNS} FROM iscsi_gold WHERE name=?"
                              " ORDER BY version DESC LIMIT 1", (name,))
        else:
            rows = self._read(f"SELECT {_GOLD_COLUMNS} FROM iscsi_gold WHERE name=? AND version=?",
                              (name, version))
        return _gold(rows[0]) if rows else None

    def golds(self) -> list[GoldImage]:
        return [_gold(r) for r in self._read(
            f"SELECT {_GOLD_COLUMNS} FROM iscsi_gold ORDER BY name, version")]

    def forget_unused_golds(self) -> list[GoldImage]:
        """Delete the rows of gold versions that are neither their name's newest nor the base
        of any host's LUN; returns them (the caller deletes their files)."""
        with self._tx() as db:
            doomed = [_gold(r) for r in fetch_all(db.execute(
                f"SELECT {_GOLD_COLUMNS} FROM iscsi_gold g WHERE version <"
                " (SELECT MAX(version) FROM iscsi_gold h WHERE h.name=g.name)"
                " AND NOT EXISTS (SELECT 1 FROM iscsi_luns l WHERE l.gold=g.name"
                " AND l.gold_version=g.version)"
            ))]
            for g in doomed:
                db.execute("DELETE FROM iscsi_gold WHERE name=? AND version=?",
                           (g.name, g.version))
        return doomed

    # -- iSCSI LUNs -------------------------------------------------------------------------

    def lun(self, mac: MacAddress) -> IscsiLun | None:
        rows = self._read(f"SELECT {_LUN_COLUMNS} FROM iscsi_luns WHERE mac=?", (str(mac),))
        return _lun(rows[0]) if rows else None

    def luns(self) -> list[IscsiLun]:
        return [_lun(r) for r in self._read(f"SELECT {_LUN_COLUMNS} FROM iscsi_luns ORDER BY tid")]

    def add_lun(self, lun: IscsiLun) -> IscsiLun:
        """Record a host's new LUN (its files already in place) with the next free target id."""
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(tid), 0) FROM iscsi_luns").fetchone()
            lun = dataclasses.replace(lun, tid=int(last) + 1)
            if db.execute("SELECT 1 FROM iscsi_luns WHERE mac=?", (str(lun.mac),)).fetchone():
                raise InvalidInput(f"{lun.mac} already has an iSCSI LUN")
            db.execute(
                f"INSERT INTO iscsi_luns({_LUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                _lun_row(lun),
            )
        return lun

    def replace_lun(self, lun: IscsiLun) -> IscsiLun:
        """Update a host's LUN row after a reclone (same tid, target and data disk)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE iscsi_luns SET gold=?, gold_version=?, method=?, root=?, cloned=?"
                " WHERE mac=?",
                (lun.gold, lun.gold_version, lun.method, lun.root, lun.cloned, str(lun.mac)),
            )
            if cur.rowcount != 1:
                raise NotFound(f"{lun.mac} has no iSCSI LUN")
        return lun

    def delete_lun(self, mac: MacAddress) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM iscsi_luns WHERE mac=?", (str(mac),)).rowcount > 0

    # -- the NFS store ----------------------------------------------------------------------

    def record_nfs_sync(self, role: str, toplevel: str, paths: Sequence[str]) -> None:
        """The role's store was synced for `toplevel` (closure `paths`): its hosts boot that."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO nfs_syncs(role, toplevel, synced) VALUES (?,?,?) ON CONFLICT(role)"
                " DO UPDATE SET toplevel=excluded.toplevel, synced=excluded.synced",
                (role, toplevel, now),
            )
            db.execute("DELETE FROM nfs_paths WHERE role=?", (role,))
            db.executemany("INSERT OR IGNORE INTO nfs_paths(role, path) VALUES (?,?)",
                           [(role, p) for p in paths])

    def nfs_sync(self, role: str) -> tuple[str, float] | None:
        """(toplevel, when) of the role's last `nfs sync`, or None."""
        rows = self._read("SELECT toplevel, synced FROM nfs_syncs WHERE role=?", (role,))
        return (rows[0].str_at(0), rows[0].float_at(1)) if rows else None

    def nfs_paths(self) -> set[str]:
        """Every store path some role's last sync needs."""
        return {r.str_at(0) for r in self._read("SELECT DISTINCT path FROM nfs_paths")}

    def nfs_export_id(self, mac: MacAddress, first: int) -> int:
        """The host directory's stable export id (allocated on first use, from `first` up)."""
        with self._tx() as db:
            row = db.execute("SELECT export_id FROM nfs_hosts WHERE mac=?", (str(mac),)).fetchone()
            if row:
                return int(row[0])
            used = {int(r[0]) for r in db.execute("SELECT export_id FROM nfs_hosts")}
            export_id = next(i for i in range(first, first + len(used) + 1) if i not in used)
            if export_id > 65535:
                raise StoreError("no NFS export id left (ganesha's Export_Id is 16 bits)")
            db.execute("INSERT INTO nfs_hosts(mac, export_id, created) VALUES (?,?,?)",
                       (str(mac), export_id, time.time()))
            return export_id

    def nfs_export_ids(self) -> dict[MacAddress, int]:
        return {r.mac_at(0): r.int_at(1)
                for r in self._read("SELECT mac, export_id FROM nfs_hosts")}


def _role_boot(r: Row) -> RoleBoot:
    return RoleBoot(role=r.str_at(0), mode=BootMode(r.str_at(1)), toplevel=r.opt_str_at(2),
                    gold=r.opt_str_at(3), data_size=r.opt_int_at(4),
                    san=r.opt_str_at(5) or "sanboot", local=r.opt_str_at(6) or "exit")


def _gold(r: Row) -> GoldImage:
    return GoldImage(r.str_at(0), r.int_at(1), r.str_at(2), r.int_at(3), r.float_at(4),
                     r.opt_str_at(5) or "")


def _lun(r: Row) -> IscsiLun:
    return IscsiLun(r.mac_at(0), r.int_at(1), r.str_at(2), r.str_at(3), r.str_at(4), r.int_at(5),
                    r.str_at(6), r.str_at(7), r.str_at(8), r.int_at(9), r.float_at(10),
                    r.float_at(11))


def _lun_row(lun: IscsiLun) -> tuple[object, ...]:
    return (str(lun.mac), lun.tid, lun.target, lun.initiator, lun.gold, lun.gold_version,
            lun.method, lun.root, lun.data, lun.data_size, lun.created, lun.cloned)

