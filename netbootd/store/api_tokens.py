"""SQL for the admin API's bearer tokens (`api_tokens`, migration 7) and the event feed the API
streams. A token is stored as its SHA-256 only (a token is 256 random bits: a fast digest is a
safe one); creating and revoking one is audited (`api-token-created`, `api-token-revoked`)."""

from __future__ import annotations

import json
import time

from netbootd.errors import InvalidInput, NotFound
from netbootd.model import ApiToken, Event, TokenScope
from netbootd.store.db import Database, Row, fetch_one, insert_event

_SELECT = "SELECT id, name, scope, created, last_used, revoked FROM api_tokens"


class ApiTokenQueries(Database):
    def add_api_token(self, name: str, digest: str, scope: TokenScope) -> ApiToken:
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM api_tokens WHERE name=?", (name,)).fetchone():
                raise InvalidInput(f"an API token named {name!r} exists (revoke it first)")
            cur = db.execute("INSERT INTO api_tokens(name, digest, scope, created)"
                             " VALUES (?,?,?,?)", (name, digest, str(scope), now))
            insert_event(db, None, "api-token-created", now, None,
                         {"name": name, "scope": str(scope)})
            row = fetch_one(db.execute(_SELECT + " WHERE id=?", (cur.lastrowid,)))
        assert row is not None
        return _token(row)

    def api_tokens(self) -> list[ApiToken]:
        return [_token(r) for r in self._read(_SELECT + " ORDER BY name")]

    def revoke_api_token(self, name: str) -> ApiToken:
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE api_tokens SET revoked=? WHERE name=? AND revoked IS NULL",
                             (now, name))
            if cur.rowcount != 1:
                raise NotFound(f"no live API token named {name!r}")
            insert_event(db, None, "api-token-revoked", now, None, {"name": name})
            row = fetch_one(db.execute(_SELECT + " WHERE name=?", (name,)))
        assert row is not None
        return _token(row)

    def api_token_by_digest(self, digest: str) -> ApiToken | None:
        """The live (not revoked) token with this SHA-256; marks it used (at most once a
        minute: a read-mostly check must not write on every request)."""
        rows = self._read(_SELECT + " WHERE digest=? AND revoked IS NULL", (digest,))
        if not rows:
            return None
        tok = _token(rows[0])
        now = time.time()
        if (tok.last_used or 0) < now - 60 and not self.readonly:
            with self._tx() as db:
                db.execute("UPDATE api_tokens SET last_used=? WHERE id=?", (now, tok.id))
        return tok

    def events_after(self, last_id: int, limit: int = 500) -> list[tuple[int, Event]]:
        """Events with an id above `last_id`, oldest first: the API's live feed (SSE)."""
        rows = self._read("SELECT id, mac, event, time, source_ip, detail, boot FROM events"
                          " WHERE id>? ORDER BY id LIMIT ?", (last_id, limit))
        return [(r.int_at(0), Event(r.opt_mac_at(1), r.str_at(2), r.float_at(3),
                                    r.opt_str_at(4), json.loads(r.str_at(5)), r.opt_str_at(6)))
                for r in rows]

    def last_event_id(self, before: float | None = None) -> int:
        """The id of the newest event (older than `before`, if given); 0 if none."""
        if before is None:
            rows = self._read("SELECT COALESCE(MAX(id), 0) FROM events")
        else:
            rows = self._read("SELECT COALESCE(MAX(id), 0) FROM events WHERE time<?",
                              (before,))
        return rows[0].int_at(0)


def _token(r: Row) -> ApiToken:
    return ApiToken(r.int_at(0), r.str_at(1), TokenScope(r.str_at(2)), r.float_at(3),
                    r.opt_float_at(4), r.opt_float_at(5))
