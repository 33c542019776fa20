"""`netbootd ipxe build|show|off`: netbootd's own iPXE (TRUST= its CA, HTTPS, an embedded
script that chains to the host's script over HTTPS); the build itself is netbootd/ipxe/."""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from netbootd import lookup
from netbootd.cli.common import load_config
from netbootd.errors import InvalidInput, NetbootdError, NotFound
from netbootd.identity import tls
from netbootd.ipxe import build as ib
from netbootd.ipxe import served


def _address(args: argparse.Namespace, cfg: Any) -> IPv4Address:
    value = args.address or lookup.server_address(cfg, None)
    if not value:
        raise InvalidInput("which address does the embedded script chain to? give --address "
                           "(or set advertise_address / interface in the config)")
    try:
        return IPv4Address(value)
    except ValueError:
        raise InvalidInput(f"--address: {value!r} is not an IPv4 address") from None


def _source(args: argparse.Namespace, state_dir: Path) -> ib.Source:
    if args.source:
        return ib.Source.open(Path(args.source))
    try:
        st = served.status(state_dir)
    except NetbootdError:
        st = None
    if st is not None:
        previous = ib.read_manifest(st.directory).get("source")
        if isinstance(previous, str) and Path(previous).exists():
            print(f"rebuilding from the last build's source {previous}", file=sys.stderr)
            return ib.Source.open(Path(previous))
    raise InvalidInput("give --source DIR|TARBALL: an iPXE checkout (its top, with src/) or a "
                       "source tarball")


def cmd_ipxe_build(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.target:
        targets = [ib.BY_NAME[n] for n in dict.fromkeys(args.target)]
    else:
        targets = ib.default_targets()
        skipped = [t.name for t in ib.TARGETS if t not in targets]
        if skipped:
            print(f"skipping {', '.join(skipped)}: no "
                  f"{', '.join(ib.BY_NAME[n].cross + 'gcc' for n in skipped)} (Debian: "
                  "gcc-aarch64-linux-gnu)", file=sys.stderr)
    try:
        ca = tls.ca_certificate(cfg.state_dir)
    except NotFound:  # before the first `serve`: make the CA (and certificate) it will use
        addresses = [str(cfg.advertise_address)] if cfg.advertise_address else []
        tls.ensure(cfg.state_dir, addresses, cfg.https.names)
        ca = tls.ca_certificate(cfg.state_dir)
    source = _source(args, cfg.state_dir)
    address = _address(args, cfg)
    result = ib.build(cfg.state_dir, source, ca, address, args.https_port or cfg.https.port,
                      targets,
                      work=Path(args.work_dir) if args.work_dir else None, jobs=args.jobs,
                      progress=lambda m: print(m, file=sys.stderr))
    m = result.manifest
    if args.json:
        print(json.dumps({**m, "cached": result.cached, "directory": str(result.directory)},
                         indent=2))
        return 0
    print(f"iPXE build {result.key}{' (cached)' if result.cached else ''}: source "
          f"{m['source_label']}, trusts CA {m['ca_sha256'][:16]}..., chains to "
          f"https://{m['address']}:{m['https_port']}/boot/<mac>.ipxe")
    for name, t in m["targets"].items():
        print(f"  {name:11} {served.served_name(t['file']):32} {t['size']:>8} bytes")
    print("`netbootd serve` offers these instead of the distro iPXE from now on")
    return 0


def cmd_ipxe_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    st = served.status(cfg.state_dir, *lookup.ipxe_chain_target(cfg))
    if st is None:
        data: dict[str, Any] = {"build": None, "served": False}
    else:
        data = {"build": st.key, "served": st.stale is None, "stale": st.stale,
                "source": st.source_label, "ca_sha256": st.ca_sha256, "address": st.address,
                "https_port": st.https_port, "files": {n: str(p) for n, p in st.files.items()}}
    if args.json:
        print(json.dumps(data, indent=2))
    elif st is None:
        print("no netbootd iPXE build: the distro iPXE is served (`netbootd ipxe build`)")
    else:
        print(f"build {st.key}: {'served' if st.stale is None else 'STALE: ' + st.stale}")
        print(f"  source {st.source_label}, CA {st.ca_sha256[:16]}..., chains to "
              f"https://{st.address}:{st.https_port}/")
        for n, p in sorted(st.files.items()):
            print(f"  {n:32} {p}")
    return 0 if st is None or st.stale is None else 1


def cmd_ipxe_off(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    gone = ib.clear_current(cfg.state_dir)
    print("the distro iPXE is served again" if gone else "no current build; nothing changed")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("ipxe", help="netbootd's own iPXE: HTTPS, trusting netbootd's CA")
    s = p.add_subparsers(dest="ipxe_command", required=True, metavar="SUBCOMMAND")
    b = s.add_parser("build", help="compile iPXE with TRUST= netbootd's CA (minutes)",
                     description="Compiles iPXE from an iPXE source tree or tarball with "
                     "netbootd's CA as its only trust anchor and an embedded script that "
                     "chains to https://ADDRESS:<https.port>/boot/<mac>.ipxe; the results are "
                     "cached by (source, CA, options) and served instead of the distro iPXE. "
                     "Run it again after `tls rotate --ca` (without --source it reuses the "
                     "last build's source).")
    b.add_argument("--source", metavar="DIR|TARBALL", help="iPXE source: a checkout's top "
                   "directory (with src/) or a tarball (default: the last build's)")
    b.add_argument("--target", action="append", choices=[t.name for t in ib.TARGETS],
                   help="build only this (repeatable; default: every one this machine can "
                   "compile: arm64-efi needs gcc-aarch64-linux-gnu)")
    b.add_argument("--address", help="the address the embedded script chains to (default: "
                   "advertise_address, else the interface's)")
    b.add_argument("--https-port", type=int, help="the HTTPS port it chains to (default: "
                   "https.port)")
    b.add_argument("--work-dir", metavar="DIR", help="where sources are unpacked and compiled "
                   "(default <state>/ipxe/work; kept: rebuilds take seconds)")
    b.add_argument("--jobs", type=int, help="make -j (default: the CPU count)")
    b.add_argument("--json", action="store_true", help="print the build's manifest as JSON")
    b.set_defaults(func=cmd_ipxe_build)
    sh = s.add_parser("show", help="the current build and whether it is served (exit 1: stale)")
    sh.add_argument("--json", action="store_true", help="as JSON")
    sh.set_defaults(func=cmd_ipxe_show)
    off = s.add_parser("off", help="serve the distro iPXE again (the builds stay cached)")
    off.set_defaults(func=cmd_ipxe_off)
