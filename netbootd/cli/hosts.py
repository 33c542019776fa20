"""Hosts: `enroll`, `unenroll`, `hosts` (`hosts show|hardware`: cli/discovery.py),
`reprovision` (`--reboot`: power/), `status`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from netbootd import actions, model, views
from netbootd.cli import discovery, remote
from netbootd.cli.common import (
    ago,
    find_host,
    hosts_for,
    load_config,
    open_store,
    parse_duration,
    table,
)
from netbootd.errors import InvalidInput
from netbootd.model import MacAddress


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        if args.mac or args.role or args.hostname or args.canon or args.tag:
            raise InvalidInput("--from FILE takes no MAC, role or host options (they are in "
                               "the file)")
        from netbootd.cli import bulk

        return bulk.enroll_from(args, Path(args.from_file))
    if args.mac is None or args.role is None:
        raise InvalidInput("give a MAC and a role, or --from FILE")
    tags = list(args.tag or [])
    if remote.wanted(args):
        out = remote.request(args, "POST", "/api/v1/hosts", body={
            "mac": args.mac, "role": args.role, "hostname": args.hostname, "canon": args.canon,
            "tags": tags, "identity": not args.no_identity})
        return remote.print_lines(out)
    cfg = load_config(args)
    # validated before the state is opened (or made): a bad argument writes nothing
    MacAddress.parse_host(args.mac)
    model.role_name(args.role)
    for check, value in ((model.hostname, args.hostname), (model.canon_name, args.canon)):
        if value is not None:
            check(value)
    for t in tags:
        model.tag(t)
    res = actions.enroll(open_store(cfg), cfg, args.mac, args.role, args.hostname, args.canon,
                         tags, identity=not args.no_identity)
    print("\n".join(res.lines))
    return 0


def cmd_unenroll(args: argparse.Namespace) -> int:
    if remote.wanted(args):
        return remote.print_lines(remote.request(args, "DELETE",
                                                 f"/api/v1/hosts/{remote.quote(args.host)}"))
    cfg = load_config(args)
    store = open_store(cfg)
    print("\n".join(actions.unenroll(store, cfg, find_host(store, args.host)).lines))
    return 0


def _state_text(h: dict[str, Any]) -> str:
    p = h["provision"]
    if h["state"] in ("provisioning", "armed") and p:
        return f"{h['state']} ({p['boots']}/{p['max_boots']})"
    return str(h["state"])


def cmd_hosts(args: argparse.Namespace) -> int:
    tag = model.tag(args.tag) if args.tag else None
    if remote.wanted(args):
        hosts = remote.get(args, "/api/v1/hosts", {"tag": tag})
    else:
        hosts = views.hosts(open_store(load_config(args), readonly=True), tag, time.time())
    return print_hosts(hosts, args.json)


def print_hosts(hosts: list[dict[str, Any]], as_json: bool) -> int:
    """`netbootd hosts` from what views.hosts (or the API) gave: the same text either way."""
    if as_json:
        print(json.dumps(hosts, indent=2))
        return 0
    if not hosts:
        print("no hosts enrolled: netbootd enroll <mac> <role>")
        return 0
    now = time.time()
    rows = [["MAC", "HOSTNAME", "ROLE", "GEN", "STATE", "TAGS", "LAST BOOT", "LAST PROVISIONED"]]
    for h in hosts:
        ip = h["last_boot_ip"]
        rows.append([
            h["mac"], h["hostname"] or "-", h["role"], str(h["generation"] or "-"),
            _state_text(h), ",".join(h["tags"]) or "-",
            ago(views.seconds(h["last_boot"]), now) + (f" from {ip}" if ip else ""),
            ago(views.seconds(h["last_provisioned"]), now),
        ])
    print(table(rows))
    for h in hosts:
        if h["state"] == "failed":
            print(f"{h['hostname'] or h['mac']}: re-provision FAILED: "
                  f"{h['provision']['reason']}; `netbootd reprovision` arms it again, "
                  "`--cancel` clears it", file=sys.stderr)
    return 0


def cmd_reprovision(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, "--ttl") if args.ttl else None
    if remote.wanted(args):
        if (args.host is None) == (args.tag is None):
            raise InvalidInput("name one host, or a group with --tag T")
        path = (f"/api/v1/hosts/{remote.quote(args.host)}/reprovision" if args.host
                else "/api/v1/reprovision")
        out = remote.request(args, "POST", path, body={
            "tag": args.tag, "ttl": args.ttl, "max_boots": args.max_boots,
            "cancel": args.cancel, "reboot": args.reboot})
        remote.print_lines(out)
        return 1 if (out.get("result") or {}).get("failed") else 0
    if args.reboot and args.cancel:
        raise InvalidInput("--reboot arms and reboots: not with --cancel")
    cfg = load_config(args)
    store = open_store(cfg)
    hosts = hosts_for(store, args.host, args.tag)
    res = actions.reprovision(store, cfg, hosts, ttl, args.max_boots, args.cancel)
    print("\n".join(res.lines), flush=True)
    if not args.reboot:
        return 0
    rb = actions.reboot_for_provision(store, cfg, hosts)
    print("\n".join(rb.lines))
    return 1 if rb.data["failed"] else 0


def cmd_status(args: argparse.Namespace) -> int:
    tag = model.tag(args.tag) if args.tag else None
    stale = (args.stale, parse_duration(args.stale, "--stale")) if args.stale else None
    deploy = ((args.stale_deploy, parse_duration(args.stale_deploy, "--stale-deploy"))
              if args.stale_deploy else None)
    if remote.wanted(args):
        data = remote.get(args, "/api/v1/status", {
            "tag": tag, "stale": args.stale, "stale_deploy": args.stale_deploy,
            "failed": "1" if args.failed else None})
    else:
        store = open_store(load_config(args), readonly=True)
        data = views.status(store, time.time(), tag, stale, deploy, args.failed)
    return print_status(data, tag, stale is not None or deploy is not None or args.failed,
                        args.failed, args.json)


def print_status(data: dict[str, Any], tag: str | None, checked: bool, failed: bool,
                 as_json: bool) -> int:
    listed = data["listed"]
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(data["states"].items())) or "none"
        print(f"{data['hosts']} host(s){f' tagged {tag}' if tag else ''}: {summary}")
        for item in listed:
            label = (f"{item['hostname']} ({item['mac']}, role {item['role']})" if item["hostname"]
                     else f"{item['mac']} (role {item['role']})")
            print(f"{label}: " + "; ".join(item["reasons"]))
        if checked and not listed:
            print("nothing stale" + (" or failed" if failed else ""))
    return 1 if listed else 0


def register(sub: Any) -> None:
    e = sub.add_parser("enroll", help="make a machine (by MAC) boot a role")
    e.add_argument("mac", nargs="?", help="the machine's MAC (aa:bb:cc:dd:ee:ff, aa-bb-..., "
                   "aabb.ccdd.eeff or aabbccddeeff; not multicast, broadcast or zero)")
    e.add_argument("role", nargs="?", help="the role it boots (netbootd role list)")
    e.add_argument("--from", dest="from_file", metavar="FILE",
                   help="enroll many hosts from a CSV (header: mac,role[,hostname,canon,tags]; "
                   "tags separated by spaces or ';') or JSON (a list of such objects) file; "
                   "all or nothing")
    e.add_argument("--hostname", help="one DNS label (not spelled like a MAC address)")
    e.add_argument("--canon", help="canonical (fully qualified) host name")
    e.add_argument("--tag", action="append", help="repeat for several")
    e.add_argument("--no-identity", action="store_true",
                   help="do not generate (and arm) host keys for a new host")
    e.set_defaults(func=cmd_enroll)

    u = sub.add_parser("unenroll", help="forget a machine (by MAC or hostname)")
    u.add_argument("host", help="MAC, hostname or canonical name")
    u.set_defaults(func=cmd_unenroll)

    h = sub.add_parser("hosts", help="list enrolled machines: role, generation, state, last boot, "
                       "last provisioned")
    h.add_argument("--json", action="store_true", help="as JSON (a list of objects)")
    h.add_argument("--tag", help="only the hosts with this tag")
    h.set_defaults(func=cmd_hosts)
    discovery.register_hosts(h)

    rp = sub.add_parser("reprovision", help="wipe and lay out a host's disks on its next boot "
                        "(a one-shot kernel flag, cleared by its provisioned report)")
    rp.add_argument("host", nargs="?", help="MAC, hostname or canonical name")
    rp.add_argument("--tag", help="every host with this tag")
    rp.add_argument("--ttl", help="clear the flag after this long (e.g. 2h; default provision.ttl)")
    rp.add_argument("--max-boots", type=int, help="loop guard: boots with the flag and no "
                    "provisioned report before it is marked failed (default provision.max_boots)")
    rp.add_argument("--cancel", action="store_true", help="clear a pending or failed re-provision")
    rp.add_argument("--reboot", action="store_true", help="then, through each host's BMC: next "
                    "boot PXE (once) and a power cycle (exit 1 if a host was not rebooted)")
    rp.set_defaults(func=cmd_reprovision)

    st = sub.add_parser("status", help="hosts not booted / provisioned recently; exit 1 when any "
                        "is listed (0: none, 2: error)")
    st.add_argument("--stale", metavar="DURATION", help="list hosts not booted within it (7d)")
    st.add_argument("--stale-deploy", metavar="DURATION",
                    help="list hosts not provisioned within it (90d)")
    st.add_argument("--failed", action="store_true",
                    help="list hosts whose re-provision failed (loop guard)")
    st.add_argument("--tag", help="only the hosts with this tag")
    st.add_argument("--json", action="store_true", help="as JSON (counts and listed hosts)")
    st.set_defaults(func=cmd_status)
