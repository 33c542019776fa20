"""Hosts: `enroll`, `unenroll`, `hosts`, `reprovision`, `status`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from netbootd import model, policy
from netbootd.cli.common import (
    ago,
    find_host,
    hosts_for,
    identity_summary,
    load_config,
    open_store,
    parse_duration,
    table,
    when,
)
from netbootd.errors import InvalidInput
from netbootd.identity import vault
from netbootd.identity.vault import Vault
from netbootd.model import Host, HostState, MacAddress, Provision
from netbootd.store import Store


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        if args.mac or args.role or args.hostname or args.canon or args.tag:
            raise InvalidInput("--from FILE takes no MAC, role or host options (they are in "
                               "the file)")
        from netbootd.cli import bulk

        return bulk.enroll_from(args, Path(args.from_file))
    if args.mac is None or args.role is None:
        raise InvalidInput("give a MAC and a role, or --from FILE")
    # Validate everything before the store is touched: a bad argument writes nothing.
    mac = MacAddress.parse_host(args.mac)
    role = model.role_name(args.role)
    hostname = model.hostname(args.hostname) if args.hostname is not None else None
    canon = model.canon_name(args.canon) if args.canon is not None else None
    tags = sorted({model.tag(t) for t in args.tag or []})
    cfg = load_config(args)
    store = open_store(cfg)
    host, created, made, rearmed = vault.enroll(store, Vault(cfg.state_dir), mac, role, hostname,
                                                canon, tags, identity=not args.no_identity)
    verb = "enrolled" if created else "updated"
    print(f"{verb} {host.label} -> role {host.role}")
    if made is not None:
        repaired = "" if created else " (it had none: made now)"
        print(f"identity generation {made.generation}{repaired}: {identity_summary(made)}")
        print("armed: delivered once, over HTTPS, on its next boot")
    elif rearmed:
        pub = store.identity(host.mac)
        assert pub is not None
        print(f"identity generation {pub.generation} (kept from before): {identity_summary(pub)}")
        print("armed: delivered once, over HTTPS, on its next boot")
    return 0


def cmd_unenroll(args: argparse.Namespace) -> int:
    store = open_store(load_config(args))
    host = find_host(store, args.host)
    store.unenroll(host.mac)
    print(f"unenrolled {host.label}")
    if store.identity(host.mac) is not None:
        print("its identity is kept (disarmed); enrolling the MAC again re-arms it, "
              "`netbootd keys rotate` replaces it")
    return 0


def _host_json(store: Store, h: Host, arming: Provision | None = None,
               now: float | None = None) -> dict[str, Any]:
    role = store.role(h.role)
    pinned = policy.boot_generation(h)
    now = time.time() if now is None else now
    return {
        "mac": str(h.mac),
        "hostname": h.hostname,
        "canon": h.canon,
        "role": h.role,
        "generation": pinned if pinned is not None else role.current_generation if role else None,
        "pinned": pinned is not None,
        "tags": list(h.tags),
        "enrolled": when(h.created),
        "last_boot": when(h.last_boot),
        "last_boot_ip": h.last_boot_ip,
        "last_provisioned": when(h.last_provisioned),
        "state": str(policy.host_state(arming, now)),
        "provision": _provision_json(arming),
    }


def _provision_json(p: Provision | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"state": str(p.state), "armed": when(p.armed), "expires": when(p.expires),
            "boots": p.boots, "max_boots": p.max_boots, "reason": p.reason or None, "via": p.via}


def _state_text(h: dict[str, Any]) -> str:
    p = h["provision"]
    if h["state"] in ("provisioning", "armed") and p:
        return f"{h['state']} ({p['boots']}/{p['max_boots']})"
    return str(h["state"])


def cmd_hosts(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    tag = model.tag(args.tag) if args.tag else None
    armings, now = store.provisions(), time.time()
    hosts = [_host_json(store, h, armings.get(h.mac), now) for h in store.hosts(tag)]
    if args.json:
        print(json.dumps(hosts, indent=2))
        return 0
    if not hosts:
        print("no hosts enrolled: netbootd enroll <mac> <role>")
        return 0
    rows = [["MAC", "HOSTNAME", "ROLE", "GEN", "STATE", "TAGS", "LAST BOOT", "LAST PROVISIONED"]]
    for h, raw in zip(hosts, store.hosts(tag), strict=True):
        rows.append(
            [
                h["mac"],
                h["hostname"] or "-",
                h["role"],
                str(h["generation"] or "-"),
                _state_text(h),
                ",".join(h["tags"]) or "-",
                ago(raw.last_boot, now) + (f" from {raw.last_boot_ip}" if raw.last_boot_ip else ""),
                ago(raw.last_provisioned, now),
            ]
        )
    print(table(rows))
    failed = [h for h in hosts if h["state"] == "failed"]
    for h in failed:
        print(f"{h['hostname'] or h['mac']}: re-provision FAILED: {h['provision']['reason']}; "
              "`netbootd reprovision` arms it again, `--cancel` clears it", file=sys.stderr)
    return 0


def cmd_reprovision(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg)
    if args.cancel and (args.ttl or args.max_boots is not None):
        raise InvalidInput("--cancel takes no --ttl or --max-boots")
    ttl = parse_duration(args.ttl, "--ttl") if args.ttl else float(cfg.provision.ttl)
    max_boots = cfg.provision.max_boots if args.max_boots is None else args.max_boots
    if max_boots < 1:
        raise InvalidInput("--max-boots: at least 1")
    hosts = hosts_for(store, args.host, args.tag)
    names = {h.mac: h.name for h in hosts}
    if args.cancel:
        gone = {p.mac: p for p in store.cancel_provision([h.mac for h in hosts])}
        for h in hosts:
            p = gone.get(h.mac)
            print(f"{h.name}: re-provision cancelled (was {p.state}, {p.boots} flagged boot(s))"
                  if p else f"{h.name}: no re-provision pending")
        return 0
    roles = {r.name: r for r in store.roles()}
    for p in store.arm_provision([h.mac for h in hosts], ttl, max_boots):
        host = next(h for h in hosts if h.mac == p.mac)
        r = roles.get(host.role)
        word = policy.flag_word(r.provision_flag if r else None, cfg.provision.flag)
        print(f"{names[p.mac]}: re-provision armed: `{word}` on its boots until it reports "
              f"provisioned; at most {p.max_boots} boot(s), until {when(p.expires)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(cfg, readonly=True)
    now = time.time()
    stale_boot = parse_duration(args.stale, "--stale") if args.stale else None
    stale_deploy = (parse_duration(args.stale_deploy, "--stale-deploy") if args.stale_deploy
                    else None)
    tag = model.tag(args.tag) if args.tag else None
    armings = store.provisions()
    hosts = store.hosts(tag)
    listed: list[dict[str, Any]] = []
    states: dict[str, int] = {}
    for h in hosts:
        arming = armings.get(h.mac)
        state = policy.host_state(arming, now)
        states[str(state)] = states.get(str(state), 0) + 1
        why = []
        if stale_boot is not None and policy.stale(h.last_boot, h.created, now, stale_boot):
            why.append(f"not booted within {args.stale} (last boot {ago(h.last_boot, now)})")
        if stale_deploy is not None and policy.stale(h.last_provisioned, h.created, now,
                                                     stale_deploy):
            why.append(f"not provisioned within {args.stale_deploy} "
                       f"(last provisioned {ago(h.last_provisioned, now)})")
        if args.failed and state is HostState.FAILED:
            why.append(f"re-provision failed: {arming.reason if arming else '?'}")
        if why:
            listed.append({"mac": str(h.mac), "hostname": h.hostname, "role": h.role,
                           "state": str(state), "last_boot": when(h.last_boot),
                           "last_provisioned": when(h.last_provisioned), "reasons": why})
    if args.json:
        print(json.dumps({"hosts": len(hosts), "states": states, "listed": listed}, indent=2))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        print(f"{len(hosts)} host(s){f' tagged {tag}' if tag else ''}: {summary}")
        for item in listed:
            label = f"{item['hostname']} ({item['mac']})" if item["hostname"] else item["mac"]
            print(f"{label}, role {item['role']}: "
                  + "; ".join(item["reasons"]))
        checked = stale_boot is not None or stale_deploy is not None or args.failed
        if checked and not listed:
            print("nothing stale" + (" or failed" if args.failed else ""))
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

    rp = sub.add_parser("reprovision", help="wipe and lay out a host's disks on its next boot "
                        "(a one-shot kernel flag, cleared by its provisioned report)")
    rp.add_argument("host", nargs="?", help="MAC, hostname or canonical name")
    rp.add_argument("--tag", help="every host with this tag")
    rp.add_argument("--ttl", help="clear the flag after this long (e.g. 2h; default provision.ttl)")
    rp.add_argument("--max-boots", type=int, help="loop guard: boots with the flag and no "
                    "provisioned report before it is marked failed (default provision.max_boots)")
    rp.add_argument("--cancel", action="store_true", help="clear a pending or failed re-provision")
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
