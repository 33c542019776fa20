"""The only code in netbootd that speaks SQL. SQLite in WAL mode, in the state directory.

The CLI and a running server open the same database: every lookup reads committed state, so
a host enrolled by the CLI boots correctly on its next request, without a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import (
    Artifact,
    Event,
    FlagAction,
    FlagDecision,
    Host,
    IdentityPublic,
    IdentityState,
    IdentityToken,
    Image,
    MacAddress,
    NixBuild,
    Provision,
    ProvisionBoot,
    ProvisionState,
    Release,
    Role,
)
from netbootd.store.migrations import MIGRATIONS
from netbootd.store.stemcell import StemCellQueries

# Tokens are kept this long after they expire (for `netbootd events` context), then purged.
TOKEN_KEEP = 7 * 86400

DB_NAME = "netbootd.sqlite3"


class Store(StemCellQueries):
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
        self,
        role: str,
        kernel: Artifact,
        initrds: Sequence[Artifact],
        cmdline: str,
        source: str,
        build: NixBuild | None = None,
        store_paths: Sequence[str] = (),
    ) -> Image:
        """Append a generation to `role` (creating the role) and make it current, atomically.
        `build`: how it was built from NixOS; `store_paths`: the closure a composed initrd was
        made from (kept so `images gc` keeps those compose-cache entries)."""
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
            b = build
            db.execute(
                "INSERT INTO generations(role, number, kernel, cmdline, source, created,"
                " initrd_mode, kernel_path, initrd_path, toplevel_path, build_seconds,"
                " compose_hits, compose_misses) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (role, number, kernel.sha256, cmdline, source, now,
                 *((b.mode, b.kernel_path, b.initrd_path, b.toplevel_path, b.build_seconds,
                    b.compose_hits, b.compose_misses) if b else (None,) * 7)),
            )
            db.executemany(
                "INSERT INTO generation_initrds(role, number, position, sha256) VALUES (?,?,?,?)",
                [(role, number, i, a.sha256) for i, a in enumerate(initrds)],
            )
            db.executemany(
                "INSERT OR IGNORE INTO generation_store_paths(role, number, path) VALUES (?,?,?)",
                [(role, number, str(p)) for p in store_paths],
            )
            db.execute("UPDATE roles SET current_generation=? WHERE name=?", (number, role))
        return Image(role, number, kernel, tuple(initrds), cmdline, now, source, build)

    def role(self, name: str) -> Role | None:
        rows = self._read(
            "SELECT r.name, r.current_generation, (SELECT COUNT(*) FROM generations g"
            " WHERE g.role=r.name), r.provision_flag FROM roles r WHERE r.name=?",
            (name,),
        )
        return _role(rows[0]) if rows else None

    def roles(self) -> list[Role]:
        rows = self._read(
            "SELECT r.name, r.current_generation, (SELECT COUNT(*) FROM generations g"
            " WHERE g.role=r.name), r.provision_flag FROM roles r ORDER BY r.name"
        )
        return [_role(r) for r in rows]

    def image(self, role: str, generation: int | None = None) -> Image | None:
        """The given generation of `role`, or its current one. None if there is none.

        One read transaction (the role's current generation, the generation row and its
        initrds), so a concurrent switch is seen whole or not at all."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                if generation is None:
                    row = self._db.execute(
                        "SELECT current_generation FROM roles WHERE name=?", (role,)
                    ).fetchone()
                    generation = int(row[0]) if row and row[0] is not None else None
                g = initrds = None
                if generation is not None:
                    g = self._db.execute(
                        "SELECT " + _GEN_COLUMNS + " FROM generations g"
                        " JOIN artifacts a ON a.sha256=g.kernel WHERE g.role=? AND g.number=?",
                        (role, generation),
                    ).fetchone()
                    initrds = self._initrds(role, generation)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                raise StoreError(f"state database {self.path}: {e}") from None
        if g is None or initrds is None:
            return None
        return _image(role, g, initrds)

    def _initrds(self, role: str, number: int) -> list[tuple[str, int]]:
        return [(str(s), int(n)) for s, n in self._db.execute(
            "SELECT a.sha256, a.size FROM generation_initrds i"
            " JOIN artifacts a ON a.sha256=i.sha256"
            " WHERE i.role=? AND i.number=? ORDER BY i.position",
            (role, number),
        )]

    def generations(self, role: str) -> list[Image]:
        """Every generation of `role`, oldest first."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                rows = self._db.execute(
                    "SELECT " + _GEN_COLUMNS + " FROM generations g"
                    " JOIN artifacts a ON a.sha256=g.kernel WHERE g.role=? ORDER BY g.number",
                    (role,),
                ).fetchall()
                out = [_image(role, g, self._initrds(role, int(g[0]))) for g in rows]
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                raise StoreError(f"state database {self.path}: {e}") from None
        return out

    def switch(self, role: str, generation: int) -> tuple[int | None, int]:
        """Make `generation` the role's current one: one UPDATE, so every host's next request
        sees the old or the new generation whole. Returns (previous, new)."""
        with self._tx() as db:
            row = db.execute("SELECT current_generation FROM roles WHERE name=?", (role,)).fetchone()
            if row is None:
                raise NotFound(f"unknown role {role!r}")
            cur = db.execute(
                "UPDATE roles SET current_generation=? WHERE name=? AND EXISTS"
                " (SELECT 1 FROM generations WHERE role=? AND number=?)",
                (generation, role, role, generation),
            )
            if cur.rowcount != 1:
                raise NotFound(f"role {role!r} has no generation {generation} "
                               f"(kept: {_numbers(db, role)})")
        return (int(row[0]) if row[0] is not None else None), generation

    def rollback(self, role: str) -> tuple[int, int]:
        """Make the newest generation older than the current one current (one UPDATE)."""
        with self._tx() as db:
            row = db.execute("SELECT current_generation FROM roles WHERE name=?", (role,)).fetchone()
            if row is None:
                raise NotFound(f"unknown role {role!r}")
            cur = db.execute(
                "UPDATE roles SET current_generation=(SELECT MAX(g.number) FROM generations g"
                " WHERE g.role=roles.name AND g.number<roles.current_generation)"
                " WHERE name=? AND EXISTS (SELECT 1 FROM generations g WHERE g.role=roles.name"
                " AND g.number<roles.current_generation)",
                (role,),
            )
            if cur.rowcount != 1:
                raise NotFound(f"role {role!r} has no generation older than {row[0]} to roll "
                               f"back to (kept: {_numbers(db, role)})")
            (new,) = db.execute(
                "SELECT current_generation FROM roles WHERE name=?", (role,)
            ).fetchone()
        return int(row[0]), int(new)

    def prune(self, role: str, keep: int) -> list[int]:
        """Forget all but the newest `keep` generations of `role` -- never the current one nor
        one a host is pinned to. Their files stay until `images gc`. Returns the numbers."""
        if keep < 1:
            raise InvalidInput("keep at least 1 generation")
        with self._tx() as db:
            doomed = [int(n) for (n,) in db.execute(
                "SELECT number FROM generations g WHERE role=? AND number NOT IN"
                " (SELECT number FROM generations WHERE role=? ORDER BY number DESC LIMIT ?)"
                " AND number IS NOT (SELECT current_generation FROM roles WHERE name=?)"
                " AND number NOT IN (SELECT pinned_generation FROM hosts WHERE role=?"
                " AND pinned_generation IS NOT NULL) ORDER BY number",
                (role, role, keep, role, role),
            )]
            db.executemany("DELETE FROM generations WHERE role=? AND number=?",
                           [(role, n) for n in doomed])
        return doomed

    def pin(self, mac: MacAddress, generation: int | None) -> Host:
        """Pin the host to `generation` of its role (None: follow the role's current one)."""
        with self._tx() as db:
            row = db.execute("SELECT role FROM hosts WHERE mac=?", (str(mac),)).fetchone()
            if row is None:
                raise NotFound(f"no enrolled host {mac}")
            if generation is not None and db.execute(
                "SELECT 1 FROM generations WHERE role=? AND number=?", (row[0], generation)
            ).fetchone() is None:
                raise NotFound(f"role {row[0]!r} has no generation {generation} "
                               f"(kept: {_numbers(db, str(row[0]))})")
            db.execute("UPDATE hosts SET pinned_generation=? WHERE mac=?", (generation, str(mac)))
        host = self.host(mac)
        assert host is not None
        return host

    def referenced_store_paths(self) -> set[str]:
        """Store paths of every kept generation's composed initrd (compose-cache entries gc keeps)."""
        return {str(r[0]) for r in self._read("SELECT DISTINCT path FROM generation_store_paths")}

    def forget_artifacts(self, shas: Sequence[str]) -> list[str]:
        """Delete the rows of those artifacts no generation references (checked in the same
        transaction); returns the ones deleted. The caller removes the files first."""
        with self._tx() as db:
            gone = []
            for sha in shas:
                cur = db.execute(
                    "DELETE FROM artifacts WHERE sha256=? AND sha256 NOT IN"
                    " (SELECT kernel FROM generations UNION SELECT sha256 FROM generation_initrds)",
                    (sha,),
                )
                if cur.rowcount:
                    gone.append(sha)
        return gone

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
                    " canon=COALESCE(?, canon), pinned_generation=CASE WHEN role=?"
                    " THEN pinned_generation END WHERE mac=?",  # a pin names a generation of
                    (role, hostname, canon, role, str(mac)),  # the old role: a new role drops it
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
        """Forget the host. Its identity (keys) is kept but disarmed: re-enrolling arms it."""
        with self._tx() as db:
            db.execute("UPDATE identity_state SET armed=0, every_boot=0 WHERE mac=?", (str(mac),))
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
        self,
        mac: MacAddress | None,
        event: str,
        source_ip: str | None,
        detail: dict[str, object] | None,
        boot: str | None = None,
    ) -> Event:
        now = time.time()
        with self._tx() as db:
            _insert_event(db, mac, event, now, source_ip, detail, boot)
            if event == "booted" and mac is not None:
                db.execute(
                    "UPDATE hosts SET last_boot=?, last_boot_ip=? WHERE mac=?",
                    (now, source_ip, str(mac)),
                )
        return Event(mac, event, now, source_ip, dict(detail or {}), boot)

    def events(self, mac: MacAddress | None = None, since: float = 0.0) -> list[Event]:
        if mac is None:
            rows = self._read(
                "SELECT mac, event, time, source_ip, detail, boot FROM events WHERE time>=?"
                " ORDER BY time, id",
                (since,),
            )
        else:
            rows = self._read(
                "SELECT mac, event, time, source_ip, detail, boot FROM events WHERE mac=?"
                " AND time>=? ORDER BY time, id",
                (str(mac), since),
            )
        return [
            Event(
                MacAddress.parse(str(m)) if m is not None else None,
                str(e),
                float(t),  # type: ignore[arg-type]
                s if isinstance(s, str) else None,
                json.loads(str(d)),
                str(b) if b is not None else None,
            )
            for m, e, t, s, d, b in rows
        ]

    def last_seen_ip(self, mac: MacAddress) -> str | None:
        """The address the host last booted, fetched its identity or reported from."""
        rows = self._read(
            "SELECT source_ip FROM events WHERE mac=? AND source_ip IS NOT NULL"
            " AND event IN ('booted', 'identity-delivered') ORDER BY time DESC, id DESC LIMIT 1",
            (str(mac),),
        )
        return str(rows[0][0]) if rows else None

    # -- identities -----------------------------------------------------------------------

    def add_identity(
        self, pub: IdentityPublic, *, arm: bool, event: str, via: str = "cli"
    ) -> IdentityPublic:
        """Record a new generation (numbered here: last + 1), make it current and (dis)arm it.
        The key files must already be in place (identity.vault.Vault.write)."""
        mac = str(pub.mac)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM hosts WHERE mac=?", (mac,)).fetchone() is None:
                raise NotFound(f"no enrolled host {pub.mac}")
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
            _insert_event(db, pub.mac, event, pub.created, None,
                          {"generation": generation, "armed": arm, "via": via})
        return IdentityPublic(pub.mac, generation, pub.created, pub.machine_id, pub.ssh_ed25519,
                              pub.ssh_rsa, pub.wg_public, pub.directory)

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
        return {str(r[0]) for r in rows}

    def identity_state(self, mac: MacAddress) -> IdentityState | None:
        rows = self._read(
            "SELECT mac, generation, armed, every_boot, changed FROM identity_state WHERE mac=?",
            (str(mac),),
        )
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
            _insert_event(db, mac, "identity-armed" if armed else "identity-disarmed", now, None,
                          {"every_boot": armed and every_boot, "via": via})
        state = self.identity_state(mac)
        assert state is not None
        return state

    # -- per-boot identity tokens ---------------------------------------------------------

    def issue_token(self, token: IdentityToken) -> None:
        """Store a freshly minted token (by digest), audit it, and purge long-expired ones."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO identity_tokens(digest, mac, ip, created, expires, boot)"
                " VALUES (?,?,?,?,?,?)",
                (token.digest, str(token.mac), token.ip, token.created, token.expires, token.boot),
            )
            db.execute("DELETE FROM identity_tokens WHERE expires<?", (token.created - TOKEN_KEEP,))
            _insert_event(db, token.mac, "identity-issued", token.created, token.ip,
                          {"token": token.digest[:12], "expires": _iso(token.expires)}, token.boot)

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
                r = db.execute(_TOKEN_SELECT + " WHERE digest=?", (digest,)).fetchone()
                row = _token(r) if r else None
            mac = row.mac if row is not None else claimed
            host = state = None
            if mac is not None:
                h = db.execute(_HOST_SELECT + " WHERE h.mac=?", (str(mac),)).fetchone()
                host = _host(h) if h else None
                st = db.execute(
                    "SELECT mac, generation, armed, every_boot, changed FROM identity_state"
                    " WHERE mac=?", (str(mac),),
                ).fetchone()
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
                _insert_event(db, mac, "identity-delivered", now, peer_ip, info, row.boot)
            else:
                info["reason"] = decision.reason
                # An unknown or tampered token is held against the host it names only if that
                # host exists, so nobody can fill the log of MACs that are not enrolled.
                _insert_event(db, mac if host is not None else None, "identity-denied", now,
                              peer_ip, info, row.boot if row is not None else None)
        return decision, state

    def deny(self, mac: MacAddress | None, peer_ip: str | None, detail: dict[str, object]) -> None:
        """Audit a refused identity request decided before any token lookup (plain HTTP, a
        malformed token); attributed to `mac` only if it is enrolled."""
        now = time.time()
        with self._tx() as db:
            if mac is not None and db.execute(
                "SELECT 1 FROM hosts WHERE mac=?", (str(mac),)
            ).fetchone() is None:
                mac = None
            _insert_event(db, mac, "identity-denied", now, peer_ip, detail)
    # -- roles' re-provision flag ---------------------------------------------------------

    def set_provision_flag(self, role: str, flag: str | None) -> Role:
        """Name the flag `role`'s hosts get on a re-provision boot (None: the default)."""
        with self._tx() as db:
            cur = db.execute("UPDATE roles SET provision_flag=? WHERE name=?", (flag, role))
            if cur.rowcount != 1:
                raise NotFound(f"unknown role {role!r}")
        r = self.role(role)
        assert r is not None
        return r

    # -- one-shot re-provisioning ---------------------------------------------------------
    #
    # `provisions` holds at most one pending re-provision per host; `provision_boots` the boots
    # that carried its flag, by the SHA-256 of their per-boot token. Every change is decided by
    # the pure policy (passed in as `decide`, with the clock bound) inside the transaction that
    # read its inputs and acts on the answer, so two servers sharing the state agree.

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
                info: dict[str, object] = {"expires": _iso(now + ttl), "max_boots": max_boots,
                                           "via": via}
                if was is not None:
                    info["replaces"] = f"{was[0]} after {was[1]} flagged boot(s)"
                _insert_event(db, mac, "provision-armed", now, None, info)
        return [p for p in (self.provision(m) for m in macs) if p is not None]

    def cancel_provision(self, macs: Sequence[MacAddress], via: str = "cli") -> list[Provision]:
        """Clear the pending (or failed) re-provision of each host; returns what was cleared."""
        now = time.time()
        gone = []
        with self._tx() as db:
            for mac in macs:
                row = db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)).fetchone()
                if row is None:
                    continue
                p = _provision(row)
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                _insert_event(db, mac, "provision-cancelled", now, None,
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
            row = db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)).fetchone()
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
                _insert_event(db, mac, "provision-offered", now, peer_ip,
                              {"boot_number": d.number, "max_boots": arming.max_boots}, boot)
            elif d.action is FlagAction.EXPIRE:
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                _insert_event(db, mac, "provision-expired", now, peer_ip,
                              {"reason": d.reason, "boots": arming.boots}, boot)
            elif d.action is FlagAction.TRIP:
                db.execute(
                    "UPDATE provisions SET state=?, changed=?, reason=? WHERE mac=?",
                    (ProvisionState.FAILED.value, now, d.reason, str(mac)),
                )
                _insert_event(db, mac, "provision-failed", now, peer_ip,
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
            row = db.execute(_PROVISION_SELECT + " WHERE mac=?", (str(mac),)).fetchone()
            arming = _provision(row) if row else None
            b = db.execute(_PBOOT_SELECT + " WHERE digest=? AND mac=?",
                           (digest, str(mac))).fetchone()
            pboot = _pboot(b) if b else None
            d = decide(arming, pboot)
            info: dict[str, object] = dict(detail or {})
            if d.ok:
                db.execute("DELETE FROM provisions WHERE mac=?", (str(mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(mac),))
                db.execute("UPDATE hosts SET last_provisioned=? WHERE mac=?", (now, str(mac)))
                if pboot is not None:
                    info["boot_number"] = pboot.number
                _insert_event(db, mac, "provisioned", now, peer_ip, info, boot)
            else:
                _insert_event(db, mac, "denied", now, peer_ip,
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
            for row in db.execute(_PROVISION_SELECT).fetchall():
                p = _provision(row)
                d = decide(p)
                if d.action is not FlagAction.EXPIRE:
                    continue
                db.execute("DELETE FROM provisions WHERE mac=?", (str(p.mac),))
                db.execute("DELETE FROM provision_boots WHERE mac=?", (str(p.mac),))
                _insert_event(db, p.mac, "provision-expired", now, None,
                              {"reason": d.reason, "boots": p.boots})
                cleared.append(p.mac)
        return cleared

    def deny_event(self, mac: MacAddress, peer_ip: str | None, detail: dict[str, object],
                   boot: str | None = None) -> None:
        """Audit a refused host report (a bad or missing per-boot token) as `denied`, against
        `mac` only if it is enrolled."""
        now = time.time()
        with self._tx() as db:
            known = db.execute("SELECT 1 FROM hosts WHERE mac=?", (str(mac),)).fetchone()
            _insert_event(db, mac if known else None, "denied", now, peer_ip, detail, boot)



def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _insert_event(
    db: sqlite3.Connection,
    mac: MacAddress | None,
    event: str,
    now: float,
    source_ip: str | None,
    detail: dict[str, object] | None,
    boot: str | None = None,
) -> None:
    db.execute(
        "INSERT INTO events(mac, event, time, source_ip, detail, boot) VALUES (?,?,?,?,?,?)",
        (str(mac) if mac is not None else None, event, now, source_ip,
         json.dumps(detail or {}, sort_keys=True), boot),
    )


_IDENTITY_SELECT = (
    "SELECT i.mac, i.generation, i.created, i.machine_id, i.ssh_ed25519, i.ssh_rsa, i.wg_public,"
    " i.directory FROM identities i"
)
_TOKEN_SELECT = "SELECT digest, mac, ip, created, expires, used, used_ip, boot FROM identity_tokens"


def _identity(r: tuple[object, ...]) -> IdentityPublic:
    mac, gen, created, mid, ed, rsa, wg, directory = r
    return IdentityPublic(
        MacAddress.parse(str(mac)), int(gen), float(created), str(mid), str(ed), str(rsa),  # type: ignore[call-overload, arg-type]
        str(wg), str(directory),
    )


def _state(r: tuple[object, ...]) -> IdentityState:
    mac, gen, armed, every, changed = r
    return IdentityState(
        MacAddress.parse(str(mac)), int(gen), bool(armed), bool(every), float(changed)  # type: ignore[call-overload, arg-type]
    )


def _token(r: tuple[object, ...]) -> IdentityToken:
    digest, mac, ip, created, expires, used, used_ip, boot = r
    return IdentityToken(
        str(digest), MacAddress.parse(str(mac)), str(ip), float(created), float(expires),  # type: ignore[arg-type]
        float(used) if used is not None else None,  # type: ignore[arg-type]
        str(used_ip) if used_ip is not None else None,
        str(boot) if boot is not None else None,
    )


_PROVISION_SELECT = (
    "SELECT mac, state, armed, expires, max_boots, boots, last_boot, via, changed, reason"
    " FROM provisions"
)
_PBOOT_SELECT = "SELECT digest, mac, armed, number, time, ip FROM provision_boots"


def _provision(r: tuple[object, ...]) -> Provision:
    mac, state, armed, expires, max_boots, boots, last, via, changed, reason = r
    return Provision(
        MacAddress.parse(str(mac)), ProvisionState(str(state)), float(armed), float(expires),  # type: ignore[arg-type]
        int(max_boots), int(boots), str(last) if last is not None else None, str(via),  # type: ignore[call-overload]
        float(changed), str(reason),  # type: ignore[arg-type]
    )


def _pboot(r: tuple[object, ...]) -> ProvisionBoot:
    digest, mac, armed, number, t, ip = r
    return ProvisionBoot(str(digest), MacAddress.parse(str(mac)), float(armed), int(number),  # type: ignore[arg-type, call-overload]
                         float(t), str(ip) if ip is not None else None)  # type: ignore[arg-type]


_HOST_SELECT = (
    "SELECT h.mac, h.role, h.hostname, h.canon, h.created, h.last_boot, h.last_boot_ip,"
    " (SELECT group_concat(tag, ' ') FROM (SELECT tag FROM host_tags t WHERE t.mac=h.mac"
    " ORDER BY tag)), h.pinned_generation, h.last_provisioned FROM hosts h"
)


def _host(r: tuple[object, ...]) -> Host:
    mac, role, hostname, canon, created, last_boot, last_ip, tags, pinned, provisioned = r
    return Host(
        mac=MacAddress.parse(str(mac)),
        role=str(role),
        hostname=hostname if isinstance(hostname, str) else None,
        canon=canon if isinstance(canon, str) else None,
        tags=tuple(str(tags).split()) if tags else (),
        created=float(created or 0.0),  # type: ignore[arg-type]
        last_boot=float(last_boot) if last_boot is not None else None,  # type: ignore[arg-type]
        last_boot_ip=last_ip if isinstance(last_ip, str) else None,
        pinned_generation=int(pinned) if pinned is not None else None,  # type: ignore[call-overload]
        last_provisioned=float(provisioned) if provisioned is not None else None,  # type: ignore[arg-type]
    )


_GEN_COLUMNS = (
    "g.number, g.cmdline, g.source, g.created, a.sha256, a.size, g.initrd_mode, g.kernel_path,"
    " g.initrd_path, g.toplevel_path, g.build_seconds, g.compose_hits, g.compose_misses"
)


def _image(role: str, g: tuple[object, ...], initrds: list[tuple[str, int]]) -> Image:
    number, cmdline, source, created, sha, size, mode, kp, ip, tp, secs, hits, misses = g
    build = None
    if mode is not None:
        build = NixBuild(str(mode), str(kp), str(ip), str(tp), float(secs or 0.0),  # type: ignore[arg-type]
                         int(hits or 0), int(misses or 0))  # type: ignore[call-overload]
    return Image(
        role=role,
        generation=int(number),  # type: ignore[call-overload]
        kernel=Artifact(str(sha), int(size)),  # type: ignore[call-overload]
        initrds=tuple(Artifact(s, n) for s, n in initrds),
        cmdline=str(cmdline),
        created=float(created),  # type: ignore[arg-type]
        source=str(source),
        build=build,
    )


def _numbers(db: sqlite3.Connection, role: str) -> str:
    nums = [str(n) for (n,) in db.execute(
        "SELECT number FROM generations WHERE role=? ORDER BY number", (role,))]
    return ", ".join(nums) or "none"


def _role(r: tuple[object, ...]) -> Role:
    name, current, count, flag = r
    return Role(str(name), int(current) if current is not None else None, int(count),  # type: ignore[call-overload]
                str(flag) if flag is not None else None)
