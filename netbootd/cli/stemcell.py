"""The stem-cell commands of the `netbootd` CLI: `role mode`, `nfs ...` and `iscsi ...`.

Registered by netbootd.cli.parser(); errors are NetbootdErrors, which netbootd.cli.main() turns
into a message and
exit status 2 (this module never exits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from netbootd import model
from netbootd.cli.common import find_host, load_config, open_store, progress_bar, table, when
from netbootd.codec import nfs as nfs_codec
from netbootd.codec.tgt import Target, render_targets_conf
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError, NotFound, TgtError
from netbootd.fmt import human_size
from netbootd.fsutil import write_file
from netbootd.model import BootMode, IscsiLun, RoleBoot
from netbootd.roles.nixbuild import Nix
from netbootd.stemcell import gold as golds
from netbootd.stemcell import iscsi, nfs_tree
from netbootd.stemcell.tgtadm import Tgtadm
from netbootd.store import Store


def _tgt(cfg: Config) -> Tgtadm:
    return Tgtadm(cfg.iscsi.tgtd_control_port)


def _out(text: str, output: str | None, mode: int = 0o644) -> None:
    if output:
        write_file(Path(output), text.encode(), mode)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


# -- role mode ----------------------------------------------------------------------------------


def _boot_json(b: RoleBoot) -> dict[str, Any]:
    return {"role": b.role, "mode": str(b.mode), "toplevel": b.toplevel, "gold": b.gold,
            "data_size": b.data_size, "san": b.san, "local": b.local}


def cmd_role_mode(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    role = model.role_name(args.name)
    if store.role(role) is None:
        raise NotFound(f"unknown role {role!r}")
    cur = store.role_boot(role)
    if args.mode is None:
        if args.json:
            print(json.dumps(_boot_json(cur), indent=2))
        else:
            print(_describe(cur, cfg))
        return 0
    mode = BootMode(args.mode)
    gold = (model.gold_name(args.gold) if args.gold
            else cur.gold if mode is BootMode.ISCSI else None)
    if mode is BootMode.ISCSI and gold is None:
        raise InvalidInput("an iscsi role needs --gold NAME (a gold image: "
                           "netbootd iscsi gold import)")
    toplevel = args.toplevel if args.toplevel is not None else (
        cur.toplevel if mode is BootMode.NFS_STORE else None)
    if toplevel is not None and not Path(toplevel).is_absolute():
        raise InvalidInput(f"--toplevel: not an absolute store path: {toplevel!r}")
    boot = RoleBoot(
        role=role, mode=mode, toplevel=toplevel, gold=gold,
        data_size=model.disk_size(args.data_size) if args.data_size else (
            cur.data_size if mode is BootMode.ISCSI else None),
        san=args.san or cur.san, local=args.local or cur.local,
    )
    store.set_role_boot(boot)
    print(f"role {role}: {_describe(boot, cfg)}")
    if mode is BootMode.ISCSI:
        print("hosts get their LUNs with `netbootd iscsi reconcile` (`serve` re-applies targets)")
    elif mode is BootMode.NFS_STORE:
        print(f"then: netbootd nfs sync {role}; netbootd nfs exports -o <config> (hosts' dirs)")
    return 0


def _describe(b: RoleBoot, cfg: Config) -> str:
    if b.mode is BootMode.ISCSI:
        size = b.data_size if b.data_size is not None else model.disk_size(cfg.iscsi.data_size)
        return (f"boots iscsi ({b.san}): root = a clone of gold image {b.gold}, data = "
                f"{human_size(size)} empty")
    if b.mode is BootMode.NFS_STORE:
        top = b.toplevel or "the current generation's toplevel"
        return f"boots nfs-store: the stem-cell initramfs switches into {top}"
    if b.mode is BootMode.LOCAL:
        how = "exit" if b.local == "exit" else "sanboot --drive 0x80"
        return f"boots the local disk (iPXE {how})"
    return "boots ramdisk (kernel + initrds)"


# -- nfs ----------------------------------------------------------------------------------------


def _toplevel(store: Store, role: str, given: str | None) -> str:
    if given:
        return given
    boot = store.role_boot(role)
    if boot.toplevel:
        return boot.toplevel
    image = store.image(role)
    if image is not None and image.build is not None and image.build.toplevel_path:
        return image.build.toplevel_path
    raise InvalidInput(f"role {role} has no toplevel: build it with `netbootd role build`, or "
                       f"give `netbootd role mode {role} nfs-store --toplevel PATH`")


def cmd_nfs_sync(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    role = model.role_name(args.role)
    if store.role(role) is None:
        raise NotFound(f"unknown role {role!r}")
    if store.role_boot(role).mode is not BootMode.NFS_STORE:
        print(f"note: role {role} does not boot nfs-store (netbootd role mode {role} nfs-store)",
              file=sys.stderr)
    top = _toplevel(store, role, args.toplevel)
    rep = nfs_tree.sync(store, cfg, role, top, Nix().closure,
                        (lambda line: print(line, file=sys.stderr)) if args.verbose else None)
    print(f"role {role}: {rep.summary()}; its hosts boot {rep.toplevel}")
    return 0


def cmd_nfs_exports(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    exports = nfs_tree.exports(store, cfg)
    header = ["generated by `netbootd nfs exports` -- rewritten whole; do not edit",
              f"NFS root {cfg.nfs_root}: store/ read-only, hosts/<mac>/ one writable dir per host"]
    if args.format == "ganesha":
        bind = str(cfg.nfs.ganesha_bind) if cfg.nfs.ganesha_bind else None
        text = nfs_codec.render_ganesha(exports, bind_addr=bind, header=header)
    else:
        text = nfs_codec.render_kernel_exports(exports, header=[*header, "then: exportfs -ra"])
    _out(text, args.output)
    return 0


def cmd_nfs_list(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg, readonly=True)
    boots = store.role_boots()
    roles: list[dict[str, Any]] = []
    for r in store.roles():
        b = boots.get(r.name)
        if b is None or b.mode is not BootMode.NFS_STORE:
            continue
        synced = store.nfs_sync(r.name)
        roles.append({"role": r.name, "toplevel": synced[0] if synced else None,
                      "synced": when(synced[1]) if synced else None,
                      "wanted_toplevel": b.toplevel})
    hosts: list[dict[str, Any]] = [{"host": h.name, "mac": str(h.mac), "role": h.role,
              "dir": str(nfs_tree.host_dir(cfg, h.mac)),
              "dir_exists": nfs_tree.host_dir(cfg, h.mac).is_dir()}
             for h in nfs_tree.nfs_hosts(store)]
    sdir = nfs_tree.store_dir(cfg)
    paths = (sorted(p.name for p in sdir.iterdir() if not p.name.startswith("."))
             if sdir.is_dir() else [])
    data = {"root": str(cfg.nfs_root), "roles": roles, "hosts": hosts, "store_paths": len(paths)}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"NFS root {cfg.nfs_root}: {len(paths)} store path(s)")
    rows = [["ROLE", "SYNCED", "TOPLEVEL"]] + [
        [r["role"], r["synced"] or "never", r["toplevel"] or "-"] for r in roles]
    print(table(rows))
    if hosts:
        print()
        print(table([["HOST", "ROLE", "DIR"]] + [
            [h["host"], h["role"], h["dir"] + ("" if h["dir_exists"] else " (not made yet)")]
            for h in hosts]))
    return 0


# -- iscsi --------------------------------------------------------------------------------------


def cmd_gold_import(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    src = Path(args.file)
    gold, warnings = golds.import_gold(store, cfg, args.name, src, progress_bar(src))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"gold image {gold.name}: version {gold.version} ({human_size(gold.size)}) is current; "
          f"`netbootd iscsi reclone <host>` moves a host to it")
    return 0


def cmd_gold_list(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    golds = store.golds()
    users: dict[tuple[str, int], int] = {}
    for lun in store.luns():
        users[(lun.gold, lun.gold_version)] = users.get((lun.gold, lun.gold_version), 0) + 1
    data: list[dict[str, Any]] = [{"name": g.name, "version": g.version, "size": g.size,
                                   "file": g.file,
             "created": when(g.created), "source": g.source,
             "hosts": users.get((g.name, g.version), 0)} for g in golds]
    if args.json:
        print(json.dumps(data, indent=2))
    elif not data:
        print("no gold images: netbootd iscsi gold import <name> <disk.img>")
    else:
        print(table([["NAME", "VERSION", "SIZE", "HOSTS", "CREATED", "SOURCE"]] + [
            [d["name"], str(d["version"]), human_size(d["size"]), str(d["hosts"]),
             d["created"] or "-", d["source"]] for d in data]))
    return 0


def _iscsi_hosts(store: Store) -> list[tuple[model.Host, RoleBoot]]:
    boots = store.role_boots()
    return [(h, b) for h in store.hosts()
            if (b := boots.get(h.role)) is not None and b.mode is BootMode.ISCSI]


def cmd_iscsi_reconcile(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    tgt = _tgt(cfg)
    errors = 0
    with iscsi.locked(cfg):
        if args.dry_run:
            luns = store.luns()
            missing = [h for h, _ in _iscsi_hosts(store) if store.lun(h.mac) is None]
            for h in missing:
                print(f"would clone a root LUN for {h.name} ({h.mac})")
            plan = iscsi.plan(iscsi.desired(luns), tgt.targets(), cfg.iscsi.iqn_base)
            for s in plan.steps:
                print(f"would: {s.describe()}")
            for c in plan.conflicts:
                print(f"conflict: {c}")
            print(f"{len(plan.steps)} change(s) to tgtd, {len(missing)} LUN(s) to make")
            return 0
        for host, boot in _iscsi_hosts(store):
            try:
                lun, made = iscsi.ensure_lun(store, cfg, host, boot,
                                           progress_bar(Path(f"{host.name}-root")))
            except NetbootdError as e:
                print(f"{host.name}: {e}", file=sys.stderr)
                errors += 1
                continue
            if made:
                print(f"{host.name}: LUNs made: root = {lun.method} clone of {lun.gold} "
                      f"v{lun.gold_version}, data {human_size(lun.data_size)}; target {lun.target}")
        rep = iscsi.reconcile(store, cfg, tgt)
    for line in rep.applied:
        print(line)
    for err in rep.errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"tgtd (control port {cfg.iscsi.tgtd_control_port}): {rep.summary()}")
    if rep.errors or errors:
        raise NetbootdError(f"{len(rep.errors) + errors} error(s); see above")
    return 0


def _lun_json(lun: IscsiLun, host: model.Host | None,
              live: dict[int, Target] | None) -> dict[str, Any]:
    t = live.get(lun.tid) if live is not None else None
    state = "tgtd not reachable" if live is None else (
        "served" if t is not None and t.iqn == lun.target else "not in tgtd")
    return {
        "host": host.name if host else None, "mac": str(lun.mac), "enrolled": host is not None,
        "role": host.role if host else None, "tid": lun.tid, "target": lun.target,
        "initiator": lun.initiator, "gold": lun.gold, "gold_version": lun.gold_version,
        "method": lun.method, "root": lun.root, "data": lun.data, "data_size": lun.data_size,
        "created": when(lun.created), "cloned": when(lun.cloned), "state": state,
        "connected": list(t.initiators) if t is not None else [],
    }


def cmd_iscsi_list(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg, readonly=True)
    try:
        live: dict[int, Target] | None = {t.tid: t for t in _tgt(cfg).targets()}
    except TgtError:
        live = None
    hosts = {h.mac: h for h in store.hosts()}
    rows = [_lun_json(lun, hosts.get(lun.mac), live) for lun in store.luns()]
    pending = [{"host": h.name, "mac": str(h.mac), "role": h.role, "state": "no LUN yet"}
               for h, _ in _iscsi_hosts(store) if store.lun(h.mac) is None]
    if args.json:
        print(json.dumps({"luns": rows, "pending": pending}, indent=2))
        return 0
    if not rows and not pending:
        print("no iSCSI hosts: netbootd role mode <role> iscsi --gold NAME; enroll; "
              "netbootd iscsi reconcile")
        return 0
    out = [["HOST", "TID", "GOLD", "METHOD", "DATA", "CLONED", "STATE"]]
    for r in rows:
        state = r["state"] + (f", connected: {', '.join(r['connected'])}" if r["connected"] else "")
        out.append([r["host"] or f"{r['mac']} (not enrolled)", str(r["tid"]),
                      f"{r['gold']} v{r['gold_version']}", r["method"],
                      human_size(r["data_size"]), r["cloned"] or "-", state])
    for p in pending:
        out.append([p["host"], "-", "-", "-", "-", "-", "no LUN yet: netbootd iscsi reconcile"])
    print(table(out))
    if live is None:
        print(f"(tgtd not reachable on control port {cfg.iscsi.tgtd_control_port})")
    return 0


def _lun_of(store: Store, ident: str) -> tuple[model.MacAddress, model.Host | None]:
    try:
        host = find_host(store, ident)
        return host.mac, host
    except NotFound:
        try:  # an unenrolled host's disks are still destroyable by MAC
            mac = model.MacAddress.parse(ident)
        except InvalidInput:
            raise NotFound(f"no enrolled host {ident!r} (give its MAC, hostname or canonical "
                           "name)") from None
        return mac, None


def cmd_iscsi_reclone(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    host = find_host(store, args.host)
    tgt = _tgt(cfg)
    with iscsi.locked(cfg):
        old, new = iscsi.reclone(store, cfg, tgt, host, force=args.force,
                               progress=progress_bar(Path(f"{host.name}-root")))
        rep = iscsi.reconcile(store, cfg, tgt) if tgt.alive() else None
    print(f"{host.name}: root LUN re-cloned from {new.gold} v{new.gold_version} ({new.method}; "
          f"was {old.gold} v{old.gold_version}); data LUN kept")
    if rep is None:
        print(f"tgtd not reachable (control port {cfg.iscsi.tgtd_control_port}): the target is "
              "applied by the next reconcile")
    elif rep.errors:
        raise NetbootdError("; ".join(rep.errors))
    return 0


def cmd_iscsi_destroy(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    mac, host = _lun_of(store, args.host)
    with iscsi.locked(cfg):
        lun = iscsi.destroy(store, cfg, _tgt(cfg), mac, host, force=args.force)
    name = host.name if host else str(mac)
    print(f"{name}: target {lun.target} removed, root and data LUNs deleted")
    if host is not None and store.role_boot(host.role).mode is BootMode.ISCSI:
        print(f"note: {name} is still enrolled in iscsi role {host.role}: the next "
              "`netbootd iscsi reconcile` gives it fresh disks")
    return 0


def cmd_iscsi_export(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    header = ["tgt targets.conf generated by `netbootd iscsi export-conf` (one target per host:",
              "LUN 1 the root clone, LUN 2 the data disk). Apply: tgt-admin --update ALL -c FILE",
              "qcow2 clones are FUSE exports netbootd starts: run `netbootd iscsi reconcile` first"]
    _out(render_targets_conf(iscsi.desired(store.luns()), header), args.output)
    return 0


# -- registration -------------------------------------------------------------------------------


def register(sub: Any, role_sub: Any) -> None:
    rm = role_sub.add_parser("mode",
                             help="how a role's hosts boot: ramdisk, nfs-store, iscsi, local")
    rm.add_argument("name", help="the role")
    rm.add_argument("mode", nargs="?", choices=[m.value for m in BootMode],
                    help="omit to show the current mode")
    rm.add_argument("--toplevel", help="nfs-store: the store path to sync and switch into "
                    "(default: the current generation's toplevel)")
    rm.add_argument("--gold", help="iscsi: the gold image hosts' root LUNs are cloned from")
    rm.add_argument("--data-size", help="iscsi: each host's empty data LUN, e.g. 20G "
                    "(default iscsi.data_size)")
    rm.add_argument("--san", choices=list(model.SAN_BOOTS),
                    help="iscsi: sanboot the LUN (default) or sanhook it and boot the "
                    "role's kernel")
    rm.add_argument("--local", choices=list(model.LOCAL_BOOTS),
                    help="local: iPXE exit (default) or sanboot --drive 0x80")
    rm.add_argument("--json", action="store_true", help="as JSON")
    rm.set_defaults(func=cmd_role_mode)

    n = sub.add_parser("nfs", help="the NFS store of nfs-store (stem-cell) hosts")
    nsub = n.add_subparsers(dest="nfs_command", required=True, metavar="SUBCOMMAND")
    ns = nsub.add_parser("sync", help="copy a role's closure into the shared store (by store path)")
    ns.add_argument("role", help="an nfs-store role")
    ns.add_argument("--toplevel", help="default: the role's --toplevel or current generation's")
    ns.add_argument("--verbose", action="store_true", help="name each path copied")
    ns.set_defaults(func=cmd_nfs_sync)
    ne = nsub.add_parser("exports", help="render the export configuration (makes hosts' dirs)")
    ne.add_argument("--format", choices=["ganesha", "kernel"], default="ganesha",
                    help="ganesha.conf (default), or exports(5) for "
                    "/etc/exports.d/netbootd.exports")
    ne.add_argument("-o", "--output", help="write this file instead of standard output")
    ne.set_defaults(func=cmd_nfs_exports)
    nl = nsub.add_parser("list", help="synced roles and hosts' directories")
    nl.add_argument("--json", action="store_true", help="as JSON")
    nl.set_defaults(func=cmd_nfs_list)

    i = sub.add_parser("iscsi", help="gold images, hosts' copy-on-write LUNs, tgtd targets")
    isub = i.add_subparsers(dest="iscsi_command", required=True, metavar="SUBCOMMAND")
    g = isub.add_parser("gold", help="gold disk images")
    gsub = g.add_subparsers(dest="gold_command", required=True, metavar="SUBCOMMAND")
    gi = gsub.add_parser("import", help="import a disk image as the next version of a gold image")
    gi.add_argument("name", help="the gold image's name")
    gi.add_argument("file", help="a raw disk image file")
    gi.set_defaults(func=cmd_gold_import)
    gl = gsub.add_parser("list", help="gold images and how many hosts use each version")
    gl.add_argument("--json", action="store_true", help="as JSON")
    gl.set_defaults(func=cmd_gold_list)
    ir = isub.add_parser("reconcile", help="make missing LUNs, then make tgtd hold exactly "
                         "netbootd's targets (idempotent)")
    ir.add_argument("--dry-run", action="store_true", help="say what would change")
    ir.set_defaults(func=cmd_iscsi_reconcile)
    il = isub.add_parser("list", help="hosts' LUNs: clone method, gold version, tgtd state")
    il.add_argument("--json", action="store_true", help="as JSON")
    il.set_defaults(func=cmd_iscsi_list)
    rc = isub.add_parser("reclone", help="re-clone a host's root LUN from its current gold image")
    rc.add_argument("host", help="MAC, hostname or canonical name")
    rc.add_argument("--force", action="store_true", help="even while it is logged in")
    rc.set_defaults(func=cmd_iscsi_reclone)
    ds = isub.add_parser("destroy", help="delete a host's target and both LUNs")
    ds.add_argument("host", help="MAC, hostname or canonical name")
    ds.add_argument("--force", action="store_true",
                    help="even if it booted recently (iscsi.destroy_guard) or is logged in")
    ds.set_defaults(func=cmd_iscsi_destroy)
    ix = isub.add_parser("export-conf", help="the targets as tgt's targets.conf")
    ix.add_argument("-o", "--output", help="write this file instead of standard output")
    ix.set_defaults(func=cmd_iscsi_export)
