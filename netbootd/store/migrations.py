"""Schema migrations: MIGRATIONS[n] takes the database from user_version n to n+1.

Append only. Never edit a migration that has shipped; add a new one.
"""

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE artifacts (
            sha256  TEXT PRIMARY KEY,
            size    INTEGER NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE roles (
            name               TEXT PRIMARY KEY,
            current_generation INTEGER,
            created            REAL NOT NULL)""",
        """CREATE TABLE generations (
            role    TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
            number  INTEGER NOT NULL,
            kernel  TEXT NOT NULL REFERENCES artifacts(sha256),
            cmdline TEXT NOT NULL,
            source  TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (role, number))""",
        """CREATE TABLE generation_initrds (
            role     TEXT NOT NULL,
            number   INTEGER NOT NULL,
            position INTEGER NOT NULL,
            sha256   TEXT NOT NULL REFERENCES artifacts(sha256),
            PRIMARY KEY (role, number, position),
            FOREIGN KEY (role, number) REFERENCES generations(role, number) ON DELETE CASCADE)""",
        """CREATE TABLE hosts (
            mac          TEXT PRIMARY KEY,
            role         TEXT NOT NULL REFERENCES roles(name),
            hostname     TEXT UNIQUE,
            canon        TEXT,
            created      REAL NOT NULL,
            last_boot    REAL,
            last_boot_ip TEXT)""",
        """CREATE TABLE host_tags (
            mac TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
            tag TEXT NOT NULL,
            PRIMARY KEY (mac, tag))""",
        "CREATE INDEX host_tags_tag ON host_tags(tag)",
        """CREATE TABLE events (
            id        INTEGER PRIMARY KEY,
            mac       TEXT NOT NULL,
            event     TEXT NOT NULL,
            time      REAL NOT NULL,
            source_ip TEXT,
            detail    TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX events_mac_time ON events(mac, time)",
    ],
]
