"""What the discovery listings show, JSON-ready (the CLI prints them, the admin API answers
with them): discovered machines, a host's inventory and history, discovery rules, and a host's
NixOS hardware fragment. Reads only; the clock is passed in."""

from __future__ import annotations

from typing import Any

from netbootd import views
from netbootd.inventory import nixhw, schema
from netbootd.inventory.records import Discovered, DiscoveryRule, InventoryRecord
from netbootd.model import Host
from netbootd.store import Store


def discovered_json(d: Discovered) -> dict[str, Any]:
    inv = schema.load(d.inventory)
    return {"mac": str(d.mac), "first_seen": views.when(d.first_seen),
            "last_seen": views.when(d.last_seen), "source_ip": d.source_ip, "boot": d.boot,
            "reports": d.reports, **schema.summary(inv)}


def discovered(store: Store) -> list[dict[str, Any]]:
    return [discovered_json(d) for d in store.discovered()]


def inventory_json(rec: InventoryRecord, whole: bool = True) -> dict[str, Any]:
    inv = schema.load(rec.inventory)
    out: dict[str, Any] = {"reported": views.when(rec.reported),
                           "last_reported": views.when(rec.last_reported), "boot": rec.boot,
                           "source_ip": rec.source_ip, "digest": rec.digest[:12],
                           "changes": list(rec.changes), "summary": schema.summary(inv)}
    if whole:
        out["inventory"] = inv.document()
    return out


def host_inventory(store: Store, host: Host) -> dict[str, Any] | None:
    rec = store.inventory(host.mac)
    return inventory_json(rec) if rec is not None else None


def host_show(store: Store, host: Host, now: float) -> dict[str, Any]:
    """`hosts show`: the host as `hosts` lists it, its latest inventory, its inventory history
    (what changed, newest first) and its last events."""
    history = store.inventory_history(host.mac)
    return {
        "host": views.host_json(store, host, store.provision(host.mac), now),
        "inventory": inventory_json(history[0]) if history else None,
        "history": [inventory_json(r, whole=False) for r in history],
        "events": [views.event_json(e, {host.mac: host.name})
                   for e in store.events(host.mac)[-20:]],
    }


def template_inventory(store: Store, host: Host) -> dict[str, Any] | None:
    """`host.inventory` of the iPXE template context: the latest document, or None."""
    rec = store.inventory(host.mac)
    return schema.load(rec.inventory).document() if rec is not None else None


def hardware_nix(store: Store, host: Host) -> str | None:
    rec = store.inventory(host.mac)
    if rec is None:
        return None
    ident = store.identity(host.mac)
    return nixhw.fragment(schema.load(rec.inventory), host.hostname,
                          ident.hostid if ident is not None else None)


def rule_json(r: DiscoveryRule) -> dict[str, Any]:
    return {"name": r.name, "match": r.match, "role": r.role, "hostname": r.hostname,
            "created": views.when(r.created), "enrolled": r.enrolled}


def rules(store: Store) -> list[dict[str, Any]]:
    return [rule_json(r) for r in store.rules()]
