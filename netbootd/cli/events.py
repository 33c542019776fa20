"""`netbootd events`: boot, provisioning and audit events."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from netbootd import views
from netbootd.cli import remote
from netbootd.cli.common import find_host, load_config, open_store, parse_since, table
from netbootd.errors import InvalidInput, NotFound
from netbootd.model import MacAddress
from netbootd.store import Store


def _target(store: Store, ident: str) -> MacAddress:
    try:
        return find_host(store, ident).mac
    except NotFound:
        try:
            return MacAddress.parse(ident)  # a host unenrolled since keeps its history
        except InvalidInput:
            raise NotFound(f"no enrolled host {ident!r} (give its MAC, hostname or "
                           "canonical name)") from None


def cmd_events(args: argparse.Namespace) -> int:
    since = parse_since(args.since, time.time()) if args.since else 0.0
    if remote.wanted(args):
        path = f"/api/v1/hosts/{remote.quote(args.host)}/events" if args.host \
            else "/api/v1/events"
        query = {"since": str(since) if since else None, "boot": args.boot}
        if args.follow:
            for ev in remote.stream(args, path, query | {"follow": "1"}):
                print_events([ev], args.json, header=False)
            return 0
        return print_events(remote.get(args, path, query), args.json, since_text=args.since)
    store = open_store(load_config(args), readonly=True)
    mac = _target(store, args.host) if args.host else None
    events = views.events(store, mac, since, args.boot)
    if not args.follow:
        return print_events(events, args.json, since_text=args.since)
    print_events(events, args.json, header=True, quiet_empty=True)
    last = store.last_event_id()
    while True:  # --follow: new events as they are recorded (Ctrl-C ends it)
        time.sleep(1.0)
        names = {h.mac: h.name for h in store.hosts()}
        for eid, new in store.events_after(last):
            last = eid
            if (mac is None or new.mac == mac) and (not args.boot or (new.boot or "").startswith(
                    args.boot.strip().lower())):
                print_events([views.event_json(new, names)], args.json, header=False)
        sys.stdout.flush()


def print_events(events: list[dict[str, Any]], as_json: bool, since_text: str | None = None,
                 header: bool = True, quiet_empty: bool = False) -> int:
    if as_json:
        print(json.dumps(events, indent=2) if header else "\n".join(
            json.dumps(e) for e in events))
        return 0
    if not events:
        if not quiet_empty:
            print("no events" + (f" since {since_text}" if since_text else ""))
        return 0
    rows = [["TIME", "HOST", "EVENT", "FROM", "BOOT", "DETAIL"]] if header else []
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
        rows.append([e["time"][:19] + "Z", e["host"] or e["mac"] or "-", e["event"],
                     e["source_ip"] or "-", e["boot"] or "-", detail])
    print(table(rows))
    sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    ev = sub.add_parser("events", help="boot, provisioning and audit events, with source IP and "
                        "per-boot id")
    ev.add_argument("host", nargs="?", help="one host (MAC, hostname or canonical name)")
    ev.add_argument("--since", help="e.g. 30m, 2h, 1d, 1w, or an ISO date")
    ev.add_argument("--boot", help="only the events of one boot (its id, or a prefix)")
    ev.add_argument("--json", action="store_true", help="as JSON (a list of events; with "
                    "--follow one object per line)")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events as "
                    "they are recorded (Ctrl-C ends it)")
    ev.set_defaults(func=cmd_events)
