"""Host identities: `keys ...` (netbootd's own TLS is cli/tls.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from netbootd import actions, views
from netbootd.cli import remote
from netbootd.cli.common import find_host, identity_summary, load_config, open_store, table
from netbootd.errors import InvalidInput
from netbootd.fsutil import write_file
from netbootd.identity import hostkeys, vault
from netbootd.identity.vault import Vault
from netbootd.store import Store


def cmd_keys_generate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    host = find_host(store, args.host)
    vault.check_new(store, host)
    pub = vault.create_identity(store, Vault(cfg.state_dir), host, arm=not args.no_arm,
                             event="keys-generated")
    print(f"{host.name}: identity generation {pub.generation}: {identity_summary(pub)}")
    print("armed: delivered once on its next boot" if not args.no_arm else
          f"not armed: `netbootd keys arm {host.name}` when it should get it")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    host = find_host(store, args.host)
    old = vault.current(store, host)
    pub = vault.create_identity(store, Vault(cfg.state_dir), host, arm=True, event="keys-rotated")
    print(f"{host.name}: identity generation {pub.generation} replaces {old.generation} "
          f"(kept in the state directory): {identity_summary(pub)}")
    print("armed: delivered once on its next boot; update known_hosts and age recipients")
    return 0


def cmd_keys_arm(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        return remote.print_lines(remote.request(
            args, "POST", f"/api/v1/hosts/{remote.quote(args.host)}/identity/arm",
            body={"every_boot": args.every_boot}))
    store = open_store(load_config(args))
    print("\n".join(actions.arm(store, find_host(store, args.host), args.every_boot).lines))
    return 0


def cmd_keys_disarm(args: argparse.Namespace) -> int:
    store = open_store(load_config(args))
    host = find_host(store, args.host)
    vault.current(store, host)
    state = store.arm_identity(host.mac, armed=False)
    print(f"{host.name}: identity generation {state.generation} disarmed")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    if args.host:
        if remote.wanted(args):
            data = remote.get(args, f"/api/v1/hosts/{remote.quote(args.host)}/keys")
        else:
            store = open_store(load_config(args), readonly=True)
            data = views.host_keys(store, find_host(store, args.host))
        return _print_host_keys(data, args.json)
    if remote.wanted(args):
        rows_json = remote.get(args, "/api/v1/keys")
    else:
        rows_json = views.keys(open_store(load_config(args), readonly=True))
    if args.json:
        print(json.dumps(rows_json, indent=2))
        return 0
    if not rows_json:
        print("no identities yet: `netbootd enroll` makes one, or `netbootd keys generate <host>`")
        return 0
    rows = [["HOST", "GEN", "ARMED", "ED25519", "HOSTID", "WIREGUARD"]]
    for r in rows_json:
        armed = "every-boot" if r["every_boot"] else "yes" if r["armed"] else "no"
        rows.append([r["hostname"] or r["mac"], str(r["generation"]), armed,
                     r["ssh_ed25519_fingerprint"], r["hostid"], r["wireguard_public"]])
    print(table(rows))
    return 0


def _print_host_keys(data: dict[str, Any], as_json: bool) -> int:
    name, gens = data["host"], data["generations"]
    if as_json:
        print(json.dumps(data, indent=2))
    elif not gens:
        print(f"{name} has no identity: netbootd keys generate {name}")
    else:
        arming = "armed (every boot)" if data["every_boot"] else \
            "armed" if data["armed"] else "not armed"
        mac = gens[-1]["mac"]
        print(f"{name} ({mac}): {arming}" if name != mac else f"{name}: {arming}")
        for g in gens:
            mark = "*" if g["current"] else " "
            rsa = g["ssh_rsa_fingerprint"] or "pending"
            print(f"{mark} generation {g['generation']}  {g['created']}  ed25519 "
                  f"{g['ssh_ed25519_fingerprint']}  rsa {rsa}")
            print(f"    machine-id {g['machine_id']}  hostId {g['hostid']}  "
                  f"wireguard {g['wireguard_public']}")
    return 0


def _export(store: Store, what: str, as_json: bool, age1: bool) -> str:
    entries = []
    for host in store.hosts():
        pub = store.identity(host.mac)
        if pub is not None:
            entries.append((host, pub))
    if what in ("known_hosts", "known-hosts"):
        if as_json:
            raise InvalidInput("known_hosts has no --json form")
        return hostkeys.known_hosts([(h, p, store.last_seen_ip(h.mac)) for h, p in entries])
    recipient = hostkeys.age_x25519_recipient if age1 else hostkeys.age_recipient
    if as_json:
        return json.dumps({h.name: recipient(p) for h, p in entries}, indent=2) + "\n"
    lines = ["# netbootd age recipients (one per host; `age -R` reads this file)"]
    for h, p in entries:
        lines.append(f"# {h.label}, identity generation {p.generation}")
        lines.append(recipient(p))
    return "\n".join(lines) + "\n"


def cmd_keys_export(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    text = _export(store, args.what, args.json, args.age1)
    if args.output:
        out = Path(args.output)
        write_file(out, text.encode(), 0o644)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def register(sub: Any) -> None:
    k = sub.add_parser("keys", help="host identities: SSH and WireGuard keys, machine-id, hostId")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    kg = ksub.add_parser("generate", help="make a host's first identity (and arm it)")
    kg.add_argument("host", help="MAC, hostname or canonical name")
    kg.add_argument("--no-arm", action="store_true", help="generate, but do not hand it out yet")
    kg.set_defaults(func=cmd_keys_generate)
    kr = ksub.add_parser("rotate", help="new keys for a host (the old generation is kept); arms")
    kr.add_argument("host", help="MAC, hostname or canonical name")
    kr.set_defaults(func=cmd_keys_rotate)
    ka = ksub.add_parser("arm", help="hand the identity out on the host's next boot")
    ka.add_argument("host", help="MAC, hostname or canonical name")
    ka.add_argument("--every-boot", action="store_true",
                    help="at every boot (stateless hosts), not just the next one")
    ka.set_defaults(func=cmd_keys_arm)
    kd = ksub.add_parser("disarm", help="stop handing the identity out")
    kd.add_argument("host", help="MAC, hostname or canonical name")
    kd.set_defaults(func=cmd_keys_disarm)
    kl = ksub.add_parser("list", help="hosts' identities (public parts), or one host's generations")
    kl.add_argument("host", nargs="?", help="one host: its generations (default: every host)")
    kl.add_argument("--json", action="store_true", help="as JSON (public parts only)")
    kl.set_defaults(func=cmd_keys_list)
    kx = ksub.add_parser("export", help="known_hosts or age recipients of every enrolled host")
    kx.add_argument("what", choices=["known_hosts", "known-hosts", "age-recipients"],
                    help="known_hosts lines or age recipients")
    for sp in (kx,
               ksub.add_parser("known-hosts", help="same as `keys export known_hosts`"),
               ksub.add_parser("age-recipients", help="same as `keys export age-recipients`")):
        sp.add_argument("-o", "--output", help="write this file instead of standard output")
        sp.add_argument("--json", action="store_true", help="age recipients as {host: recipient}")
        sp.add_argument("--age1", action="store_true", help="age recipients in ssh-to-age's "
                        "age1... form (decrypt with the converted key, not the host key)")
        sp.set_defaults(func=cmd_keys_export)
    ksub.choices["known-hosts"].set_defaults(what="known_hosts")
    ksub.choices["age-recipients"].set_defaults(what="age-recipients")
