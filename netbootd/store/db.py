"""The connection, transactions, migrations and typed rows every query module builds on.

One SQLite database in WAL mode in the state directory. Every write is one `BEGIN IMMEDIATE`
transaction (`_tx`), serialised against other writers in this process (a lock) and in others
(SQLite's own); reads see committed state only. Every sqlite3 failure -- a locked or read-only
database, a full disk during COMMIT -- surfaces as a `StoreError` with the database's path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from netbootd.errors import NotFound, StoreError
from netbootd.model import MacAddress
from netbootd.store.migrations import MIGRATIONS

DB_NAME = "netbootd.sqlite3"


class Row:
    """One result row with typed accessors: a mapper says what each column is, and a value of
    another type (a damaged database) is a StoreError, not a wrong object."""

    __slots__ = ("_v",)

    def __init__(self, values: Sequence[object]) -> None:
        self._v = values

    def _bad(self, i: int, want: str) -> StoreError:
        return StoreError(f"state database: column {i} is {self._v[i]!r}, not {want}")

    def str_at(self, i: int) -> str:
        v = self._v[i]
        if not isinstance(v, str):
            raise self._bad(i, "text")
        return v

    def int_at(self, i: int) -> int:
        v = self._v[i]
        if not isinstance(v, int):
            raise self._bad(i, "an integer")
        return v

    def float_at(self, i: int) -> float:
        v = self._v[i]
        if not isinstance(v, int | float):
            raise self._bad(i, "a number")
        return float(v)

    def bool_at(self, i: int) -> bool:
        return bool(self.int_at(i))

    def opt_str_at(self, i: int) -> str | None:
        return None if self._v[i] is None else self.str_at(i)

    def opt_int_at(self, i: int) -> int | None:
        return None if self._v[i] is None else self.int_at(i)

    def opt_float_at(self, i: int) -> float | None:
        return None if self._v[i] is None else self.float_at(i)

    def mac_at(self, i: int) -> MacAddress:
        return MacAddress.parse(self.str_at(i))

    def opt_mac_at(self, i: int) -> MacAddress | None:
        return None if self._v[i] is None else self.mac_at(i)


class Database:
    """The connection and its transactions; the query classes (store/*.py) build on it.

    `readonly=True` (the CLI's listings: `hosts`, `status`, `events`, ...) opens the file
    read-only and never creates the state directory, writes, or migrates: a monitoring account
    with read access may run them, and a mistyped --state-dir is an error, not a new empty
    state. Without a WAL file (no writer since the last clean close) a reader that cannot
    create the `-shm` file (a read-only directory) reads the file as immutable."""

    def __init__(self, state_dir: Path, readonly: bool = False) -> None:
        self.path = state_dir / DB_NAME
        self.readonly = readonly
        self.created = False  # this open made the state directory
        if readonly:
            self._db = self._open_readonly(state_dir)
        else:
            try:
                if not state_dir.is_dir():
                    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                    self.created = True
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=10.0
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.execute("PRAGMA synchronous=NORMAL")
            except (OSError, sqlite3.Error) as e:
                raise StoreError(f"cannot open state database {self.path}: {e}") from None
        self._lock = threading.RLock()
        self._commits = 0  # this connection's own commits (data_version counts only others')
        if readonly:
            self._check_schema()
        else:
            self._migrate()

    def _open_readonly(self, state_dir: Path) -> sqlite3.Connection:
        if not state_dir.is_dir():
            raise NotFound(f"no state directory {state_dir} (give --state-dir or set "
                           "NETBOOTD_STATE_DIR; `netbootd role add`, `enroll` or `serve` make one)")
        if not self.path.is_file():
            raise NotFound(f"no state database in {state_dir} (nothing added yet: `netbootd role "
                           "add`, `enroll` or `serve` make it)")
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        for mode in ("?mode=ro", "?mode=ro&immutable=1"):
            if mode.endswith("immutable=1") and self.path.with_name(DB_NAME + "-wal").exists():
                break  # a WAL may hold commits: immutable would not see them
            try:
                db = sqlite3.connect(uri + mode, uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=10.0)
                db.execute("PRAGMA user_version").fetchone()
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.Error as e:
                last = e
        raise StoreError(f"cannot open state database {self.path} read-only: {last}")

    def _check_schema(self) -> None:
        version = self.schema_version
        if version != len(MIGRATIONS):
            newer = version > len(MIGRATIONS)
            raise StoreError(
                f"{self.path} has schema version {version}, "
                + (f"newer than this netbootd ({len(MIGRATIONS)}); upgrade netbootd" if newer
                   else f"older than this netbootd's {len(MIGRATIONS)}: a writing command "
                   "(or `netbootd serve`) migrates it first")
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all or nothing, and serialised against other writers."""
        if self.readonly:
            raise StoreError(f"state database {self.path} was opened read-only")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"state database {self.path} is not writable: {e}") from None
            try:
                yield self._db
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"state database {self.path}: {e}") from None
            except BaseException:
                self._rollback()
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:
                    self._rollback()
                    raise StoreError(f"cannot write state database {self.path}: {e}") from None
                self._commits += 1

    def _rollback(self) -> None:
        """End a failed transaction. A ROLLBACK can fail too (a full disk, an I/O error): the
        transaction is then over anyway (SQLite rolled it back or will on the next open), and
        the caller reports the first error as a StoreError, never a raw sqlite3 one."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def change_stamp(self) -> tuple[int, int]:
        """Changes whenever any connection commits (SQLite's data_version counts the others',
        this one's own commits are counted here): a cheap "has anything changed?" for caches."""
        return self._read("PRAGMA data_version")[0].int_at(0), self._commits

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: several SELECTs that see the same committed state."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"state database {self.path}: {e}") from None

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            try:
                return [Row(r) for r in self._db.execute(sql, args).fetchall()]
            except sqlite3.Error as e:
                raise StoreError(f"state database {self.path}: {e}") from None

    def _migrate(self) -> None:
        version = self._read("PRAGMA user_version")[0].int_at(0)
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

    def backup_to(self, path: Path) -> None:
        """One consistent copy of the database in `path` (SQLite's online backup API: it
        copies a snapshot while writers go on), mode 0600."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            dst = sqlite3.connect(path)
            try:
                with self._lock:
                    self._db.backup(dst)
            finally:
                dst.close()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot back up {self.path} to {path}: {e}") from None

    @property
    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0].int_at(0)


def fetch_one(cursor: sqlite3.Cursor) -> Row | None:
    """The first row of a query run inside a transaction, typed."""
    r = cursor.fetchone()
    return Row(r) if r is not None else None


def fetch_all(cursor: sqlite3.Cursor) -> list[Row]:
    return [Row(r) for r in cursor.fetchall()]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def insert_event(
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
