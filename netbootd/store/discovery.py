"""SQL for discovery and hardware inventory (migration 8): discovered machines, each host's
inventory history, discovery rules.

Bounded on purpose: a discovery report needs a valid per-boot token, but anyone on the LAN can
get one for a made-up MAC, so `record_discovery` first forgets discoveries not seen for
`max_age` seconds and then refuses a new MAC once `cap` are stored (the known ones are still
updated: a flood cannot push a real machine out). A host keeps its newest `keep` distinct
inventories; the same document again only moves `last_reported`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from typing import Literal

from netbootd.errors import InvalidInput, NotFound
from netbootd.inventory.records import Discovered, DiscoveryRule, InventoryRecord
from netbootd.model import MacAddress
from netbootd.store.db import Database, Row, fetch_one, insert_event

DiscoveryOutcome = Literal["new", "updated", "full"]
_DISCOVERED = ("SELECT mac, first_seen, last_seen, source_ip, boot, reports, inventory"
               " FROM discovered")
_INVENTORY = ("SELECT id, mac, reported, last_reported, boot, source_ip, digest, inventory,"
              " changes FROM inventories")
_RULE = "SELECT id, name, match, role, hostname, created, enrolled FROM discovery_rules"


class DiscoveryQueries(Database):
    # -- discovered machines ----------------------------------------------------------------

    def record_discovery(self, mac: MacAddress, ip: str | None, boot: str | None,
                         inventory: str, now: float, cap: int, max_age: float
                         ) -> DiscoveryOutcome:
        with self._tx() as db:
            db.execute("DELETE FROM discovered WHERE last_seen<?", (now - max_age,))
            cur = db.execute("UPDATE discovered SET last_seen=?, source_ip=?, boot=?,"
                             " reports=reports+1, inventory=? WHERE mac=?",
                             (now, ip, boot, inventory, str(mac)))
            if cur.rowcount:
                return "updated"
            (count,) = db.execute("SELECT COUNT(*) FROM discovered").fetchone()
            if count >= cap:
                return "full"
            db.execute("INSERT INTO discovered(mac, first_seen, last_seen, source_ip, boot,"
                       " inventory) VALUES (?,?,?,?,?,?)",
                       (str(mac), now, now, ip, boot, inventory))
            insert_event(db, mac, "discovered", now, ip, {}, boot)
        return "new"

    def discovered(self) -> list[Discovered]:
        return [_discovered(r) for r in self._read(_DISCOVERED + " ORDER BY first_seen, mac")]

    def discovered_one(self, mac: MacAddress) -> Discovered | None:
        rows = self._read(_DISCOVERED + " WHERE mac=?", (str(mac),))
        return _discovered(rows[0]) if rows else None

    def expire_discovered(self, now: float, max_age: float) -> int:
        """Forget discovered machines not seen for `max_age` seconds (the housekeeping runs
        it every minute: a read first, so an idle server takes no write lock)."""
        cutoff = now - max_age
        if not self._read("SELECT 1 FROM discovered WHERE last_seen<? LIMIT 1", (cutoff,)):
            return 0
        with self._tx() as db:
            return db.execute("DELETE FROM discovered WHERE last_seen<?", (cutoff,)).rowcount

    def adopt_discovery(self, mac: MacAddress, now: float, changes: list[str]) -> bool:
        """An enrolled MAC's discovery becomes its first inventory (its row leaves
        `discovered`). False: there was none."""
        with self._tx() as db:
            r = fetch_one(db.execute(_DISCOVERED + " WHERE mac=?", (str(mac),)))
            if r is None:
                return False
            d = _discovered(r)
            _insert_inventory(db, mac, now, d.boot, d.source_ip, _digest(d.inventory),
                              d.inventory, changes)
            db.execute("DELETE FROM discovered WHERE mac=?", (str(mac),))
        return True

    # -- host inventories -------------------------------------------------------------------

    def record_inventory(self, mac: MacAddress, inventory: str, digest: str, changes: list[str],
                         boot: str | None, ip: str | None, now: float, keep: int = 20) -> bool:
        """Store a host's report: a new row when it differs from the newest (True), else the
        newest row's `last_reported` moves (False)."""
        with self._tx() as db:
            r = fetch_one(db.execute("SELECT id, digest FROM inventories WHERE mac=?"
                                     " ORDER BY id DESC LIMIT 1", (str(mac),)))
            if r is not None and r.str_at(1) == digest:
                db.execute("UPDATE inventories SET last_reported=?, boot=?, source_ip=?"
                           " WHERE id=?", (now, boot, ip, r.int_at(0)))
                return False
            _insert_inventory(db, mac, now, boot, ip, digest, inventory, changes)
            if r is not None:
                insert_event(db, mac, "inventory-changed", now, ip,
                             {"changes": changes[:8], "more": max(0, len(changes) - 8)}, boot)
            db.execute("DELETE FROM inventories WHERE mac=? AND id NOT IN (SELECT id FROM"
                       " inventories WHERE mac=? ORDER BY id DESC LIMIT ?)",
                       (str(mac), str(mac), keep))
        return True

    def inventory(self, mac: MacAddress) -> InventoryRecord | None:
        rows = self._read(_INVENTORY + " WHERE mac=? ORDER BY id DESC LIMIT 1", (str(mac),))
        return _inventory(rows[0]) if rows else None

    def inventory_history(self, mac: MacAddress) -> list[InventoryRecord]:
        return [_inventory(r) for r in
                self._read(_INVENTORY + " WHERE mac=? ORDER BY id DESC", (str(mac),))]

    # -- discovery rules --------------------------------------------------------------------

    def add_rule(self, name: str, match: dict[str, str | int], role: str,
                 hostname: str | None, now: float) -> DiscoveryRule:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM discovery_rules WHERE name=?", (name,)).fetchone():
                raise InvalidInput(f"a discovery rule named {name!r} exists (remove it first)")
            if not db.execute("SELECT 1 FROM roles WHERE name=?", (role,)).fetchone():
                raise NotFound(f"unknown role {role!r}")
            cur = db.execute("INSERT INTO discovery_rules(name, match, role, hostname, created)"
                             " VALUES (?,?,?,?,?)",
                             (name, json.dumps(match, sort_keys=True), role, hostname, now))
            insert_event(db, None, "discovery-rule-added", now, None,
                         {"name": name, "role": role})
            r = fetch_one(db.execute(_RULE + " WHERE id=?", (cur.lastrowid,)))
        assert r is not None
        return _rule(r)

    def rules(self) -> list[DiscoveryRule]:
        return [_rule(r) for r in self._read(_RULE + " ORDER BY id")]

    def remove_rule(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM discovery_rules WHERE name=?", (name,)).rowcount != 1:
                raise NotFound(f"no discovery rule named {name!r}")
            insert_event(db, None, "discovery-rule-removed", _now(), None, {"name": name})

    def rule_used(self, rule_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE discovery_rules SET enrolled=enrolled+1 WHERE id=?", (rule_id,))


def _now() -> float:
    return time.time()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _insert_inventory(db: sqlite3.Connection, mac: MacAddress, now: float, boot: str | None,
                      ip: str | None, digest: str, inventory: str, changes: list[str]) -> None:
    db.execute("INSERT INTO inventories(mac, reported, last_reported, boot, source_ip, digest,"
               " inventory, changes) VALUES (?,?,?,?,?,?,?,?)",
               (str(mac), now, now, boot, ip, digest, inventory, json.dumps(changes)))


def _discovered(r: Row) -> Discovered:
    return Discovered(r.mac_at(0), r.float_at(1), r.float_at(2), r.opt_str_at(3),
                      r.opt_str_at(4), r.int_at(5), r.str_at(6))


def _inventory(r: Row) -> InventoryRecord:
    return InventoryRecord(r.int_at(0), r.mac_at(1), r.float_at(2), r.float_at(3),
                           r.opt_str_at(4), r.opt_str_at(5), r.str_at(6), r.str_at(7),
                           tuple(json.loads(r.str_at(8))))


def _rule(r: Row) -> DiscoveryRule:
    return DiscoveryRule(r.int_at(0), r.str_at(1), json.loads(r.str_at(2)), r.str_at(3),
                         r.opt_str_at(4), r.float_at(5), r.int_at(6))
