"""The only code in netbootd that speaks SQL. SQLite in WAL mode, in the state directory.

The CLI and a running server open the same database: every lookup reads committed state, so
a host enrolled by the CLI boots correctly on its next request, without a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import Artifact, Event, Host, Image, MacAddress, Role
from netbootd.store.migrations import MIGRATIONS

DB_NAME = "netbootd.sqlite3"


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open state database {self.path}: {e}") from None
        self._lock = threading.RLock()
        self._migrate()

    def close(self) -> None:
        self._db.close()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all or nothing, and serialised against other writers."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"state database {self.path} is not writable: {e}") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"cannot write state database {self.path}: {e}") from None

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"state database {self.path}: {e}") from None

    def _migrate(self) -> None:
        (version,) = self._read("PRAGMA user_version")[0]
        assert isinstance(version, int)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this netbootd "
                f"({len(MIGRATIONS)}); upgrade netbootd"
            )
        for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx() as db:
                for stmt in script:
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version={n}")

    @property
    def schema_version(self) -> int:
        v = self._read("PRAGMA user_version")[0][0]
        assert isinstance(v, int)
        return v

    # -- artifacts ------------------------------------------------------------------------

    def add_artifact(self, art: Artifact) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO artifacts(sha256, size, created) VALUES (?,?,?)",
                (art.sha256, art.size, time.time()),
            )

    def artifact(self, sha256: str) -> Artifact | None:
        rows = self._read("SELECT sha256, size FROM artifacts WHERE sha256=?", (sha256,))
        return Artifact(str(rows[0][0]), int(rows[0][1])) if rows else None  # type: ignore[call-overload]

    # -- roles and generations ------------------------------------------------------------

    def add_generation(
        self, role: str, kernel: Artifact, initrds: Sequence[Artifact], cmdline: str, source: str
    ) -> Image:
        """Append a generation to `role` (creating the role) and make it current, atomically."""
        now = time.time()
        with self._tx() as db:
            for a in (kernel, *initrds):
                db.execute(
                    "INSERT OR IGNORE INTO artifacts(sha256, size, created) VALUES (?,?,?)",
                    (a.sha256, a.size, now),
                )
            db.execute(
                "INSERT OR IGNORE INTO roles(name, current_generation, created) VALUES (?,NULL,?)",
                (role, now),
            )
            (last,) = db.execute(
                "SELECT COALESCE(MAX(number), 0) FROM generations WHERE role=?", (role,)
            ).fetchone()
            number = int(last) + 1
            db.execute(
                "INSERT INTO generations(role, number, kernel, cmdline, source, created)"
                " VALUES (?,?,?,?,?,?)",
                (role, number, kernel.sha256, cmdline, source, now),
            )
            db.executemany(
                "INSERT INTO generation_initrds(role, number, position, sha256) VALUES (?,?,?,?)",
                [(role, number, i, a.sha256) for i, a in enumerate(initrds)],
            )
            db.execute("UPDATE roles SET current_generation=? WHERE name=?", (number, role))
        return Image(role, number, kernel, tuple(initrds), cmdline, now, source)

    def role(self, name: str) -> Role | None:
        rows = self._read(
            "SELECT r.name, r.current_generation, (SELECT COUNT(*) FROM generations g"
            " WHERE g.role=r.name) FROM roles r WHERE r.name=?",
            (name,),
        )
        return _role(rows[0]) if rows else None

    def roles(self) -> list[Role]:
        rows = self._read(
            "SELECT r.name, r.current_generation, (SELECT COUNT(*) FROM generations g"
            " WHERE g.role=r.name) FROM roles r ORDER BY r.name"
        )
        return [_role(r) for r in rows]

    def image(self, role: str, generation: int | None = None) -> Image | None:
        """The given generation of `role`, or its current one. None if there is none."""
        if generation is None:
            rows = self._read("SELECT current_generation FROM roles WHERE name=?", (role,))
            if not rows or rows[0][0] is None:
                return None
            generation = int(rows[0][0])  # type: ignore[call-overload]
        # One read transaction, so a concurrent switch is seen whole or not at all.
        with self._lock:
            try:
                self._db.execute("BEGIN")
                g = self._db.execute(
                    "SELECT g.number, g.cmdline, g.source, g.created, a.sha256, a.size"
                    " FROM generations g JOIN artifacts a ON a.sha256=g.kernel"
                    " WHERE g.role=? AND g.number=?",
                    (role, generation),
                ).fetchone()
                initrds = self._db.execute(
                    "SELECT a.sha256, a.size FROM generation_initrds i"
                    " JOIN artifacts a ON a.sha256=i.sha256"
                    " WHERE i.role=? AND i.number=? ORDER BY i.position",
                    (role, generation),
                ).fetchall()
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                raise StoreError(f"state database {self.path}: {e}") from None
        if g is None:
            return None
        return Image(
            role=role,
            generation=int(g[0]),
            kernel=Artifact(g[4], int(g[5])),
            initrds=tuple(Artifact(s, int(n)) for s, n in initrds),
            cmdline=g[1],
            created=float(g[3]),
            source=g[2],
        )

    def referenced_artifacts(self) -> set[str]:
        rows = self._read(
            "SELECT kernel FROM generations UNION SELECT sha256 FROM generation_initrds"
        )
        return {str(r[0]) for r in rows}

    # -- hosts ----------------------------------------------------------------------------

    def enroll(
        self,
        mac: MacAddress,
        role: str,
        hostname: str | None = None,
        canon: str | None = None,
        tags: Sequence[str] = (),
    ) -> tuple[Host, bool]:
        """Create or update the host for `mac`. Returns (host, created)."""
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM roles WHERE name=?", (role,)).fetchone() is None:
                known = ", ".join(r[0] for r in db.execute("SELECT name FROM roles ORDER BY name"))
                raise NotFound(f"unknown role {role!r} (known roles: {known or 'none yet'})")
            if hostname is not None:
                clash = db.execute(
                    "SELECT mac FROM hosts WHERE hostname=? AND mac<>?", (hostname, str(mac))
                ).fetchone()
                if clash:
                    raise InvalidInput(f"hostname {hostname!r} is already used by {clash[0]}")
            existed = db.execute("SELECT 1 FROM hosts WHERE mac=?", (str(mac),)).fetchone()
            if existed:
                db.execute(
                    "UPDATE hosts SET role=?, hostname=COALESCE(?, hostname),"
                    " canon=COALESCE(?, canon) WHERE mac=?",
                    (role, hostname, canon, str(mac)),
                )
            else:
                db.execute(
                    "INSERT INTO hosts(mac, role, hostname, canon, created) VALUES (?,?,?,?,?)",
                    (str(mac), role, hostname, canon, now),
                )
            if tags:
                db.execute("DELETE FROM host_tags WHERE mac=?", (str(mac),))
                db.executemany(
                    "INSERT INTO host_tags(mac, tag) VALUES (?,?)", [(str(mac), t) for t in tags]
                )
        host = self.host(mac)
        assert host is not None
        return host, not existed

    def unenroll(self, mac: MacAddress) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM host_tags WHERE mac=?", (str(mac),))
            cur = db.execute("DELETE FROM hosts WHERE mac=?", (str(mac),))
            return cur.rowcount > 0

    def host(self, mac: MacAddress) -> Host | None:
        rows = self._read(_HOST_SELECT + " WHERE h.mac=?", (str(mac),))
        return _host(rows[0]) if rows else None

    def host_by_name(self, name: str) -> Host | None:
        rows = self._read(_HOST_SELECT + " WHERE h.hostname=? OR h.canon=?", (name, name))
        return _host(rows[0]) if rows else None

    def hosts(self, tag: str | None = None) -> list[Host]:
        if tag is None:
            rows = self._read(_HOST_SELECT + " ORDER BY h.hostname IS NULL, h.hostname, h.mac")
        else:
            rows = self._read(
                _HOST_SELECT + " WHERE h.mac IN (SELECT mac FROM host_tags WHERE tag=?)"
                " ORDER BY h.hostname IS NULL, h.hostname, h.mac",
                (tag,),
            )
        return [_host(r) for r in rows]

    # -- events ---------------------------------------------------------------------------

    def record_event(
        self, mac: MacAddress, event: str, source_ip: str | None, detail: dict[str, object] | None
    ) -> Event:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO events(mac, event, time, source_ip, detail) VALUES (?,?,?,?,?)",
                (str(mac), event, now, source_ip, json.dumps(detail or {}, sort_keys=True)),
            )
            if event == "booted":
                db.execute(
                    "UPDATE hosts SET last_boot=?, last_boot_ip=? WHERE mac=?",
                    (now, source_ip, str(mac)),
                )
        return Event(mac, event, now, source_ip, dict(detail or {}))

    def events(self, mac: MacAddress | None = None, since: float = 0.0) -> list[Event]:
        if mac is None:
            rows = self._read(
                "SELECT mac, event, time, source_ip, detail FROM events WHERE time>=?"
                " ORDER BY time, id",
                (since,),
            )
        else:
            rows = self._read(
                "SELECT mac, event, time, source_ip, detail FROM events WHERE mac=? AND time>=?"
                " ORDER BY time, id",
                (str(mac), since),
            )
        return [
            Event(MacAddress.parse(str(m)), str(e), float(t), s, json.loads(str(d)))  # type: ignore[arg-type]
            for m, e, t, s, d in rows
        ]


_HOST_SELECT = (
    "SELECT h.mac, h.role, h.hostname, h.canon, h.created, h.last_boot, h.last_boot_ip,"
    " (SELECT group_concat(tag, ' ') FROM (SELECT tag FROM host_tags t WHERE t.mac=h.mac"
    " ORDER BY tag)) FROM hosts h"
)


def _host(r: tuple[object, ...]) -> Host:
    mac, role, hostname, canon, created, last_boot, last_ip, tags = r
    return Host(
        mac=MacAddress.parse(str(mac)),
        role=str(role),
        hostname=hostname if isinstance(hostname, str) else None,
        canon=canon if isinstance(canon, str) else None,
        tags=tuple(str(tags).split()) if tags else (),
        created=float(created or 0.0),  # type: ignore[arg-type]
        last_boot=float(last_boot) if last_boot is not None else None,  # type: ignore[arg-type]
        last_boot_ip=last_ip if isinstance(last_ip, str) else None,
    )


def _role(r: tuple[object, ...]) -> Role:
    name, current, count = r
    return Role(str(name), int(current) if current is not None else None, int(count))  # type: ignore[call-overload]
