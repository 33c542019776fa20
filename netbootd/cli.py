"""The `netbootd` command. The only place that exits: NetbootdError -> message + status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from netbootd import __version__, model, policy
from netbootd.config import Config, load
from netbootd.errors import InvalidInput, NetbootdError, NotFound
from netbootd.images import ArtifactStore, Progress, import_role
from netbootd.model import Arch, BootClient, Host, MacAddress
from netbootd.store import Store

SYSTEM_CONFIG = Path("/etc/netbootd/netbootd.toml")
PROGRESS_MIN_BYTES = 32 << 20


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    path = args.config or os.environ.get("NETBOOTD_CONFIG")
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    o = dict(overrides or {})
    if args.state_dir is not None:
        o["state_dir"] = str(args.state_dir)
    return load(Path(path) if path else None, o)


def _store(cfg: Config) -> Store:
    return Store(cfg.state_dir)


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    d = max(0.0, (now or time.time()) - ts)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit} ago"
    return f"{int(d)}s ago"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _find_host(store: Store, ident: str) -> Host:
    try:
        host = store.host(MacAddress.parse(ident))
    except InvalidInput:
        host = store.host_by_name(ident.strip().lower())
    if host is None:
        raise NotFound(f"no enrolled host {ident!r} (give its MAC, hostname or canonical name)")
    return host


def _progress_bar(path: Path) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    label = path.name[:24]
    last = [-1]

    def show(done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        pct = int(done * 100 / total) if total else 100
        if pct == last[0]:
            return
        last[0] = pct
        bar = "#" * (pct // 4)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label:24} [{bar:25}] {pct:3d}% {done / 1e6:.0f}/{total / 1e6:.0f} MB{end}")
        sys.stderr.flush()

    return show


# -- commands ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from netbootd.app import Netbootd

    overrides: dict[str, Any] = {
        "interface": args.interface,
        "advertise_address": args.advertise_address,
        "http.port": args.http_port,
        "tftp.port": args.tftp_port,
        "tftp.root": args.tftp_root,
    }
    if args.no_dhcp:
        overrides["dhcp.enabled"] = False
    if args.no_tftp:
        overrides["tftp.enabled"] = False
    cfg = _config(args, overrides)
    logging.basicConfig(
        level="DEBUG" if args.verbose else cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("tftpy", "scapy", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    daemon = Netbootd.build(cfg)
    asyncio.run(daemon.run())
    return 0


def cmd_role_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    image = import_role(
        store,
        ArtifactStore(cfg.state_dir),
        args.name,
        Path(args.kernel),
        [Path(p) for p in args.initrd],
        args.cmdline or "",
        progress=_progress_bar,
    )
    print(
        f"role {image.role}: generation {image.generation} is current "
        f"(kernel {image.kernel.sha256[:12]}, {len(image.initrds)} initrd(s))"
    )
    return 0


def cmd_role_list(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    out: list[dict[str, Any]] = []
    for r in store.roles():
        img = store.image(r.name)
        out.append(
            {
                "name": r.name,
                "generation": r.current_generation,
                "generations": r.generations,
                "kernel": img.kernel.sha256 if img else None,
                "initrds": [a.sha256 for a in img.initrds] if img else [],
                "size": (img.kernel.size + sum(a.size for a in img.initrds)) if img else 0,
                "cmdline": img.cmdline if img else "",
                "created": _when(img.created) if img else None,
            }
        )
    if args.json:
        print(json.dumps(out, indent=2))
    elif not out:
        print("no roles yet: netbootd role add <name> --kernel FILE --initrd FILE")
    else:
        rows = [["ROLE", "GEN", "SIZE", "KERNEL", "CMDLINE"]]
        for o in out:
            rows.append(
                [
                    o["name"],
                    f"{o['generation']}/{o['generations']}",
                    f"{o['size'] / 1e6:.1f} MB",
                    (o["kernel"] or "")[:12],
                    o["cmdline"],
                ]
            )
        print(_table(rows))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    # Validate everything before the store is touched: a bad argument writes nothing.
    mac = MacAddress.parse(args.mac)
    role = model.role_name(args.role)
    hostname = model.hostname(args.hostname) if args.hostname is not None else None
    canon = model.canon_name(args.canon) if args.canon is not None else None
    tags = sorted({model.tag(t) for t in args.tag or []})
    store = _store(_config(args))
    host, created = store.enroll(mac, role, hostname, canon, tags)
    verb = "enrolled" if created else "updated"
    print(f"{verb} {host.mac} ({host.name}) -> role {host.role}")
    return 0


def cmd_unenroll(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    host = _find_host(store, args.host)
    store.unenroll(host.mac)
    print(f"unenrolled {host.mac} ({host.name})")
    return 0


def _host_json(store: Store, h: Host) -> dict[str, Any]:
    role = store.role(h.role)
    return {
        "mac": str(h.mac),
        "hostname": h.hostname,
        "canon": h.canon,
        "role": h.role,
        "generation": role.current_generation if role else None,
        "tags": list(h.tags),
        "enrolled": _when(h.created),
        "last_boot": _when(h.last_boot),
        "last_boot_ip": h.last_boot_ip,
    }


def cmd_hosts(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    tag = model.tag(args.tag) if args.tag else None
    hosts = [_host_json(store, h) for h in store.hosts(tag)]
    if args.json:
        print(json.dumps(hosts, indent=2))
        return 0
    if not hosts:
        print("no hosts enrolled: netbootd enroll <mac> <role>")
        return 0
    rows = [["MAC", "HOSTNAME", "ROLE", "GEN", "TAGS", "LAST BOOT"]]
    for h, raw in zip(hosts, store.hosts(tag)):
        rows.append(
            [
                h["mac"],
                h["hostname"] or "-",
                h["role"],
                str(h["generation"] or "-"),
                ",".join(h["tags"]) or "-",
                _ago(raw.last_boot) + (f" from {raw.last_boot_ip}" if raw.last_boot_ip else ""),
            ]
        )
    print(_table(rows))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from netbootd.codec import dhcp as dhcp_codec
    from netbootd.codec.ipxe import ScriptRenderer

    mac = MacAddress.parse(args.mac)
    arch = Arch(args.arch)
    cfg = _config(args, {"advertise_address": args.advertise_address})
    store = _store(cfg)
    server = cfg.advertise_address
    if server is None and cfg.interface:
        from netbootd.app import interface_ipv4

        server = interface_ipv4(cfg.interface)
    if server is None:
        print("note: no advertise_address/interface configured; the server fills in the address")
        print("      each request arrived on. Shown here as 0.0.0.0 / <server>.\n")
        urls = policy.Urls(f"http://<server>:{cfg.http.port}")
        server = IPv4Address("0.0.0.0")
    else:
        urls = policy.Urls.for_address(server, cfg.http.port)
    files = policy.BootFileNames(**cfg.boot_files.model_dump())
    host = store.host(mac)
    if host is None:
        print(f"{mac}: not enrolled")
    else:
        print(f"{mac}: {host.name}, role {host.role}, tags {','.join(host.tags) or '-'}, "
              f"last boot {_ago(host.last_boot)}")
    stages = [(f"firmware PXE ({arch})", BootClient(mac, arch, ipxe=False))]
    if arch is not Arch.HTTP:
        stages.append((f"iPXE ({arch})", BootClient(mac, arch, ipxe=True)))
    for title, client in stages:
        print(f"\n== {title}: DHCP DISCOVER on port {cfg.dhcp.port} ==")
        boot = policy.dhcp_boot(host, client, server, urls, files)
        if boot is None:
            reason = "not enrolled (unknown_policy=ignore)" if host is None else "no boot file for this arch"
            print(f"no reply: {reason}")
            continue
        req = dhcp_codec.synthetic_request(client, "dhcp")
        reply = dhcp_codec.build_reply(req, boot, server, "dhcp")
        print(f"proxyDHCP reply ({boot.reason}):")
        for k, v in dhcp_codec.reply_summary(reply):
            print(f"  {k:20} {v}")
    print(f"\n== iPXE script: GET /boot/{mac.hyphen}.ipxe ==")
    renderer = ScriptRenderer(cfg.templates_dir)
    if host is None:
        print("HTTP 404")
        print(renderer.unknown_script(mac), end="")
        return 0
    image = store.image(host.role)
    if image is None:
        raise NotFound(f"role {host.role!r} has no image")
    print(renderer.host_script(policy.boot_plan(host, image, urls)), end="")
    return 0


# -- argument parsing -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd", description="Network-boot and provisioning server.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}")
    p.add_argument("--state-dir", type=Path, help="state directory (env NETBOOTD_STATE_DIR; "
                   "default /var/lib/netbootd)")
    p.add_argument("--config", type=Path, help="TOML config file (env NETBOOTD_CONFIG; "
                   f"default {SYSTEM_CONFIG} if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxyDHCP, TFTP and HTTP servers")
    s.add_argument("--interface", help="network interface to serve on (its IPv4 is advertised)")
    s.add_argument("--advertise-address", help="IPv4 address clients reach netbootd at")
    s.add_argument("--http-port", type=int)
    s.add_argument("--tftp-port", type=int)
    s.add_argument("--tftp-root", help="directory with iPXE binaries (default /usr/lib/ipxe)")
    s.add_argument("--no-dhcp", action="store_true", help="do not run the proxyDHCP responder")
    s.add_argument("--no-tftp", action="store_true", help="do not run the TFTP server")
    s.set_defaults(func=cmd_serve)

    role = sub.add_parser("role", help="manage roles (what a host boots)")
    rsub = role.add_subparsers(dest="role_command", required=True, metavar="SUBCOMMAND")
    ra = rsub.add_parser("add", help="import a kernel and initrd(s) as a new generation of a role")
    ra.add_argument("name")
    ra.add_argument("--kernel", required=True)
    ra.add_argument("--initrd", required=True, action="append", help="repeat for several")
    ra.add_argument("--cmdline", default="", help="kernel command line")
    ra.set_defaults(func=cmd_role_add)
    rl = rsub.add_parser("list", help="list roles")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_role_list)

    e = sub.add_parser("enroll", help="make a machine (by MAC) boot a role")
    e.add_argument("mac")
    e.add_argument("role")
    e.add_argument("--hostname")
    e.add_argument("--canon", help="canonical (fully qualified) host name")
    e.add_argument("--tag", action="append", help="repeat for several")
    e.set_defaults(func=cmd_enroll)

    u = sub.add_parser("unenroll", help="forget a machine (by MAC or hostname)")
    u.add_argument("host")
    u.set_defaults(func=cmd_unenroll)

    h = sub.add_parser("hosts", help="list enrolled machines")
    h.add_argument("--json", action="store_true")
    h.add_argument("--tag")
    h.set_defaults(func=cmd_hosts)

    x = sub.add_parser("explain", help="show exactly what a machine would get")
    x.add_argument("mac")
    x.add_argument("--arch", choices=[a.value for a in Arch], default="bios")
    x.add_argument("--advertise-address")
    x.set_defaults(func=cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NetbootdError as e:
        print(f"netbootd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
