"""BMCs and power: `bmc set|show|remove`, `power on|off|cycle|status`, `boot-once HOST pxe`
(and `reprovision --reboot`, in hosts.py, through the same actions). Power commands work on
the local state or, with --server, through the admin API; `bmc set` is local only (the
password file is read on the machine that keeps it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from netbootd import actions, views
from netbootd.cli import remote
from netbootd.cli.common import find_host, load_config, open_store
from netbootd.power.settings import PowerAction


def cmd_bmc_set(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    out = actions.bmc_set(store, cfg, find_host(store, args.host), args.ipmi, args.redfish,
                          args.user, Path(args.password_file),
                          Path(args.ca_file) if args.ca_file else None, args.insecure)
    print("\n".join(out.lines))
    return 0


def cmd_bmc_show(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        data = remote.get(args, f"/api/v1/hosts/{remote.quote(args.host)}/bmc")
    else:
        store = open_store(load_config(args), readonly=True)
        h = find_host(store, args.host)
        data = {"mac": str(h.mac), "host": h.name, "bmc": views.bmc_json(store.bmc(h.mac))}
    return print_bmc(data, args.json)


def print_bmc(data: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    b = data["bmc"]
    if b is None:
        print(f"{data['host']}: no BMC settings")
        return 1
    extra = (f", CA {b['ca_file']}" if b["ca_file"] else "") + (
        ", certificate NOT checked (--insecure)" if b["insecure"] else "")
    print(f"{data['host']}: {b['kind']} {b['target']}, user {b['user']}, password "
          f"{b['password']}{extra} (changed {b['changed']})")
    return 0


def cmd_bmc_remove(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    print("\n".join(actions.bmc_remove(store, cfg, find_host(store, args.host)).lines))
    return 0


def _power(args: argparse.Namespace, action: PowerAction) -> int:
    if remote.wanted(args):
        base = f"/api/v1/hosts/{remote.quote(args.host)}"
        if action is PowerAction.STATUS:
            out = remote.get(args, base + "/power")
        elif action is PowerAction.BOOT_ONCE_PXE:
            out = remote.request(args, "POST", base + "/boot-once", body={"device": "pxe"})
        else:
            out = remote.request(args, "POST", base + "/power", body={"action": str(action)})
    else:
        cfg = load_config(args)
        store = open_store(cfg)
        out = actions.power(store, cfg, find_host(store, args.host), action).json()
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2))
        return 0
    return remote.print_lines(out)


def cmd_power(args: argparse.Namespace) -> int:
    return _power(args, PowerAction(args.action))


def cmd_boot_once(args: argparse.Namespace) -> int:
    return _power(args, PowerAction.BOOT_ONCE_PXE)


def register(sub: Any) -> None:
    b = sub.add_parser("bmc", help="a host's BMC (IPMI or Redfish) for power control")
    bsub = b.add_subparsers(dest="bmc_command", required=True, metavar="COMMAND")
    s = bsub.add_parser("set", help="set (or replace) a host's BMC and its credentials")
    s.add_argument("host", help="MAC, hostname or canonical name")
    kind = s.add_mutually_exclusive_group(required=True)
    kind.add_argument("--ipmi", metavar="ADDR[:PORT]", help="IPMI v2.0 (RMCP+) BMC; port 623")
    kind.add_argument("--redfish", metavar="URL", help="Redfish service (https://bmc or "
                      "https://bmc/redfish/v1/Systems/<id>)")
    s.add_argument("--user", required=True, help="the BMC user netbootd logs in as")
    s.add_argument("--password-file", required=True, metavar="FILE",
                   help="a file holding the password (one line); copied to the state "
                   "directory (0600), never printed")
    s.add_argument("--ca-file", metavar="FILE", help="Redfish over HTTPS: the BMC's CA")
    s.add_argument("--insecure", action="store_true",
                   help="Redfish over HTTPS: do not check the BMC's certificate")
    s.set_defaults(func=cmd_bmc_set)
    sh = bsub.add_parser("show", help="a host's BMC settings (the password only as 'set')")
    sh.add_argument("host", help="MAC, hostname or canonical name")
    sh.add_argument("--json", action="store_true", help="as JSON")
    sh.set_defaults(func=cmd_bmc_show)
    rm = bsub.add_parser("remove", help="forget a host's BMC and its password file")
    rm.add_argument("host", help="MAC, hostname or canonical name")
    rm.set_defaults(func=cmd_bmc_remove)

    p = sub.add_parser("power", help="power a host on, off or cycle it, or ask its state, "
                       "through its BMC")
    p.add_argument("action", choices=["on", "off", "cycle", "status"],
                   help="on, off, cycle (off then on; on if off) or status (ask the BMC)")
    p.add_argument("host", help="MAC, hostname or canonical name")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_power)

    o = sub.add_parser("boot-once", help="make a host's next boot (only) a network boot")
    o.add_argument("host", help="MAC, hostname or canonical name")
    o.add_argument("device", choices=["pxe"], help="pxe: a network boot")
    o.add_argument("--json", action="store_true", help="as JSON")
    o.set_defaults(func=cmd_boot_once)
