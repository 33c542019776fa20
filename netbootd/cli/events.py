"""`netbootd events`: boot, provisioning and audit events."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from netbootd.cli.common import find_host, load_config, open_store, parse_since, table
from netbootd.errors import InvalidInput, NotFound
from netbootd.model import Event, MacAddress


def _event_json(ev: Event, names: dict[MacAddress, str]) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(ev.time, UTC).isoformat(timespec="milliseconds"),
        "mac": str(ev.mac) if ev.mac else None,
        "host": names.get(ev.mac) if ev.mac else None,
        "event": ev.event,
        "source_ip": ev.source_ip,
        "boot": ev.boot,
        "detail": ev.detail,
    }


def cmd_events(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    since = parse_since(args.since, time.time()) if args.since else 0.0
    mac = None
    if args.host:
        try:
            mac = find_host(store, args.host).mac
        except NotFound:
            try:
                mac = MacAddress.parse(args.host)  # a host unenrolled since keeps its history
            except InvalidInput:
                raise NotFound(f"no enrolled host {args.host!r} (give its MAC, hostname or "
                               "canonical name)") from None
    names = {h.mac: h.name for h in store.hosts()}
    events = [_event_json(e, names) for e in store.events(mac, since)
              if not args.boot or (e.boot or "").startswith(args.boot.strip().lower())]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print("no events" + (f" since {args.since}" if args.since else ""))
        return 0
    rows = [["TIME", "HOST", "EVENT", "FROM", "BOOT", "DETAIL"]]
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
        rows.append([e["time"][:19] + "Z", e["host"] or e["mac"] or "-", e["event"],
                     e["source_ip"] or "-", e["boot"] or "-", detail])
    print(table(rows))
    return 0


def register(sub: Any) -> None:
    ev = sub.add_parser("events", help="boot, provisioning and audit events, with source IP and "
                        "per-boot id")
    ev.add_argument("host", nargs="?", help="one host (MAC, hostname or canonical name)")
    ev.add_argument("--since", help="e.g. 30m, 2h, 1d, 1w, or an ISO date")
    ev.add_argument("--boot", help="only the events of one boot (its id, or a prefix)")
    ev.add_argument("--json", action="store_true", help="as JSON (a list of events)")
    ev.set_defaults(func=cmd_events)
