"""The boot chain: `role chain` (a role's transport, HTTP-boot payload, Secure Boot rule,
loader), `secureboot init|import|export|show`."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from netbootd.cli.common import load_config, open_store
from netbootd.errors import InvalidInput, NotFound
from netbootd.identity import secureboot
from netbootd.model import HttpBoot, Loader, RoleChain, SecureBootRule, Transport, role_name


def cmd_role_chain(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    role = role_name(args.role)
    if store.role(role) is None:
        raise NotFound(f"unknown role {role!r}")
    old = store.role_chain(role)
    new = RoleChain(
        role,
        old.transport if args.transport is None else
        (None if args.transport == "default" else Transport(args.transport)),
        old.http_boot if args.http_boot is None else
        (None if args.http_boot == "default" else HttpBoot(args.http_boot)),
        old.secure_boot if args.secure_boot is None else SecureBootRule(args.secure_boot),
        old.loader if args.loader is None else
        (None if args.loader == "default" else Loader(args.loader)),
    )
    if new != old:
        store.set_role_chain(new)
    shim = (new.loader or Loader(cfg.boot.loader)) is Loader.SHIM
    http_boot = new.http_boot or f"{cfg.boot.http_boot} (default)"
    if shim or new.secure_boot is SecureBootRule.REQUIRED:  # both mean UKIs only
        http_boot = f"{HttpBoot.UKI} ({'loader shim' if shim else 'secure boot required'})"
    print(f"role {role}: transport {new.transport or f'{cfg.boot.transport} (default)'}, "
          f"http boot {http_boot}, secure boot {new.secure_boot}, "
          f"loader {new.loader or f'{cfg.boot.loader} (default)'}")
    if shim:
        for line in secureboot.shim_notes(cfg.state_dir, cfg.boot.shim):
            print(f"  {line}")
    return 0


def cmd_sb_init(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    d = secureboot.init(cfg.state_dir, force=args.force)
    print(f"made PK, KEK and db in {d} (keys 0600); every UKI netbootd serves is now signed")
    print("enroll them: `netbootd secureboot export DIR` (ESL/PEM/DER; see the README)")
    return 0


def cmd_sb_import(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        owner = uuid.UUID(args.owner) if args.owner else None
    except ValueError:
        raise InvalidInput(f"--owner: {args.owner!r} is not a GUID") from None
    private = secureboot.import_keys(cfg.state_dir, Path(args.dir), owner, force=args.force)
    d = secureboot.sb_dir(cfg.state_dir)
    print(f"imported PK, KEK and db certificates and the {', '.join(private)} key(s) into {d} "
          "(keys 0600); every UKI netbootd serves is now signed with your db key")
    if "PK" not in private or "KEK" not in private:
        print("without PK.key and KEK.key, `secureboot export` writes no PK/KEK/db .auth "
              "updates for them (sign those where your keys live)")
    return 0


def cmd_sb_export(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    out = Path(args.dir)
    files = secureboot.export(cfg.state_dir, out)
    for f in files:
        print(f"wrote {f}")
    owner = secureboot.owner(cfg.state_dir)
    print("\nfor a VM (virt-firmware):\n  virt-fw-vars -i OVMF_VARS_4M.fd -o vars.fd --sb "
          f"--set-pk {owner} {out}/PK.crt --add-kek {owner} {out}/KEK.crt "
          f"--add-db {owner} {out}/db.crt")
    if (out / "db.auth").is_file():
        print("from a running Linux in setup mode (efitools; PK first, so the firmware checks "
              "the others' signatures):\n"
              f"  efi-updatevar -f {out}/PK.auth PK; efi-updatevar -f {out}/KEK.auth KEK; "
              f"efi-updatevar -f {out}/db.auth db")
    print("\nfor machines that keep Microsoft's keys (role chain --loader shim): enroll db.cer as "
          f"a MOK:\n  mokutil --import {out}/db.cer   # then reboot; MokManager asks for the "
          "password\nfor a VM: virt-fw-vars -i /usr/share/OVMF/OVMF_VARS_4M.ms.fd -o vars.fd "
          f"--add-mok {owner} {out}/db.cer")
    return 0


def cmd_sb_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    for line in secureboot.show(cfg.state_dir, cfg.boot.shim):
        print(line)
    return 0


def register(sub: Any, role_sub: Any) -> None:
    rc = role_sub.add_parser("chain", help="a role's boot chain: transport, HTTP boot, Secure Boot")
    rc.add_argument("role", help="the role")
    rc.add_argument("--transport", choices=["http", "https", "default"],
                    help="https: nothing after the firmware in clear (plain HTTP is refused)")
    rc.add_argument("--http-boot", choices=["ipxe", "uki", "default"],
                    help="what UEFI HTTP(S) boot clients get: iPXE, or the host's UKI")
    rc.add_argument("--secure-boot", choices=["off", "required"],
                    help="required: signed UKIs only, refused to hosts reporting it off")
    rc.add_argument("--loader", choices=["none", "shim", "default"],
                    help="shim: HTTP boot gets Debian's Microsoft-signed shim (boot.shim), which "
                    "loads the signed UKI (netbootd's db certificate enrolled as a MOK)")
    rc.set_defaults(func=cmd_role_chain)

    sb = sub.add_parser("secureboot", help="Secure Boot keys (PK/KEK/db) that sign netbootd's UKIs")
    sbsub = sb.add_subparsers(dest="sb_command", required=True, metavar="SUBCOMMAND")
    si = sbsub.add_parser("init", help="make PK, KEK and db")
    si.add_argument("--force", action="store_true", help="replace existing keys")
    si.set_defaults(func=cmd_sb_init)
    sm = sbsub.add_parser("import", help="use your own PK, KEK and db instead",
                          description="DIR holds db.key (PEM, unencrypted) and db.crt, KEK.crt "
                          "and PK.crt (PEM or DER); PK.key and KEK.key are taken when present "
                          "(only for the signed .auth exports). Checked, then installed at once.")
    sm.add_argument("dir", help="the directory with <name>.crt and <name>.key files")
    sm.add_argument("--owner", help="the signature owner GUID in the exports (default: new)")
    sm.add_argument("--force", action="store_true", help="replace existing keys")
    sm.set_defaults(func=cmd_sb_import)
    se = sbsub.add_parser("export", help="public keys for enrollment: ESL, PEM, DER, .auth")
    se.add_argument("dir", help="directory to write the .esl/.crt/.cer/.auth files to")
    se.set_defaults(func=cmd_sb_export)
    ss = sbsub.add_parser("show", help="the keys' fingerprints and the shim path")
    ss.set_defaults(func=cmd_sb_show)
