"""SQL for roles and their generations (kernel, ordered initrds, command line, build record,
composed closure), the artifacts they name, pruning, and a role's re-provision flag.

Hosts point at a role, not at files: a switch or rollback is one UPDATE of
`roles.current_generation`, and `image()` reads the current generation, its row and its initrds
in one read transaction, so a host sees the old or the new generation whole.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from netbootd.errors import InvalidInput, NotFound
from netbootd.model import Artifact, Image, NixBuild, Role
from netbootd.store.db import Database, Row, fetch_all, fetch_one, insert_event


class RoleQueries(Database):
    def add_artifact(self, art: Artifact) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO artifacts(sha256, size, created) VALUES (?,?,?)",
                (art.sha256, art.size, time.time()),
            )

    def artifact(self, sha256: str) -> Artifact | None:
        rows = self._read("SELECT sha256, size FROM artifacts WHERE sha256=?", (sha256,))
        return Artifact(rows[0].str_at(0), rows[0].int_at(1)) if rows else None

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
        with self._snapshot() as db:
            if generation is None:
                row = fetch_one(db.execute("SELECT current_generation FROM roles WHERE name=?",
                                           (role,)))
                generation = row.opt_int_at(0) if row else None
            if generation is None:
                return None
            g = fetch_one(db.execute(
                "SELECT " + _GEN_COLUMNS + " FROM generations g"
                " JOIN artifacts a ON a.sha256=g.kernel WHERE g.role=? AND g.number=?",
                (role, generation),
            ))
            return _image(role, g, self._initrds(db, role, generation)) if g else None

    @staticmethod
    def _initrds(db: sqlite3.Connection, role: str, number: int) -> tuple[Artifact, ...]:
        return tuple(Artifact(r.str_at(0), r.int_at(1)) for r in fetch_all(db.execute(
            "SELECT a.sha256, a.size FROM generation_initrds i"
            " JOIN artifacts a ON a.sha256=i.sha256"
            " WHERE i.role=? AND i.number=? ORDER BY i.position",
            (role, number),
        )))

    def generations(self, role: str) -> list[Image]:
        """Every generation of `role`, oldest first (one read transaction)."""
        with self._snapshot() as db:
            gens = fetch_all(db.execute(
                "SELECT " + _GEN_COLUMNS + " FROM generations g"
                " JOIN artifacts a ON a.sha256=g.kernel WHERE g.role=? ORDER BY g.number",
                (role,),
            ))
            return [_image(role, g, self._initrds(db, role, g.int_at(0))) for g in gens]

    def switch(self, role: str, generation: int) -> tuple[int | None, int]:
        """Make `generation` the role's current one: one UPDATE, so every host's next request
        sees the old or the new generation whole. Returns (previous, new)."""
        with self._tx() as db:
            row = db.execute("SELECT current_generation FROM roles WHERE name=?",
                             (role,)).fetchone()
            if row is None:
                raise NotFound(f"unknown role {role!r}")
            cur = db.execute(
                "UPDATE roles SET current_generation=? WHERE name=? AND EXISTS"
                " (SELECT 1 FROM generations WHERE role=? AND number=?)",
                (generation, role, role, generation),
            )
            if cur.rowcount != 1:
                raise NotFound(f"role {role!r} has no generation {generation} "
                               f"(kept: {generation_numbers(db, role)})")
        return (int(row[0]) if row[0] is not None else None), generation

    def rollback(self, role: str) -> tuple[int, int]:
        """Make the newest generation older than the current one current (one UPDATE)."""
        with self._tx() as db:
            row = db.execute("SELECT current_generation FROM roles WHERE name=?",
                             (role,)).fetchone()
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
                               f"back to (kept: {generation_numbers(db, role)})")
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
            return _prune(db, role, keep)

    def prune_preview(self, keep: int | None) -> tuple[dict[str, list[int]], set[str], set[str]]:
        """What `images gc --keep N` would do, without doing it: (generations each role would
        forget, artifacts and store paths still referenced after that). Read in one snapshot;
        the pruning is computed, never written -- `--dry-run` tells the truth read-only."""
        if keep is not None and keep < 1:
            raise InvalidInput("keep at least 1 generation")
        with self._snapshot() as db:
            doomed: dict[str, list[int]] = {}
            if keep is not None:
                for (name,) in db.execute("SELECT name FROM roles ORDER BY name").fetchall():
                    gone = [int(n) for (n,) in db.execute(_DOOMED, (name,) * 2 + (keep,)
                                                          + (name,) * 2).fetchall()]
                    if gone:
                        doomed[str(name)] = gone
            gone_set = {(r, n) for r, ns in doomed.items() for n in ns}
            arts: set[str] = set()
            for role, number, kernel in db.execute(
                    "SELECT role, number, kernel FROM generations").fetchall():
                if (role, number) not in gone_set:
                    arts.add(str(kernel))
            for role, number, sha in db.execute(
                    "SELECT role, number, sha256 FROM generation_initrds").fetchall():
                if (role, number) not in gone_set:
                    arts.add(str(sha))
            paths = {str(p) for role, number, p in db.execute(
                "SELECT role, number, path FROM generation_store_paths").fetchall()
                if (role, number) not in gone_set}
        return doomed, arts, paths

    def remove_role(self, name: str) -> Role:
        """Forget a role and all its generations (their files stay until `images gc`); refused
        while a host is enrolled in it."""
        with self._tx() as db:
            row = fetch_one(db.execute(_ROLE_SELECT + " WHERE r.name=?", (name,)))
            if row is None:
                raise NotFound(f"unknown role {name!r}")
            users = [str(m) if h is None else str(h) for m, h in db.execute(
                "SELECT mac, hostname FROM hosts WHERE role=? ORDER BY hostname, mac", (name,))]
            if users:
                shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more"
                                                 if len(users) > 10 else "")
                raise InvalidInput(f"role {name!r} still has {len(users)} host(s): {shown}; "
                                   "enroll them in another role or unenroll them first")
            db.execute("DELETE FROM generations WHERE role=?", (name,))
            db.execute("DELETE FROM roles WHERE name=?", (name,))
            insert_event(db, None, "role-removed", time.time(), None, {"role": name})
        return _role(row)

    def referenced_store_paths(self) -> set[str]:
        """Store paths of every kept generation's composed initrd (compose-cache entries gc
        keeps)."""
        return {r.str_at(0)
                for r in self._read("SELECT DISTINCT path FROM generation_store_paths")}

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
        return {r.str_at(0) for r in rows}

    def set_provision_flag(self, role: str, flag: str | None) -> Role:
        """Name the flag `role`'s hosts get on a re-provision boot (None: the default)."""
        with self._tx() as db:
            cur = db.execute("UPDATE roles SET provision_flag=? WHERE name=?", (flag, role))
            if cur.rowcount != 1:
                raise NotFound(f"unknown role {role!r}")
        r = self.role(role)
        assert r is not None
        return r


_GEN_COLUMNS = (
    "g.number, g.cmdline, g.source, g.created, a.sha256, a.size, g.initrd_mode, g.kernel_path,"
    " g.initrd_path, g.toplevel_path, g.build_seconds, g.compose_hits, g.compose_misses"
)


def _image(role: str, g: Row, initrds: tuple[Artifact, ...]) -> Image:
    mode = g.opt_str_at(6)
    build = None
    if mode is not None:
        build = NixBuild(mode, g.str_at(7), g.str_at(8), g.str_at(9), g.opt_float_at(10) or 0.0,
                         g.opt_int_at(11) or 0, g.opt_int_at(12) or 0)
    return Image(
        role=role,
        generation=g.int_at(0),
        kernel=Artifact(g.str_at(4), g.int_at(5)),
        initrds=initrds,
        cmdline=g.str_at(1),
        created=g.float_at(3),
        source=g.str_at(2),
        build=build,
    )


_DOOMED = (
    "SELECT number FROM generations g WHERE role=? AND number NOT IN"
    " (SELECT number FROM generations WHERE role=? ORDER BY number DESC LIMIT ?)"
    " AND number IS NOT (SELECT current_generation FROM roles WHERE name=?)"
    " AND number NOT IN (SELECT pinned_generation FROM hosts WHERE role=?"
    " AND pinned_generation IS NOT NULL) ORDER BY number"
)
_ROLE_SELECT = (
    "SELECT r.name, r.current_generation, (SELECT COUNT(*) FROM generations g"
    " WHERE g.role=r.name), r.provision_flag FROM roles r"
)


def _prune(db: sqlite3.Connection, role: str, keep: int) -> list[int]:
    doomed = [int(n) for (n,) in db.execute(_DOOMED, (role, role, keep, role, role))]
    db.executemany("DELETE FROM generations WHERE role=? AND number=?",
                   [(role, n) for n in doomed])
    return doomed


def generation_numbers(db: sqlite3.Connection, role: str) -> str:
    """`1, 2, 5`: the generations `role` keeps, for error messages."""
    nums = [str(n) for (n,) in db.execute(
        "SELECT number FROM generations WHERE role=? ORDER BY number", (role,))]
    return ", ".join(nums) or "none"


def _role(r: Row) -> Role:
    return Role(r.str_at(0), r.opt_int_at(1), r.int_at(2), r.opt_str_at(3))
