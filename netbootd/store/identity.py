"""SQL for host identities: the public halves of every generation (`identities`), which one
is current and whether it is armed (`identity_state`), and per-boot identity tokens by their
SHA-256 (`identity_tokens`). The private halves live only in files (identity/vault.py).

A delivery is one decision made inside the transaction that acts on it (`redeem_token`): two
servers sharing the state cannot both deliver one token.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import (
    BulkHost,
    Host,
    IdentityPublic,
    IdentityState,
    IdentityToken,
    MacAddress,
    Release,
)
from netbootd.store.db import Database, Row, fetch_one, insert_event, iso
from netbootd.store.hosts import HOST_SELECT, TOKEN_KEEP, host_row, upsert_host


class IdentityQueries(Database):
    def add_identity(
        self, pub: IdentityPublic, *, arm: bool, event: str, via: str = "cli"
    ) -> IdentityPublic:
        """Record a new generation (numbered here: last + 1), make it current and (dis)arm it.
        The key files must already be in place (identity.vault.Vault.write)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM hosts WHERE mac=?", (str(pub.mac),)).fetchone() is None:
                raise NotFound(f"no enrolled host {pub.mac}")
            return _insert_identity(db, pub, arm, event, via)

    def enroll_with_identity(
        self, mac: MacAddress, role: str, hostname: str | None, canon: str | None,
        tags: Sequence[str], pub: IdentityPublic, via: str = "cli",
    ) -> tuple[Host, bool, IdentityPublic]:
        """`enroll` and the host's first identity (armed) in ONE transaction: a killed enroll
        leaves neither, or both -- never an enrolled host without its identity. The key files
        must already be in place. Returns (host, created, identity)."""
        with self._tx() as db:
            existed = upsert_host(db, mac, role, hostname, canon, tags, time.time())
            if fetch_one(db.execute(_STATE_SELECT + " WHERE mac=?", (str(mac),))) is not None:
                raise InvalidInput(f"{mac} already has an identity")
            made = _insert_identity(db, pub, True, "keys-generated", via)
            h = fetch_one(db.execute(HOST_SELECT + " WHERE h.mac=?", (str(mac),)))
        assert h is not None
        return host_row(h), not existed, made

    def enroll_many(self, items: Sequence[BulkHost], via: str = "cli") -> list[tuple[Host, bool]]:
        """Bulk enrollment in ONE transaction: every host (created or updated) and every new
        identity (armed), or nothing. Key files must already be in place. Returns
        (host, created) in the order given."""
        now = time.time()
        out: list[tuple[Host, bool]] = []
        with self._tx() as db:
            for it in items:
                existed = upsert_host(db, it.mac, it.role, it.hostname, it.canon, it.tags, now)
                if it.identity is not None:
                    if fetch_one(db.execute(_STATE_SELECT + " WHERE mac=?",
                                            (str(it.mac),))) is not None:
                        raise InvalidInput(f"{it.mac} already has an identity")
                    _insert_identity(db, it.identity, True, "keys-generated", via)
                elif not existed and it.rearm:
                    db.execute("UPDATE identity_state SET armed=1, changed=? WHERE mac=?",
                               (now, str(it.mac)))
                h = fetch_one(db.execute(HOST_SELECT + " WHERE h.mac=?", (str(it.mac),)))
                assert h is not None
                out.append((host_row(h), not existed))
        return out

    def set_identity_rsa(self, mac: MacAddress, generation: int, ssh_rsa: str) -> bool:
        """Record a generation's RSA host key where it is still pending (vault.complete_rsa
        wrote its files first). Returns whether this call recorded it."""
        with self._tx() as db:
            cur = db.execute("UPDATE identities SET ssh_rsa=? WHERE mac=? AND generation=? AND"
                             " ssh_rsa=''", (ssh_rsa, str(mac), generation))
            return cur.rowcount > 0

    def pending_rsa(self, limit: int = 100) -> list[IdentityPublic]:
        """Current identity generations whose RSA key is not made yet (bulk enrollment)."""
        rows = self._read(
            _IDENTITY_SELECT + " JOIN identity_state s ON s.mac=i.mac AND"
            " s.generation=i.generation WHERE i.ssh_rsa='' ORDER BY i.created LIMIT ?", (limit,))
        return [_identity(r) for r in rows]

    def identity(self, mac: MacAddress, generation: int | None = None) -> IdentityPublic | None:
        """The given generation of the host's identity, or its current one."""
        if generation is None:
            rows = self._read(
                _IDENTITY_SELECT + " JOIN identity_state s ON s.mac=i.mac AND"
                " s.generation=i.generation WHERE i.mac=?",
                (str(mac),),
            )
        else:
            rows = self._read(
                _IDENTITY_SELECT + " WHERE i.mac=? AND i.generation=?", (str(mac), generation)
            )
        return _identity(rows[0]) if rows else None

    def identities(self, mac: MacAddress | None = None) -> list[IdentityPublic]:
        """Every generation of one host (oldest first), or the current one of every host."""
        if mac is None:
            rows = self._read(
                _IDENTITY_SELECT + " JOIN identity_state s ON s.mac=i.mac AND"
                " s.generation=i.generation ORDER BY i.mac"
            )
        else:
            rows = self._read(
                _IDENTITY_SELECT + " WHERE i.mac=? ORDER BY i.generation", (str(mac),)
            )
        return [_identity(r) for r in rows]

    def identity_hostids(self, exclude: MacAddress | None = None) -> set[str]:
        rows = self._read(
            "SELECT substr(i.machine_id, 1, 8) FROM identities i JOIN identity_state s"
            " ON s.mac=i.mac AND s.generation=i.generation WHERE i.mac<>?",
            (str(exclude) if exclude else "",),
        )
        return {r.str_at(0) for r in rows}

    def identity_state(self, mac: MacAddress) -> IdentityState | None:
        rows = self._read(_STATE_SELECT + " WHERE mac=?", (str(mac),))
        return _state(rows[0]) if rows else None

    def arm_identity(
        self, mac: MacAddress, *, armed: bool, every_boot: bool = False, via: str = "cli"
    ) -> IdentityState:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE identity_state SET armed=?, every_boot=?, changed=? WHERE mac=?",
                (int(armed), int(armed and every_boot), now, str(mac)),
            )
            if cur.rowcount == 0:
                raise NotFound(f"{mac} has no identity yet")
            insert_event(db, mac, "identity-armed" if armed else "identity-disarmed", now, None,
                          {"every_boot": armed and every_boot, "via": via})
        state = self.identity_state(mac)
        assert state is not None
        return state

    def issue_token(self, token: IdentityToken) -> None:
        """Store a freshly minted token (by digest), audit it, and purge long-expired ones."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO identity_tokens(digest, mac, ip, created, expires, boot)"
                " VALUES (?,?,?,?,?,?)",
                (token.digest, str(token.mac), token.ip, token.created, token.expires, token.boot),
            )
            db.execute("DELETE FROM identity_tokens WHERE expires<?", (token.created - TOKEN_KEEP,))
            insert_event(db, token.mac, "identity-issued", token.created, token.ip,
                          {"token": token.digest[:12], "expires": iso(token.expires)}, token.boot)

    def token(self, digest: str) -> IdentityToken | None:
        rows = self._read(_TOKEN_SELECT + " WHERE digest=?", (digest,))
        return _token(rows[0]) if rows else None

    def redeem_token(
        self,
        digest: str | None,
        claimed: MacAddress | None,
        peer_ip: str,
        now: float,
        decide: Callable[[IdentityToken | None, Host | None, IdentityState | None], Release],
        detail: dict[str, object] | None = None,
    ) -> tuple[Release, IdentityState | None]:
        """Atomically decide on and (if allowed) consume a token, and audit the outcome.

        In ONE write transaction: read the token, its host and the host's identity state; ask
        `decide` (the pure policy, with the clock and the ARP result already bound); on "yes"
        mark the token used, disarm unless every-boot, and record `identity-delivered`; on "no"
        record `identity-denied`. Concurrent redemptions of one token -- in this process or in
        another server sharing the database -- are serialised by the transaction, so exactly
        one sees the token unused.
        """
        with self._tx() as db:
            row = None
            if digest is not None:
                r = fetch_one(db.execute(_TOKEN_SELECT + " WHERE digest=?", (digest,)))
                row = _token(r) if r else None
            mac = row.mac if row is not None else claimed
            host = state = None
            if mac is not None:
                h = fetch_one(db.execute(HOST_SELECT + " WHERE h.mac=?", (str(mac),)))
                host = host_row(h) if h else None
                st = fetch_one(db.execute(_STATE_SELECT + " WHERE mac=?", (str(mac),)))
                state = _state(st) if st else None
            decision = decide(row, host, state)
            info: dict[str, object] = dict(detail or {})
            if digest is not None:
                info["token"] = digest[:12]
            if decision.ok and row is not None and state is not None:
                cur = db.execute(
                    "UPDATE identity_tokens SET used=?, used_ip=? WHERE digest=? AND used IS NULL",
                    (now, peer_ip, row.digest),
                )
                if cur.rowcount != 1:  # pragma: no cover - the transaction makes this impossible
                    raise StoreError("identity token consumed twice")
                if not state.every_boot:
                    db.execute(
                        "UPDATE identity_state SET armed=0, changed=? WHERE mac=?", (now, str(mac))
                    )
                info.update(generation=state.generation, every_boot=state.every_boot)
                insert_event(db, mac, "identity-delivered", now, peer_ip, info, row.boot)
            else:
                info["reason"] = decision.reason
                # An unknown or tampered token is held against the host it names only if that
                # host exists, so nobody can fill the log of MACs that are not enrolled.
                insert_event(db, mac if host is not None else None, "identity-denied", now,
                              peer_ip, info, row.boot if row is not None else None)
        return decision, state



_IDENTITY_SELECT = (
    "SELECT i.mac, i.generation, i.created, i.machine_id, i.ssh_ed25519, i.ssh_rsa, i.wg_public,"
    " i.directory FROM identities i"
)
_STATE_SELECT = "SELECT mac, generation, armed, every_boot, changed FROM identity_state"
_TOKEN_SELECT = "SELECT digest, mac, ip, created, expires, used, used_ip, boot FROM identity_tokens"


def _identity(r: Row) -> IdentityPublic:
    return IdentityPublic(r.mac_at(0), r.int_at(1), r.float_at(2), r.str_at(3), r.str_at(4),
                          r.str_at(5), r.str_at(6), r.str_at(7))


def _state(r: Row) -> IdentityState:
    return IdentityState(r.mac_at(0), r.int_at(1), r.bool_at(2), r.bool_at(3), r.float_at(4))


def _token(r: Row) -> IdentityToken:
    return IdentityToken(r.str_at(0), r.mac_at(1), r.str_at(2), r.float_at(3), r.float_at(4),
                         r.opt_float_at(5), r.opt_str_at(6), r.opt_str_at(7))


def _insert_identity(db: sqlite3.Connection, pub: IdentityPublic, arm: bool, event: str,
                     via: str) -> IdentityPublic:
    mac = str(pub.mac)
    (last,) = db.execute(
        "SELECT COALESCE(MAX(generation), 0) FROM identities WHERE mac=?", (mac,)
    ).fetchone()
    generation = int(last) + 1
    db.execute(
        "INSERT INTO identities(mac, generation, created, machine_id, ssh_ed25519,"
        " ssh_rsa, wg_public, directory) VALUES (?,?,?,?,?,?,?,?)",
        (mac, generation, pub.created, pub.machine_id, pub.ssh_ed25519, pub.ssh_rsa,
         pub.wg_public, pub.directory),
    )
    db.execute(
        "INSERT INTO identity_state(mac, generation, armed, every_boot, changed)"
        " VALUES (?,?,?,0,?) ON CONFLICT(mac) DO UPDATE SET generation=excluded.generation,"
        " armed=excluded.armed, changed=excluded.changed",
        (mac, generation, int(arm), pub.created),
    )
    insert_event(db, pub.mac, event, pub.created, None,
                 {"generation": generation, "armed": arm, "via": via})
    return dataclasses.replace(pub, generation=generation)
