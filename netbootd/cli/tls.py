"""netbootd's own TLS: `tls show`, `tls rotate`, `tls export` (the CA for firmware and BMCs)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from netbootd.cli.common import load_config
from netbootd.codec import efi
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fsutil import write_file
from netbootd.identity import tls
from netbootd.ipxe import build as ipxe_build


def advertised(cfg: Config) -> tuple[list[str], list[str]]:
    """The addresses and names the server certificate must carry for this config."""
    addresses = [str(cfg.advertise_address)] if cfg.advertise_address else []
    return addresses, list(cfg.https.names)


def cmd_tls_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    i = tls.info(cfg.state_dir)
    data = {
        "pin": i.pin,
        "subject": i.subject,
        "subject_alt_names": list(i.sans),
        "not_after": i.not_after.isoformat(timespec="seconds"),
        "ca_subject": i.ca_subject,
        "ca_sha256": i.ca_sha256,
        "ca_cert": str(tls.ca_cert_path(cfg.state_dir)),
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:18} {', '.join(v) if isinstance(v, list) else v}")
    return 0


def cmd_tls_rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    addresses, names = advertised(cfg)
    pin = tls.rotate(cfg.state_dir, ca=args.ca, addresses=addresses, names=names)
    print(f"new HTTPS {'CA and ' if args.ca else ''}server key; pin {pin}")
    print("a running `netbootd serve` uses it from its next connection; scripts carry the new pin")
    if not args.ca:
        return 0
    print("firmware and BMCs trusting the old CA must get the new one: `netbootd tls export`")
    if ipxe_build.current_key(cfg.state_dir) is None:
        return 0
    if args.no_ipxe_rebuild:
        print("netbootd's iPXE build trusts the old CA: it is no longer served (the distro "
              "iPXE is) until `netbootd ipxe build` runs again (it reuses the last source)")
        return 0
    try:  # the last build again (its source, targets, address and port), for the new CA
        r = ipxe_build.rebuild(cfg.state_dir, tls.ca_certificate(cfg.state_dir),
                               progress=lambda m: print(m, file=sys.stderr))
    except NetbootdError as e:
        print(f"netbootd's iPXE build trusts the old CA and could not be rebuilt: {e}\n"
              "it is no longer served (the distro iPXE is) until `netbootd ipxe build` "
              "succeeds", file=sys.stderr)
        return 1
    if r is not None:
        print(f"rebuilt netbootd's iPXE for the new CA: build {r.key} "
              f"({', '.join(r.manifest['targets'])}), served from now on")
    return 0


def export_bytes(cfg: Config, fmt: str, owner: uuid.UUID = efi.NETBOOTD_OWNER) -> bytes:
    """The CA certificate as PEM, DER or an EFI signature list (EFI_CERT_X509_GUID)."""
    ca = tls.ca_certificate(cfg.state_dir)
    if fmt == "pem":
        return ca.public_bytes(serialization.Encoding.PEM)
    der = ca.public_bytes(serialization.Encoding.DER)
    if fmt == "der":
        return der
    if fmt == "esl":
        return efi.signature_list(der, owner)
    raise InvalidInput(f"unknown format {fmt!r} (pem, der or esl)")


def cmd_tls_export(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        owner = uuid.UUID(args.owner) if args.owner else efi.NETBOOTD_OWNER
    except ValueError:
        raise InvalidInput(f"--owner: {args.owner!r} is not a GUID") from None
    data = export_bytes(cfg, args.format, owner)
    if args.output:
        write_file(Path(args.output), data, 0o644)
        print(f"wrote {args.output} ({args.format}, {len(data)} bytes)", file=sys.stderr)
    elif args.format == "pem":
        sys.stdout.write(data.decode())
    elif sys.stdout.isatty():
        raise InvalidInput(f"{args.format} is binary: give -o FILE (or redirect the output)")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    t = sub.add_parser("tls", help="netbootd's CA and HTTPS certificate")
    tsub = t.add_subparsers(dest="tls_command", required=True, metavar="SUBCOMMAND")
    ts = tsub.add_parser("show", help="the certificate, its pin and the CA")
    ts.add_argument("--json", action="store_true", help="as JSON")
    ts.set_defaults(func=cmd_tls_show)
    tr = tsub.add_parser("rotate", help="a new HTTPS server key and certificate")
    tr.add_argument("--ca", action="store_true", help="a new CA too (netbootd's iPXE build is "
                    "rebuilt for it: seconds, the compiled objects are kept)")
    tr.add_argument("--no-ipxe-rebuild", action="store_true", help="with --ca: leave the iPXE "
                    "build stale (not served) for a later `netbootd ipxe build`")
    tr.set_defaults(func=cmd_tls_rotate)
    te = tsub.add_parser("export", help="the CA certificate, for firmware HTTPS boot and BMCs",
                         description="PEM (Redfish, curl), DER (firmware setup menus) or an EFI "
                         "signature list (OVMF's -fw_cfg name=etc/edk2/https/cacerts, "
                         "db-style enrollment). See the README, 'HTTPS boot'.")
    te.add_argument("--format", choices=["pem", "der", "esl"], default="pem",
                    help="PEM (BMCs, curl), DER (setup menus), EFI signature list (default pem)")
    te.add_argument("-o", "--output", help="write this file instead of standard output")
    te.add_argument("--owner", help="the signature owner GUID in an ESL (default: netbootd's)")
    te.set_defaults(func=cmd_tls_export)
