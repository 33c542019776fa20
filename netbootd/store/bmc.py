"""SQL for per-host BMC settings (`bmcs`, migration 9). No password here: the row names the
BMC, the password is a 0600 file beside the identities (power/credentials.py), written
before the row. Setting and removing one is audited (`bmc-set`, `bmc-removed`); the event
names the BMC and the user, never the password."""

from __future__ import annotations

import time

from netbootd.errors import NotFound
from netbootd.model import MacAddress
from netbootd.power.settings import BmcKind, BmcSettings
from netbootd.store.db import Database, Row, insert_event

_SELECT = "SELECT mac, kind, address, port, user, ca_file, insecure, changed FROM bmcs"


class BmcQueries(Database):
    def set_bmc(self, bmc: BmcSettings) -> BmcSettings:
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM hosts WHERE mac=?", (str(bmc.mac),)).fetchone() is None:
                raise NotFound(f"no enrolled host {bmc.mac}")
            db.execute("INSERT INTO bmcs(mac, kind, address, port, user, ca_file, insecure,"
                       " changed) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(mac) DO UPDATE SET"
                       " kind=excluded.kind, address=excluded.address, port=excluded.port,"
                       " user=excluded.user, ca_file=excluded.ca_file,"
                       " insecure=excluded.insecure, changed=excluded.changed",
                       (str(bmc.mac), str(bmc.kind), bmc.address, bmc.port, bmc.user,
                        bmc.ca_file, int(bmc.insecure), now))
            insert_event(db, bmc.mac, "bmc-set", now, None,
                         {"bmc": bmc.target, "user": bmc.user, "password": "set"})
        got = self.bmc(bmc.mac)
        assert got is not None
        return got

    def bmc(self, mac: MacAddress) -> BmcSettings | None:
        rows = self._read(_SELECT + " WHERE mac=?", (str(mac),))
        return _bmc(rows[0]) if rows else None

    def bmcs(self) -> dict[MacAddress, BmcSettings]:
        return {b.mac: b for b in (_bmc(r) for r in self._read(_SELECT + " ORDER BY mac"))}

    def remove_bmc(self, mac: MacAddress) -> BmcSettings:
        now = time.time()
        with self._tx() as db:
            rows = [Row(r) for r in db.execute(_SELECT + " WHERE mac=?", (str(mac),))]
            if not rows:
                raise NotFound(f"{mac} has no BMC settings")
            db.execute("DELETE FROM bmcs WHERE mac=?", (str(mac),))
            old = _bmc(rows[0])
            insert_event(db, mac, "bmc-removed", now, None, {"bmc": old.target})
        return old


def _bmc(r: Row) -> BmcSettings:
    return BmcSettings(r.mac_at(0), BmcKind(r.str_at(1)), r.str_at(2), r.opt_int_at(3),
                       r.str_at(4), r.opt_str_at(5), bool(r.int_at(6)), r.float_at(7))
