"""Roles and their generations: `role add|list|build|generations|switch|rollback|set`, `pin`,
`images gc` and `build-image`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from netbootd import actions, model, policy, views
from netbootd.cli import remote
from netbootd.cli.common import find_host, load_config, open_store, progress_bar, table
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.errors import InvalidInput, NotFound
from netbootd.fmt import human_size
from netbootd.model import Host, MacAddress
from netbootd.roles import static_export
from netbootd.roles.artifacts import Artifacts, gc, import_role
from netbootd.roles.build import build_role
from netbootd.roles.nixbuild import Attrs, Source


def cmd_role_add(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    flag = model.provision_flag(args.provision_flag) if args.provision_flag else None
    store = open_store(cfg)
    image = import_role(
        store,
        Artifacts(cfg.state_dir),
        args.name,
        Path(args.kernel),
        [Path(p) for p in args.initrd],
        args.cmdline or "",
        progress=progress_bar,
    )
    print(
        f"role {image.role}: generation {image.generation} is current "
        f"(kernel {image.kernel.sha256[:12]}, {len(image.initrds)} initrd(s))"
    )
    if flag is not None:
        store.set_provision_flag(image.role, flag)
        print(f"role {image.role}: re-provision flag {flag}")
    return 0


def cmd_role_list(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        out = remote.get(args, "/api/v1/roles")
    else:
        cfg = load_config(args)
        out = views.roles(open_store(cfg, readonly=True), cfg)
    if args.json:
        print(json.dumps(out, indent=2))
    elif not out:
        print("no roles yet: netbootd role add <name> --kernel FILE --initrd FILE")
    else:
        rows = [["ROLE", "GEN", "SIZE", "KERNEL", "CMDLINE"]]
        for o in out:
            rows.append([o["name"], f"{o['generation']}/{o['generations']}",
                         f"{o['size'] / 1e6:.1f} MB", (o["kernel"] or "")[:12], o["cmdline"]])
        print(table(rows))
    return 0


def cmd_role_show(args: argparse.Namespace) -> int:
    name = model.role_name(args.name)
    if remote.wanted(args):
        r = remote.get(args, f"/api/v1/roles/{remote.quote(name)}")
    else:
        cfg = load_config(args)
        r = views.role(open_store(cfg, readonly=True), cfg, name)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    cur = r["current"]
    rows = [["role", r["name"]],
            ["generation", f"{r['generation']} of {r['generations']} kept"],
            ["mode", r["mode"]],
            ["boot chain", f"transport {r['transport'] or 'default'}, HTTP boot "
             f"{r['http_boot'] or 'default'}, Secure Boot {r['secure_boot']}, loader "
             f"{r.get('loader') or 'default'}"],
            ["provision flag", r["provision_flag"]
             + (" (the default)" if r["provision_flag_default"] else "")]]
    if cur:
        rows += [["kernel", cur["kernel"][:12]], ["initrds", " ".join(i[:12]
                 for i in cur["initrds"])], ["cmdline", cur["cmdline"] or "-"],
                 ["source", cur["source"]], ["size", f"{cur['size'] / 1e6:.1f} MB"]]
    names = [h["hostname"] or h["mac"] for h in r["hosts"]]
    rows.append(["hosts", f"{len(names)}" + (f": {', '.join(names[:20])}" if names else "")
                 + (" ..." if len(names) > 20 else "")])
    print(table(rows))
    return 0


def cmd_role_remove(args: argparse.Namespace) -> int:
    store = open_store(load_config(args))
    role = store.remove_role(model.role_name(args.name))
    print(f"role {role.name} removed ({role.generations} generation(s) forgotten; their files "
          "go at the next `netbootd images gc`)")
    return 0


def cmd_role_set(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    name = model.role_name(args.name)
    if args.provision_flag is None and not args.default_provision_flag:
        raise InvalidInput("nothing to set: --provision-flag WORD or --default-provision-flag")
    if args.provision_flag is not None and args.default_provision_flag:
        raise InvalidInput("--provision-flag and --default-provision-flag exclude each other")
    flag = model.provision_flag(args.provision_flag) if args.provision_flag is not None else None
    role = open_store(cfg).set_provision_flag(name, flag)
    print(f"role {role.name}: re-provision flag "
          f"{policy.flag_word(role.provision_flag, cfg.provision.flag)}"
          + ("" if role.provision_flag else " (the default, provision.flag)"))
    return 0


def cmd_role_build(args: argparse.Namespace) -> int:
    source = Source.parse(args.flake, args.file, args.attr)
    attrs = Attrs(
        kernel=args.kernel_attr or Attrs.kernel,
        netboot_initrd=args.initrd_attr or Attrs.netboot_initrd,
        stage1_initrd=args.initrd_attr or Attrs.stage1_initrd,
        toplevel=args.toplevel_attr or Attrs.toplevel,
        kernel_params=args.kernel_params_attr or Attrs.kernel_params,
        kernel_file=args.kernel_file,
        initrd_file=args.initrd_file or Attrs.initrd_file,
    ).check()
    cfg = load_config(args)
    flag = model.provision_flag(args.provision_flag) if args.provision_flag else None
    store = open_store(cfg)

    def log(line: str) -> None:  # Nix's progress and netbootd's steps, as they happen
        print(line, file=sys.stderr, flush=True)

    r = build_role(store, cfg.state_dir, args.name, source, mode=args.mode, attrs=attrs,
                   cmdline=args.cmdline or "", keep=args.keep, compression=args.compression,
                   log=log, if_changed=args.if_changed)
    img = r.image
    assert img.build is not None
    if r.unchanged:
        print(f"role {img.role}: unchanged (generation {img.generation} is this build)")
    else:
        print(f"role {img.role}: generation {img.generation} is current ({img.build.mode} "
              f"initrd, built in {img.build.build_seconds:.1f}s from {img.source})")
    if r.compose is not None:
        print(f"composed initrd: {r.compose.summary()}")
    if flag is not None:
        store.set_provision_flag(img.role, flag)
        print(f"role {img.role}: re-provision flag {flag}")
    return 0


def cmd_role_generations(args: argparse.Namespace) -> int:
    name = model.role_name(args.name)
    if remote.wanted(args):
        gens = remote.get(args, f"/api/v1/roles/{remote.quote(name)}/generations")
    else:
        gens = views.generations(open_store(load_config(args), readonly=True), name)
    if args.json:
        print(json.dumps(gens, indent=2))
        return 0
    rows = [["", "GEN", "CREATED", "SIZE", "MODE", "BUILD", "SOURCE", "PINNED BY"]]
    for g in gens:
        rows.append(["*" if g["current"] else "", str(g["generation"]), g["created"] or "-",
                     f"{g['size'] / 1e6:.1f} MB", g["mode"] or "import",
                     f"{g['build_seconds']:.1f}s" if g["build_seconds"] is not None else "-",
                     g["source"], ",".join(g["pinned_by"]) or "-"])
    print(table(rows))
    return 0


def cmd_role_switch(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        return remote.print_lines(remote.request(
            args, "POST", f"/api/v1/roles/{remote.quote(args.name)}/switch",
            body={"generation": args.generation}))
    res = actions.switch(open_store(load_config(args)), args.name, args.generation)
    print("\n".join(res.lines))
    return 0


def cmd_role_rollback(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        return remote.print_lines(remote.request(
            args, "POST", f"/api/v1/roles/{remote.quote(args.name)}/rollback", body={}))
    print("\n".join(actions.rollback(open_store(load_config(args)), args.name).lines))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    if (args.generation is None) == (not args.none):
        raise InvalidInput("give a generation number, or --none to follow the role's current one")
    store = open_store(load_config(args))
    host = find_host(store, args.host)
    host = store.pin(host.mac, None if args.none else args.generation)
    if host.pinned_generation is None:
        print(f"{host.name}: follows role {host.role}'s current generation")
    else:
        print(f"{host.name}: pinned to generation {host.pinned_generation} of role {host.role}")
    return 0


def cmd_images_gc(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg, readonly=args.dry_run)
    grace = model.duration(args.grace, "--grace", zero=True)
    pruned: dict[str, list[int]] = {}
    refs = None
    if args.dry_run:  # what the real run would forget and free, computed, nothing written
        pruned, arts, paths = store.prune_preview(args.keep)
        refs = (arts, paths)
    elif args.keep is not None:
        for r in store.roles():
            gone = store.prune(r.name, args.keep)
            if gone:
                pruned[r.name] = gone
    rep = gc(store, cfg.state_dir, grace=grace, dry_run=args.dry_run, refs=refs)
    if args.json:
        print(json.dumps({
            "pruned": pruned, "artifacts": rep.artifacts, "artifact_bytes": rep.artifact_bytes,
            "cache_entries": rep.cache_entries, "cache_bytes": rep.cache_bytes,
            "temp_files": rep.temp_files, "kept_young": rep.kept_young, "freed": rep.freed,
            "gc_roots": rep.gc_roots, "dry_run": args.dry_run,
        }, indent=2))
        return 0
    for role, gens in pruned.items():
        print(f"role {role}: {'would forget' if args.dry_run else 'forgot'} generations "
              f"{', '.join(map(str, gens))}")
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {human_size(rep.freed)}: {len(rep.artifacts)} artifact(s) "
          f"({human_size(rep.artifact_bytes)}), {len(rep.cache_entries)} compose-cache "
          f"entr{'y' if len(rep.cache_entries) == 1 else 'ies'} ({human_size(rep.cache_bytes)}), "
          f"{rep.temp_files} temp file(s)")
    if rep.gc_roots:
        print(f"{'would drop' if args.dry_run else 'dropped'} {len(rep.gc_roots)} Nix GC root(s) "
              "of forgotten generations (`nix-collect-garbage` may now delete those paths)")
    if rep.kept_young:
        print(f"kept {rep.kept_young} unreferenced file(s) younger than {grace:.0f}s")
    return 0


def cmd_build_image(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    role = model.role_name(args.role)
    if args.mac is not None:
        host = Host(MacAddress.parse(args.mac), role)
        subdir = f"by-mac/{host.mac.hyphen}"
    else:
        # No MAC: the script never prints one (static.ipxe.j2), the host is its canonical name.
        host = Host(MacAddress(bytes(6)), role, canon=model.canon_name(args.canon))
        subdir = f"by-canon/{host.canon}"
    image = store.image(role, args.generation)
    if image is None:
        what = f"generation {args.generation}" if args.generation is not None else "an image"
        raise NotFound(f"role {role!r} has no {what}")
    r = store.role(role)
    word = policy.flag_word(r.provision_flag if r else None, cfg.provision.flag)
    text = static_export.script(ScriptRenderer(cfg.templates_dir), host, image, word,
                                args.cmdline or "")  # validates before anything is written
    out = static_export.write(Path(args.store), subdir, image, Artifacts(cfg.state_dir), text)
    print(f"wrote {out}/ (kernel, initrd, netboot.ipxe): role {role} generation "
          f"{image.generation}")
    return 0


def register(sub: Any) -> Any:
    """`role ...`; returns its subparsers, which cli.stemcell adds `role mode` to."""
    role = sub.add_parser("role", help="manage roles (what a host boots)")
    rsub = role.add_subparsers(dest="role_command", required=True, metavar="SUBCOMMAND")
    ra = rsub.add_parser("add", help="import a kernel and initrd(s) as a new generation of a role")
    ra.add_argument("name", help="the role (made if new)")
    ra.add_argument("--kernel", required=True, help="the kernel file (bzImage/vmlinuz)")
    ra.add_argument("--initrd", required=True, action="append", help="repeat for several")
    ra.add_argument("--cmdline", default="", help="kernel command line")
    ra.add_argument("--provision-flag", help="the role's re-provision flag (e.g. "
                    "homelab.provision_disks=true); default: provision.flag")
    ra.set_defaults(func=cmd_role_add)
    rl = rsub.add_parser("list", help="list roles")
    rl.add_argument("--json", action="store_true", help="as JSON")
    rl.set_defaults(func=cmd_role_list)
    rw = rsub.add_parser("show", help="one role: generation, mode, chain, flag, its hosts")
    rw.add_argument("name", help="the role")
    rw.add_argument("--json", action="store_true", help="as JSON")
    rw.set_defaults(func=cmd_role_show)
    rm = rsub.add_parser("remove", help="forget a role and its generations (refused while "
                         "hosts are enrolled in it)")
    rm.add_argument("name", help="the role")
    rm.set_defaults(func=cmd_role_remove)
    rb = rsub.add_parser("build", help="build a NixOS configuration into a new generation")
    rb.add_argument("name", help="the role (made if new)")
    rb.add_argument("--flake", help="<flake ref>#<name>: nixosConfigurations.<name>")
    rb.add_argument("--file", help="a Nix file (with --attr), like nix-build -f FILE -A ATTR")
    rb.add_argument("--attr", help="the configuration's attribute path in --file")
    rb.add_argument("--mode", choices=["netboot", "compose"], default="netboot",
                    help="netboot: NixOS's netbootRamdisk as is; compose: initialRamdisk + one "
                    "cached archive per store path of the toplevel's closure (default netboot)")
    rb.add_argument("--cmdline", default="", help="appended to init=... and boot.kernelParams")
    rb.add_argument("--keep", type=int, default=5, help="generations kept (default 5)")
    rb.add_argument("--compression", choices=["gzip", "xz", "none"], default="gzip",
                    help="of the composed per-path archives (default gzip)")
    rb.add_argument("--provision-flag", help="the role's re-provision flag (e.g. "
                    "homelab.provision_disks=true); default: provision.flag")
    rb.add_argument("--if-changed", action="store_true",
                    help="import nothing when the role's newest generation is this build (same "
                    "kernel, initrd, toplevel, mode and command line); --keep still applies")
    for opt, default in (("kernel-attr", "config.system.build.kernel"),
                         ("initrd-attr", "config.system.build.netbootRamdisk or .initialRamdisk"),
                         ("toplevel-attr", "config.system.build.toplevel"),
                         ("kernel-params-attr", "config.boot.kernelParams"),
                         ("kernel-file", "config.system.boot.loader.kernelFile, else bzImage"),
                         ("initrd-file", "initrd")):
        rb.add_argument(f"--{opt}", help=f"default {default}")
    rb.set_defaults(func=cmd_role_build)
    rg = rsub.add_parser("generations", help="a role's generations (* current)")
    rg.add_argument("name", help="the role")
    rg.add_argument("--json", action="store_true", help="as JSON")
    rg.set_defaults(func=cmd_role_generations)
    rs = rsub.add_parser("switch", help="make a generation current (atomic)")
    rs.add_argument("name", help="the role")
    rs.add_argument("--generation", type=int, required=True, help="the generation to make "
                    "current")
    rs.set_defaults(func=cmd_role_switch)
    rr = rsub.add_parser("rollback", help="make the previous generation current")
    rr.add_argument("name", help="the role")
    rr.set_defaults(func=cmd_role_rollback)
    rt = rsub.add_parser("set", help="a role's settings: the re-provision flag its hosts get")
    rt.add_argument("name", help="the role")
    rt.add_argument("--provision-flag",
                    help="one kernel parameter, e.g. homelab.provision_disks=true")
    rt.add_argument("--default-provision-flag", action="store_true",
                    help="use the configured default (provision.flag) again")
    rt.set_defaults(func=cmd_role_set)
    return rsub


def register_images(sub: Any) -> None:
    pn = sub.add_parser("pin", help="pin a host to a generation of its role (--none: unpin)")
    pn.add_argument("host", help="MAC, hostname or canonical name")
    pn.add_argument("generation", type=int, nargs="?", help="the generation of its role")
    pn.add_argument("--none", action="store_true", help="follow the role's current generation")
    pn.set_defaults(func=cmd_pin)

    im = sub.add_parser("images", help="the artifact store and compose cache")
    isub = im.add_subparsers(dest="images_command", required=True, metavar="SUBCOMMAND")
    ig = isub.add_parser("gc", help="delete artifacts and compose-cache entries no kept "
                         "generation needs")
    ig.add_argument("--keep", type=int, help="first forget all but the newest N generations of "
                    "every role (never the current or a pinned one)")
    ig.add_argument("--grace", default="1h", metavar="DURATION",
                    help="never delete files younger than this (e.g. 30m, 1h, or seconds; "
                    "default 1h)")
    ig.add_argument("--dry-run", action="store_true", help="say what the same command would "
                    "forget and free (--keep included), change nothing")
    ig.add_argument("--json", action="store_true", help="as JSON")
    ig.set_defaults(func=cmd_images_gc)

    bi = sub.add_parser("build-image", help="write a host's kernel, initrd and iPXE script into "
                        "a static netboot store (by-mac/<mac>/ or by-canon/<name>/)")
    bi.add_argument("--role", required=True, help="the role whose generation is written")
    who = bi.add_mutually_exclusive_group(required=True)
    who.add_argument("--mac", help="write by-mac/<mac>/")
    who.add_argument("--canon", help="write by-canon/<name>/ (the script names no MAC)")
    bi.add_argument("--store", required=True, help="the static store's root directory")
    bi.add_argument("--generation", type=int, help="default: the role's current generation")
    bi.add_argument("--cmdline", default="", help="appended to the generation's command line")
    bi.set_defaults(func=cmd_build_image)
