"""SQL for one-shot re-provisioning: `provisions` holds at most one arming per host (armed or
failed, deadline, loop guard, boots so far, the SHA-256 of the latest flagged boot's token),
`provision_boots` the boots that carried its flag.

Every change is decided by the pure policy (passed in as `decide`, with the clock bound) inside
the transaction that read its inputs and acts on the answer, so two servers sharing the state
agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from netbootd.errors import InvalidInput, NotFound
from netbootd.model import (
    FlagAction,
    FlagDecision,
    MacAddress,
    Provision,
    ProvisionBoot,
    ProvisionState,
    Release,
)
from netbootd.store.db import Database, Row, fetch_all, fetch_one, insert_event, iso


class ProvisionQueries(Database):
    def provision(self, mac: MacAddress) -> Provision | None:
        rows = self._read(_PROVISION_SELECT + " WHERE mac=?", (str(mac),))
        return _provision(rows[0]) if rows else None

    def provisions(self) -> dict[MacAddress, Provision]:
        return {p.mac: p for p in map(_provision, self._read(_PROVISION_SELECT))}

    def provision_boots(self, mac: MacAddress) -> list[ProvisionBoot]:
        rows = self._read(_PBOOT_SELECT + " WHERE mac=? ORDER BY time", (str(mac),))
        return [_pboot(r) for r in rows]

    def arm_provision(
        self, macs: Sequence[MacAddress], ttl: float, max_boots: int, via: str = "cli"
    ) -> list[Provision]:
        """Arm (or re-arm: the count starts again) a re-provision of every host in `macs`, all
        or none, and record `provision-armed` for each."""
        if ttl <= 0 or max_boots < 1:
            raise InvalidInput("a re-provision needs a positive TTL and at least one boot")
        now = time.time()
        with self._tx() as db:
            for mac in macs:
                if db.execute("SELECT 1 FROM hosts WHERE mac=?", (str(mac),)).fetchone() is None:
                    raise NotFound(f"no enrolled host {mac}")
                was = db.execute("SELECT state, boots FROM provisions WHERE mac=?",
                                 (str(mac),)).fetchone()
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                db.execute(
                    "INSERT OR REPLACE INTO provisions(mac, state, armed, expires, max_boots,"
                    " boots, last_boot, via, changed, reason) VALUES (?,?,?,?,?,0,NULL,?,?,'')",
                    (str(mac), ProvisionState.ARMED.value, now, now + ttl, max_boots, via, now),
                )
                info: dict[str, object] = {"expires": iso(now + ttl), "max_boots": max_boots,
                                           "via": via}
                if was is not None:
                    info["replaces"] = f"{was[0]} after {was[1]} flagged boot(s)"
                insert_event(db, mac, "provision-armed", now, None, info)
        return [p for p in (self.provision(m) for m in macs) if p is not None]

    def cancel_provision(self, macs: Sequence[MacAddress], via: str = "cli") -> list[Provision]:
        """Clear the pending (or failed) re-provision of each host; returns what was cleared."""
        now = time.time()
        gone = []
        with self._tx() as db:
            for mac in macs:
                row = fetch_one(db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)))
                if row is None:
                    continue
                p = _provision(row)
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                insert_event(db, mac, "provision-cancelled", now, None,
                              {"was": p.state.value, "boots": p.boots, "via": via})
                gone.append(p)
        return gone

    def serve_provision(
        self,
        mac: MacAddress,
        digest: str,
        boot: str,
        peer_ip: str | None,
        now: float,
        decide: Callable[[Provision | None], FlagDecision],
    ) -> FlagDecision:
        """Decide whether the boot whose token has `digest` carries the flag, and act on it in
        the same transaction: SERVE counts the boot (and remembers it as the latest flagged
        boot), EXPIRE clears the arming, TRIP marks it failed; each is an event with the boot's
        id. Callers skip this for hosts with nothing armed (lookup.script_inputs read it)."""
        with self._tx() as db:
            row = fetch_one(db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)))
            arming = _provision(row) if row else None
            d = decide(arming)
            if arming is None:
                return d
            if d.action is FlagAction.SERVE:
                db.execute(
                    "UPDATE provisions SET boots=?, last_boot=?, changed=? WHERE mac=?",
                    (d.number, digest, now, str(mac)),
                )
                db.execute(
                    "INSERT INTO provision_boots(digest, mac, armed, number, time, ip)"
                    " VALUES (?,?,?,?,?,?)",
                    (digest, str(mac), arming.armed, d.number, now, peer_ip),
                )
                insert_event(db, mac, "provision-offered", now, peer_ip,
                              {"boot_number": d.number, "max_boots": arming.max_boots}, boot)
            elif d.action is FlagAction.EXPIRE:
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                insert_event(db, mac, "provision-expired", now, peer_ip,
                              {"reason": d.reason, "boots": arming.boots}, boot)
            elif d.action is FlagAction.TRIP:
                db.execute(
                    "UPDATE provisions SET state=?, changed=?, reason=? WHERE mac=?",
                    (ProvisionState.FAILED.value, now, d.reason, str(mac)),
                )
                insert_event(db, mac, "provision-failed", now, peer_ip,
                              {"reason": d.reason, "by": "loop guard"}, boot)
        return d

    def report_provisioned(
        self,
        mac: MacAddress,
        digest: str,
        boot: str,
        peer_ip: str | None,
        now: float,
        decide: Callable[[Provision | None, ProvisionBoot | None], Release],
        detail: dict[str, object] | None = None,
    ) -> Release:
        """A host says it is provisioned, with the per-boot token hashing to `digest` (already
        checked to be netbootd's and this host's). In one transaction: read the arming and the
        flagged boot that token names, ask `decide`; on "yes" clear the flag, set
        last_provisioned and record `provisioned`; on "no" record `denied` with the reason."""
        with self._tx() as db:
            row = fetch_one(db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)))
            arming = _provision(row) if row else None
            b = fetch_one(db.execute(_PBOOT_SELECT + " WHERE digest=? AND mac=?",
                                     (digest, str(mac))))
            pboot = _pboot(b) if b else None
            d = decide(arming, pboot)
            info: dict[str, object] = dict(detail or {})
            if d.ok:
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                db.execute("UPDATE hosts SET last_provisioned=? WHERE mac=?", (now, str(mac)))
                if pboot is not None:
                    info["boot_number"] = pboot.number
                insert_event(db, mac, "provisioned", now, peer_ip, info, boot)
            else:
                insert_event(db, mac, "denied", now, peer_ip,
                              {**info, "event": "provisioned", "reason": d.reason}, boot)
        return d

    def expire_provisions(self, now: float, decide: Callable[[Provision | None], FlagDecision]
                          ) -> list[MacAddress]:
        """Clear every arming `decide` says has expired and record `provision-expired` (the
        server's periodic sweep, so the event appears even if the host never boots again)."""
        cleared: list[MacAddress] = []
        if not self._read("SELECT 1 FROM provisions WHERE state=? AND expires<=?",
                          (ProvisionState.ARMED.value, now)):
            return cleared
        with self._tx() as db:
            for row in fetch_all(db.execute(_PROVISION_SELECT)):
                p = _provision(row)
                d = decide(p)
                if d.action is not FlagAction.EXPIRE:
                    continue
                db.execute("DELETE FROM provisions WHERE mac=?", (str(p.mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(p.mac),))
                insert_event(db, p.mac, "provision-expired", now, None,
                              {"reason": d.reason, "boots": p.boots})
                cleared.append(p.mac)
        return cleared



_PROVISION_SELECT = (
    "SELECT mac, state, armed, expires, max_boots, boots, last_boot, via, changed, reason"
    " FROM provisions"
)
_PBOOT_SELECT = "SELECT digest, mac, armed, number, time, ip FROM provision_boots"


def _provision(r: Row) -> Provision:
    return Provision(r.mac_at(0), ProvisionState(r.str_at(1)), r.float_at(2), r.float_at(3),
                     r.int_at(4), r.int_at(5), r.opt_str_at(6), r.str_at(7), r.float_at(8),
                     r.str_at(9))


def _pboot(r: Row) -> ProvisionBoot:
    return ProvisionBoot(r.str_at(0), r.mac_at(1), r.float_at(2), r.int_at(3), r.float_at(4),
                         r.opt_str_at(5))
