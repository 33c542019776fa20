"""SQL for the boot chain (migration 6): a role's transport, HTTP-boot payload and Secure Boot
rule, and the Secure Boot state hosts report (read from their `booted` events)."""

from __future__ import annotations

import json
import time

from netbootd.errors import NotFound
from netbootd.model import (
    HttpBoot,
    Loader,
    MacAddress,
    RoleChain,
    SecureBootRule,
    SecureBootState,
    Transport,
)
from netbootd.store.db import Database, Row

_COLUMNS = "role, transport, http_boot, secure_boot, loader"


def _chain(r: Row) -> RoleChain:
    t, h, ld = r.opt_str_at(1), r.opt_str_at(2), r.opt_str_at(4)
    return RoleChain(r.str_at(0), Transport(t) if t else None, HttpBoot(h) if h else None,
                     SecureBootRule(r.str_at(3)), Loader(ld) if ld else None)


class ChainQueries(Database):
    def role_chain(self, role: str) -> RoleChain:
        rows = self._read(f"SELECT {_COLUMNS} FROM role_chain WHERE role=?", (role,))
        return _chain(rows[0]) if rows else RoleChain(role)

    def set_role_chain(self, chain: RoleChain) -> RoleChain:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM roles WHERE name=?", (chain.role,)).fetchone() is None:
                raise NotFound(f"unknown role {chain.role!r}")
            db.execute(
                f"INSERT INTO role_chain({_COLUMNS}, changed) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(role) DO UPDATE SET transport=excluded.transport,"
                " http_boot=excluded.http_boot, secure_boot=excluded.secure_boot,"
                " loader=excluded.loader, changed=excluded.changed",
                (chain.role, chain.transport.value if chain.transport else None,
                 chain.http_boot.value if chain.http_boot else None, chain.secure_boot.value,
                 chain.loader.value if chain.loader else None, time.time()),
            )
        return chain

    def secure_boot_state(self, mac: MacAddress) -> SecureBootState:
        """What the host's latest `booted` report said about Secure Boot (its kernel's view)."""
        rows = self._read("SELECT detail FROM events WHERE mac=? AND event='booted' "
                          "ORDER BY time DESC, id DESC LIMIT 1", (str(mac),))
        if not rows:
            return SecureBootState.UNKNOWN
        try:
            detail = json.loads(rows[0].opt_str_at(0) or "{}")
        except ValueError:
            return SecureBootState.UNKNOWN
        value = detail.get("secureboot") if isinstance(detail, dict) else None
        if not isinstance(value, str):
            return SecureBootState.UNKNOWN
        try:
            return SecureBootState(value)
        except ValueError:
            return SecureBootState.UNKNOWN
