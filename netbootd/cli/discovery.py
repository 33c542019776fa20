"""Discovery: `discovered`, `discover rule add|list|remove`, `hosts show`, `hosts hardware`.

Everything a discovered machine reported is client text: it is printed through fmt.printable
(`table` does that for every cell) and the NixOS fragment quotes every string it prints."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from netbootd import model
from netbootd.cli.common import find_host, load_config, open_store, table
from netbootd.errors import InvalidInput, NotFound
from netbootd.fmt import human_size, printable
from netbootd.inventory import views as inv_views


def _disks(ds: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['name']} {d['serial'] or '-'} {human_size(d['size_bytes'])}"
                     for d in ds) or "-"


def _nics(ns: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n['mac']} ({n['driver'] or '-'})" for n in ns) or "-"


def cmd_discovered(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    rows = inv_views.discovered(store)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no machines discovered (dhcp.unknown_policy = \"discover\" boots unknown ones)")
        return 0
    out = [["MAC", "VENDOR", "PRODUCT", "SERIAL", "CPU", "MEMORY", "DISKS", "NICS",
            "FIRMWARE", "FIRST SEEN", "LAST SEEN", "SOURCE IP"]]
    for r in rows:
        out.append([r["mac"], r["vendor"] or "-", r["product"] or "-", r["serial"] or "-",
                    f"{r['cpu'] or '-'} ({r['threads']})", human_size(r["memory_bytes"]),
                    _disks(r["disks"]), _nics(r["nics"]),
                    r["firmware"] + (" SB" if r["secure_boot"] == "enabled" else ""),
                    r["first_seen"], r["last_seen"], r["source_ip"] or "-"])
    print(table(out))
    return 0


_MATCH = (("vendor", "vendor"), ("product", "product"), ("serial", "serial"),
          ("disk_serial", "disk_serial"), ("mac_prefix", "mac_prefix"), ("nics", "nics"))


def cmd_rule_add(args: argparse.Namespace) -> int:
    match: dict[str, str | int] = {k: getattr(args, a) for k, a in _MATCH
                                   if getattr(args, a) is not None}
    if not match:
        raise InvalidInput("a rule needs at least one of --vendor --product --serial "
                           "--disk-serial --mac-prefix --nics")
    if "mac_prefix" in match:
        p = str(match["mac_prefix"]).lower().replace("-", ":")
        if not all(c in "0123456789abcdef:" for c in p):
            raise InvalidInput(f"--mac-prefix {printable(p)!r}: hex digits and colons only")
        match["mac_prefix"] = p
    name = model.tag(args.name)  # the same spelling rules as a tag
    role = model.role_name(args.role)
    if args.hostname is not None and not args.hostname.strip():
        raise InvalidInput("--hostname: an empty template")
    store = open_store(load_config(args))
    r = store.add_rule(name, match, role, args.hostname, time.time())
    print(f"discovery rule {r.name}: {json.dumps(r.match, sort_keys=True)} -> role {r.role}"
          + (f", hostname {r.hostname}" if r.hostname else ""))
    return 0


def cmd_rule_list(args: argparse.Namespace) -> int:
    rows = inv_views.rules(open_store(load_config(args), readonly=True))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no discovery rules: netbootd discover rule add NAME --role ROLE --serial 'ABC*'")
        return 0
    out = [["NAME", "MATCH", "ROLE", "HOSTNAME", "ENROLLED"]]
    out += [[r["name"], json.dumps(r["match"], sort_keys=True), r["role"], r["hostname"] or "-",
             str(r["enrolled"])] for r in rows]
    print(table(out))
    return 0


def cmd_rule_remove(args: argparse.Namespace) -> int:
    open_store(load_config(args)).remove_rule(args.name)
    print(f"discovery rule {args.name} removed")
    return 0


def cmd_hosts_show(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    host = find_host(store, args.host)
    data = inv_views.host_show(store, host, time.time())
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    h = data["host"]
    print(f"{host.label}: role {h['role']}, state {h.get('state') or 'ok'}, last boot "
          f"{h.get('last_boot') or 'never'}")
    inv = data["inventory"]
    if inv is None:
        print("inventory: none reported")
    else:
        s = inv["summary"]
        print(table([
            ["system", f"{s['vendor'] or '-'} {s['product'] or '-'} serial {s['serial'] or '-'}"],
            ["cpu", f"{s['cpu'] or '-'} ({s['cores']} cores, {s['threads']} threads)"],
            ["memory", human_size(s["memory_bytes"])],
            ["firmware", f"{s['firmware']}, Secure Boot {s['secure_boot']}, "
                         f"TPM {(s.get('tpm_version') or 'yes') if s['tpm'] else 'no'}"],
            *([["tpm ek", f"sha256 {s['tpm_ek_sha256']} (the PEM: hosts hardware "
                          f"{host.name})"]] if s.get("tpm_ek_sha256") else []),
            *[["disk", f"{d['name']} {d['model'] or '-'} serial {d['serial'] or '-'} "
               f"{human_size(d['size_bytes'])}"] for d in s["disks"]],
            *[["nic", f"{n['name']} {n['mac']} {n['driver'] or '-'}"] for n in s["nics"]],
            ["reported", f"{inv['reported']} (last {inv['last_reported']})"],
        ]))
    for rec in data["history"]:
        print(f"  {rec['reported']}: " + printable("; ".join(rec["changes"]) or "-", 500))
    if data["events"]:
        print(table([["TIME", "EVENT", "SOURCE"]] + [[e["time"], e["event"], e["source_ip"] or "-"]
                                                     for e in data["events"]]))
    return 0


def cmd_hosts_hardware(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    host = find_host(store, args.host)
    if args.nix:
        text = inv_views.hardware_nix(store, host)
        if text is None:
            raise NotFound(f"{host.name} has reported no inventory yet")
        print(text, end="")
        return 0
    inv = inv_views.host_inventory(store, host)
    if inv is None:
        raise NotFound(f"{host.name} has reported no inventory yet")
    print(json.dumps(inv["inventory"], indent=2, sort_keys=True))
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser("discovered", help="machines that booted unknown and reported their "
                       "hardware (dhcp.unknown_policy = \"discover\")")
    d.add_argument("--json", action="store_true", help="as JSON (a list of objects)")
    d.set_defaults(func=cmd_discovered)
    disc = sub.add_parser("discover", help="discovery rules: enroll discovered machines by match")
    dsub = disc.add_subparsers(dest="discover_cmd", required=True)
    rule = dsub.add_parser("rule", help="add, list or remove discovery rules")
    rsub = rule.add_subparsers(dest="rule_cmd", required=True)
    add = rsub.add_parser("add", help="enroll matching discovered machines automatically")
    add.add_argument("name", help="the rule's name")
    add.add_argument("--role", required=True, help="the role a matching machine is enrolled in")
    add.add_argument("--vendor", help="DMI system vendor (a shell glob)")
    add.add_argument("--product", help="DMI product name (a shell glob)")
    add.add_argument("--serial", help="DMI system serial (a shell glob: 'ABC*')")
    add.add_argument("--disk-serial", dest="disk_serial",
                     help="a glob any of its disks' serials matches")
    add.add_argument("--mac-prefix", dest="mac_prefix", help="the booting MAC starts with it")
    add.add_argument("--nics", type=int, help="exactly this many NICs")
    add.add_argument("--hostname", help="a template: {serial} {vendor} {product} {mac} "
                     "{mac_hex} {n}, e.g. 'node-{n}'")
    add.set_defaults(func=cmd_rule_add)
    ls = rsub.add_parser("list", help="the rules, in the order they are tried")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.set_defaults(func=cmd_rule_list)
    rm = rsub.add_parser("remove", help="remove a rule")
    rm.add_argument("name", help="the rule's name")
    rm.set_defaults(func=cmd_rule_remove)


def register_hosts(hosts_parser: argparse.ArgumentParser) -> None:
    """`hosts show HOST`, `hosts hardware HOST [--nix]` under the `hosts` listing."""
    hs = hosts_parser.add_subparsers(dest="hosts_cmd", required=False)
    show = hs.add_parser("show", help="a host: state, inventory, what changed, events")
    show.add_argument("host", help="MAC, hostname or canonical name")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(func=cmd_hosts_show)
    hw = hs.add_parser("hardware", help="a host's hardware inventory (JSON), or --nix: a NixOS "
                       "module fragment")
    hw.add_argument("host", help="MAC, hostname or canonical name")
    hw.add_argument("--nix", action="store_true", help="a NixOS module fragment")
    hw.set_defaults(func=cmd_hosts_hardware)
