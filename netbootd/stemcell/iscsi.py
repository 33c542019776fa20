"""iSCSI stem-cell hosts: per-host copy-on-write root LUNs (cloned from a gold image:
stemcell/gold.py) and empty data LUNs, and their targets reconciled into a running tgtd.

On disk, under `iscsi.dir` (default `<state>/iscsi`):

    gold/<name>/<version>.img            a gold image version, read-only (0444)
    hosts/<aa-bb-cc-dd-ee-ff>/root.img   the host's root clone (reflink or full copy), or
                              root.qcow2 + root.raw   a qcow2 overlay and its FUSE export
                              data.img   the host's data disk (sparse)
    iscsi.lock                           held by every command that changes LUNs or targets

**Reconcile** makes tgtd hold exactly the targets netbootd wants: `desired()` (one target per
LUN row: LUN 1 root, LUN 2 data, the host's initiator name in the ACL) against `Tgtadm.targets()`
(what tgtd has), `plan()` (pure) lists the tgtadm steps, `reconcile()` applies them. Targets whose
IQN is not under `iscsi.iqn_base` are never touched. Running it again changes nothing; after a
tgtd restart (targets live only in tgtd's memory) it puts everything back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netbootd import model, policy
from netbootd.codec.tgt import DesiredTarget, Target
from netbootd.config import Config
from netbootd.errors import IscsiError, NetbootdError, NotFound, TgtError
from netbootd.model import GoldImage, Host, IscsiLun, MacAddress, RoleBoot
from netbootd.stemcell import clone
from netbootd.stemcell.gold import prune_golds
from netbootd.stemcell.tgtadm import Tgtadm
from netbootd.store import Store

log = logging.getLogger("netbootd.iscsi")

ROOT_LUN = 1  # LUN 0 is tgtd's controller
DATA_LUN = 2
LOCK_NAME = "iscsi.lock"




def target_iqn(base: str, mac: MacAddress) -> str:
    return f"{base}:{mac.hyphen}"


def initiator_iqn(base: str, mac: MacAddress) -> str:
    return f"{base}:host.{mac.hyphen}"


@contextlib.contextmanager
def locked(cfg: Config, wait: bool = True) -> Iterator[bool]:
    """The iSCSI lock: LUN files, rows and tgtd's targets change under it only. With
    wait=False yields False at once when another holder has it (the daemon's periodic
    reconcile then skips a round)."""
    d = cfg.iscsi_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def host_dir(cfg: Config, mac: MacAddress) -> Path:
    return cfg.iscsi_dir / "hosts" / mac.hyphen


def _qcow_export(lun: IscsiLun) -> clone.QcowExport:
    d = Path(lun.root).parent
    return clone.QcowExport(d / "root.qcow2", Path(lun.root), d / "root.qsd.pid")


# -- LUNs ----------------------------------------------------------------------------------------


def role_data_size(cfg: Config, boot: RoleBoot) -> int:
    return boot.data_size if boot.data_size is not None else model.disk_size(cfg.iscsi.data_size)


def _clone_root(cfg: Config, gold: GoldImage, d: Path, progress: clone.Progress | None
                ) -> tuple[clone.Method, str]:
    method, made = clone.clone(Path(gold.file), d / "root", cfg.iscsi.clone, progress)
    if method is clone.Method.QCOW2:
        return method, str(d / "root.raw")  # what tgtd serves: the overlay's FUSE export
    return method, str(made)


def ensure_lun(store: Store, cfg: Config, host: Host, boot: RoleBoot,
               progress: clone.Progress | None = None) -> tuple[IscsiLun, bool]:
    """The host's LUN, made now if it has none: root = a clone of the role's gold image (its
    newest version), data = an empty disk. Returns (lun, made). Call under locked()."""
    existing = store.lun(host.mac)
    if existing is not None:
        return existing, False
    if boot.gold is None:
        raise IscsiError(f"role {boot.role} boots iscsi but names no gold image "
                         f"(netbootd role mode {boot.role} iscsi --gold NAME)")
    gold = store.gold(boot.gold)
    if gold is None:
        raise NotFound(f"no gold image {boot.gold!r} (netbootd iscsi gold import)")
    d = host_dir(cfg, host.mac)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    method, root = _clone_root(cfg, gold, d, progress)
    size = role_data_size(cfg, boot)
    data = d / "data.img"
    if not data.exists():  # a data disk survives everything but `iscsi destroy`
        clone.make_empty(data, size)
    now = time.time()
    base = cfg.iscsi.iqn_base
    lun = store.add_lun(IscsiLun(
        host.mac, 0, target_iqn(base, host.mac), initiator_iqn(base, host.mac), gold.name,
        gold.version, method.value, root, str(data), data.stat().st_size, now, now))
    log.info("mac=%s iSCSI LUN made: target %s (tid %d), root %s clone of %s v%d",
             host.mac, lun.target, lun.tid, method, gold.name, gold.version)
    return lun, True


def _remove_root(lun: IscsiLun, keep: tuple[str, ...] = ()) -> None:
    d = Path(lun.root).parent
    if lun.method == clone.Method.QCOW2:
        _qcow_export(lun).stop()
    for name in {"root.img", "root.qcow2", "root.raw"} - set(keep):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


def _connected(tgt: Tgtadm, lun: IscsiLun) -> tuple[str, ...]:
    """Initiators logged in to the host's target now (tgtd's I_T nexus list)."""
    for t in tgt.targets():
        if t.tid == lun.tid and t.iqn == lun.target:
            return t.initiators
    return ()


def _drop_target(tgt: Tgtadm, lun: IscsiLun) -> bool:
    """Take the host's target out of tgtd (offline, then delete, forced). True if it was there."""
    for t in tgt.targets():
        if t.tid == lun.tid and t.iqn == lun.target:
            tgt.delete_target(t.tid, force=True)
            return True
    return False


def reclone(store: Store, cfg: Config, tgt: Tgtadm, host: Host, *, force: bool = False,
            progress: clone.Progress | None = None) -> tuple[IscsiLun, IscsiLun]:
    """Replace the host's root LUN with a fresh clone of its role's current gold image; the
    data LUN is kept. Refused while an initiator is logged in to the target unless `force`.
    Returns (old, new). Call under locked(); the target is re-applied afterwards."""
    old = store.lun(host.mac)
    if old is None:
        raise NotFound(f"{host.name} has no iSCSI LUN (netbootd iscsi reconcile makes it)")
    boot = store.role_boot(host.role)
    gold_name = boot.gold if boot.mode is model.BootMode.ISCSI and boot.gold else old.gold
    gold = store.gold(gold_name)
    if gold is None:
        raise NotFound(f"no gold image {gold_name!r}")
    connected = _connected(tgt, old) if tgt.alive() else ()
    decision = policy.reclone_decision(connected)
    if not decision.ok and not force:
        raise IscsiError(f"refusing to re-clone the root disk of {host.name}: {decision.reason}; "
                         "power it off first, or --force")
    if tgt.alive():
        _drop_target(tgt, old)
    _qcow_export(old).stop()  # then the new root by rename, the row, the old files (#13)
    method, root = _clone_root(cfg, gold, host_dir(cfg, host.mac), progress)
    new = store.replace_lun(dataclasses.replace(
        old, gold=gold.name, gold_version=gold.version, method=method.value, root=root,
        cloned=time.time()))
    _remove_root(old, keep=(Path(root).name, "root.qcow2" if method is clone.Method.QCOW2 else ""))
    prune_golds(store)
    log.info("mac=%s root LUN re-cloned from %s v%d (%s)", host.mac, gold.name, gold.version,
             method)
    return old, new


def destroy(store: Store, cfg: Config, tgt: Tgtadm, mac: MacAddress, host: Host | None, *,
            force: bool = False, now: float | None = None) -> IscsiLun:
    """Remove the host's target, both LUNs' files and its row. Refused (policy.destroy_decision)
    while the host booted within `iscsi.destroy_guard` seconds or is logged in, unless `force`.
    Call under locked()."""
    lun = store.lun(mac)
    if lun is None:
        raise NotFound(f"{host.name if host else mac} has no iSCSI LUN")
    alive = tgt.alive()
    connected = _connected(tgt, lun) if alive else ()
    decision = policy.destroy_decision(host, connected, time.time() if now is None else now,
                                       cfg.iscsi.destroy_guard)
    if not decision.ok and not force:
        raise IscsiError(f"refusing to destroy the disks of {host.name if host else mac}: "
                         f"{decision.reason} (--force destroys them anyway)")
    if alive:
        _drop_target(tgt, lun)
    _remove_root(lun)
    shutil.rmtree(host_dir(cfg, mac), ignore_errors=True)
    store.delete_lun(mac)
    prune_golds(store)
    log.info("mac=%s iSCSI LUNs destroyed (target %s)%s", mac, lun.target,
             " (forced)" if not decision.ok else "")
    return lun


# -- reconcile -----------------------------------------------------------------------------------


def desired(luns: Sequence[IscsiLun]) -> list[DesiredTarget]:
    return [
        DesiredTarget(
            tid=lun.tid, iqn=lun.target,
            luns=((ROOT_LUN, lun.root), (DATA_LUN, lun.data)),
            initiators=(lun.initiator,),
            comment=f"{lun.mac}: root = {lun.method} clone of {lun.gold} v{lun.gold_version}",
        )
        for lun in sorted(luns, key=lambda x: x.tid)
    ]


@dataclass(frozen=True)
class Step:
    """One tgtadm operation. `op`: delete-target, new-target, new-lun, delete-lun,
    bind-address, unbind-address, bind-name, unbind-name, ready."""

    op: str
    tid: int
    arg: str = ""
    lun: int = 0
    why: str = ""

    def describe(self) -> str:
        what = {"new-lun": f"LUN {self.lun} {self.arg}", "delete-lun": f"LUN {self.lun}"}.get(
            self.op, self.arg)
        return f"tid {self.tid}: {self.op} {what}".rstrip() + (f" ({self.why})" if self.why else "")

    def apply(self, tgt: Tgtadm) -> None:
        if self.op == "delete-target":
            tgt.delete_target(self.tid, force=True)
        elif self.op == "new-target":
            tgt.new_target(self.tid, self.arg)
        elif self.op == "new-lun":
            tgt.new_lun(self.tid, self.lun, self.arg)
        elif self.op == "delete-lun":
            tgt.delete_lun(self.tid, self.lun)
        elif self.op == "bind-address":
            tgt.bind_address(self.tid, self.arg)
        elif self.op == "unbind-address":
            tgt.unbind_address(self.tid, self.arg)
        elif self.op == "bind-name":
            tgt.bind_name(self.tid, self.arg)
        elif self.op == "unbind-name":
            tgt.unbind_name(self.tid, self.arg)
        elif self.op == "ready":
            tgt.set_state(self.tid, "ready")
        else:  # pragma: no cover
            raise AssertionError(self.op)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    conflicts: tuple[str, ...] = ()  # targets netbootd wants but cannot have (a foreign tid)
    unchanged: int = 0  # wanted targets tgtd already has exactly


def _create(d: DesiredTarget, why: str) -> list[Step]:
    steps = [Step("new-target", d.tid, d.iqn, why=why)]
    steps += [Step("new-lun", d.tid, path, lun=n) for n, path in sorted(d.luns)]
    steps += [Step("bind-address", d.tid, a) for a in d.addresses]
    steps += [Step("bind-name", d.tid, n) for n in d.initiators]
    return steps


def plan(want: Sequence[DesiredTarget], have: Sequence[Target], iqn_base: str,
         stale_luns: frozenset[tuple[int, int]] = frozenset()) -> Plan:
    """The tgtadm steps that turn `have` into `want`. Pure.

    Only targets whose IQN is under `iqn_base` are ever deleted or changed; one that holds a tid
    netbootd wants is a conflict, reported and left alone. `stale_luns` ((tid, lun) pairs) are
    re-added even if their path matches (a qcow2 export was restarted: tgtd still has the file
    under the old mount open). Deletions come first, so a target can move to another tid."""
    owned = f"{iqn_base}:"
    by_tid = {d.tid: d for d in want}
    deletes: list[Step] = []
    changes: list[Step] = []
    creates: list[Step] = []
    conflicts: list[str] = []
    present: set[int] = set()
    unchanged = 0
    for t in sorted(have, key=lambda t: t.tid):
        d = by_tid.get(t.tid)
        mine = t.iqn.startswith(owned)
        if d is None or t.iqn != d.iqn:
            if mine:
                deletes.append(Step("delete-target", t.tid, t.iqn,
                                    why="not wanted" if d is None else f"tid is {d.iqn}'s"))
            elif d is not None:
                conflicts.append(f"tid {t.tid} holds {t.iqn}, which netbootd does not own: "
                                 f"cannot create {d.iqn} there")
                present.add(t.tid)
            continue
        present.add(t.tid)
        before = len(changes)
        wanted = d.lun_paths()
        luns = {lu.number: lu for lu in t.data_luns}
        for n, lu in sorted(luns.items()):
            if n not in wanted:
                changes.append(Step("delete-lun", t.tid, lun=n, why="not wanted"))
            elif lu.path != wanted[n] or (t.tid, n) in stale_luns:
                changes.append(Step("delete-lun", t.tid, lun=n,
                                    why="stale" if lu.path == wanted[n] else f"was {lu.path}"))
        for n, path in sorted(wanted.items()):
            cur = luns.get(n)
            if cur is None or cur.path != path or (t.tid, n) in stale_luns:
                changes.append(Step("new-lun", t.tid, path, lun=n))
        for a in sorted(t.addresses - set(d.addresses)):
            changes.append(Step("unbind-address", t.tid, a))
        for a in sorted(set(d.addresses) - t.addresses):
            changes.append(Step("bind-address", t.tid, a))
        for name in sorted(t.names - set(d.initiators)):
            changes.append(Step("unbind-name", t.tid, name))
        for name in sorted(set(d.initiators) - t.names):
            changes.append(Step("bind-name", t.tid, name))
        if t.state != "ready":
            changes.append(Step("ready", t.tid, why=f"was {t.state}"))
        unchanged += len(changes) == before
    for d in sorted(want, key=lambda d: d.tid):
        if d.tid not in present:
            creates += _create(d, "missing")
    return Plan(tuple(deletes + changes + creates), tuple(conflicts), unchanged)


@dataclass
class Report:
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exports_started: list[str] = field(default_factory=list)
    unchanged: int = 0
    wanted: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.exports_started)

    def summary(self) -> str:
        s = (f"{self.wanted} target(s) wanted: {self.unchanged} unchanged, "
             f"{len(self.applied)} change(s)")
        if self.exports_started:
            s += f", {len(self.exports_started)} qcow2 export(s) started"
        if self.errors:
            s += f", {len(self.errors)} error(s)"
        return s


def reconcile(store: Store, cfg: Config, tgt: Tgtadm, log_step: Callable[[str], None] | None = None
              ) -> Report:
    """Make tgtd hold exactly the targets of the LUN rows. Call under locked().

    A qcow2 clone's FUSE export is (re)started first; a LUN whose export cannot run is left out
    (tgtd would serve the empty file under the mount point). tgtd not running is an error
    (TgtError); a failed step is reported and the rest still applied."""
    rep = Report()
    luns = store.luns()
    serving: list[IscsiLun] = []
    stale: set[tuple[int, int]] = set()
    for lun in luns:
        if lun.method == clone.Method.QCOW2:
            try:
                if _qcow_export(lun).start():
                    rep.exports_started.append(lun.root)
                    stale.add((lun.tid, ROOT_LUN))
            except NetbootdError as e:
                rep.errors.append(f"{lun.mac}: {e}")
                continue
        serving.append(lun)
    want = desired(serving)
    rep.wanted = len(want)
    have = tgt.targets()  # TgtError when tgtd is not there: nothing to reconcile into
    p = plan(want, have, cfg.iscsi.iqn_base, frozenset(stale))
    rep.errors += list(p.conflicts)
    rep.unchanged = p.unchanged
    failed: set[int] = set()
    for step in p.steps:
        if step.tid in failed:
            continue
        try:
            step.apply(tgt)
        except TgtError as e:
            rep.errors.append(f"{step.describe()}: {e}")
            failed.add(step.tid)
            continue
        rep.applied.append(step.describe())
        if log_step:
            log_step(step.describe())
    return rep


def teardown(tgt: Tgtadm, iqn_base: str) -> int:
    """Take every target netbootd owns out of tgtd (offline, deleted): before stopping tgtd,
    which ignores SIGTERM while it has targets. Returns how many."""
    n = 0
    for t in tgt.targets():
        if t.iqn.startswith(f"{iqn_base}:"):
            tgt.delete_target(t.tid, force=True)
            n += 1
    return n
