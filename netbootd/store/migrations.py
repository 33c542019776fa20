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
    ],    # 2: per-host identity (issue 5). Public halves and arming live here; private keys only in
    # files (identity/vault.py). Per-boot tokens are kept as their SHA-256. `events.mac` becomes
    # nullable: a refused identity request with an unknown token names no host (SQLite cannot
    # drop NOT NULL in place, so the table is rebuilt with its rows and ids).
    [
        """CREATE TABLE events_v2 (
            id        INTEGER PRIMARY KEY,
            mac       TEXT,
            event     TEXT NOT NULL,
            time      REAL NOT NULL,
            source_ip TEXT,
            detail    TEXT NOT NULL DEFAULT '{}')""",
        (
            "INSERT INTO events_v2(id, mac, event, time, source_ip, detail)"
            " SELECT id, mac, event, time, source_ip, detail FROM events"
        ),
        "DROP TABLE events",
        "ALTER TABLE events_v2 RENAME TO events",
        "CREATE INDEX events_mac_time ON events(mac, time)",
        "CREATE INDEX events_time ON events(time)",
        """CREATE TABLE identities (
            mac         TEXT NOT NULL,
            generation  INTEGER NOT NULL,
            created     REAL NOT NULL,
            machine_id  TEXT NOT NULL,
            ssh_ed25519 TEXT NOT NULL,
            ssh_rsa     TEXT NOT NULL,
            wg_public   TEXT NOT NULL,
            directory   TEXT NOT NULL,
            PRIMARY KEY (mac, generation))""",
        """CREATE TABLE identity_state (
            mac        TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            armed      INTEGER NOT NULL,
            every_boot INTEGER NOT NULL,
            changed    REAL NOT NULL,
            FOREIGN KEY (mac, generation) REFERENCES identities(mac, generation))""",
        """CREATE TABLE identity_tokens (
            digest  TEXT PRIMARY KEY,
            mac     TEXT NOT NULL,
            ip      TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            used    REAL,
            used_ip TEXT)""",
        "CREATE INDEX identity_tokens_expires ON identity_tokens(expires)",
    ],
    # 3: roles built from NixOS (issue 7). How a generation was built (NULL for `role add`
    # imports), the store paths a composed initrd was made from (so `images gc` knows which
    # compose-cache entries are still needed), and a host's pin to one generation of its role.
    [
        "ALTER TABLE generations ADD COLUMN initrd_mode TEXT",
        "ALTER TABLE generations ADD COLUMN kernel_path TEXT",
        "ALTER TABLE generations ADD COLUMN initrd_path TEXT",
        "ALTER TABLE generations ADD COLUMN toplevel_path TEXT",
        "ALTER TABLE generations ADD COLUMN build_seconds REAL",
        "ALTER TABLE generations ADD COLUMN compose_hits INTEGER",
        "ALTER TABLE generations ADD COLUMN compose_misses INTEGER",
        """CREATE TABLE generation_store_paths (
            role   TEXT NOT NULL,
            number INTEGER NOT NULL,
            path   TEXT NOT NULL,
            PRIMARY KEY (role, number, path),
            FOREIGN KEY (role, number) REFERENCES generations(role, number) ON DELETE CASCADE)""",
        "ALTER TABLE hosts ADD COLUMN pinned_generation INTEGER",
    ],
    # 4: one-shot re-provisioning and per-boot ids (issue 6). At most one pending re-provision
    # per host (`provisions`), the boots that were served its flag (by the SHA-256 of their
    # per-boot token), a role's own flag name, when a host last reported `provisioned`, and the
    # per-boot id of each event and identity token.
    [
        """CREATE TABLE provisions (
            mac       TEXT PRIMARY KEY REFERENCES hosts(mac) ON DELETE CASCADE,
            state     TEXT NOT NULL,
            armed     REAL NOT NULL,
            expires   REAL NOT NULL,
            max_boots INTEGER NOT NULL,
            boots     INTEGER NOT NULL DEFAULT 0,
            last_boot TEXT,
            via       TEXT NOT NULL,
            changed   REAL NOT NULL,
            reason    TEXT NOT NULL DEFAULT '')""",
        """CREATE TABLE provision_boots (
            digest TEXT PRIMARY KEY,
            mac    TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
            armed  REAL NOT NULL,
            number INTEGER NOT NULL,
            time   REAL NOT NULL,
            ip     TEXT)""",
        "CREATE INDEX provision_boots_mac ON provision_boots(mac)",
        "ALTER TABLE roles ADD COLUMN provision_flag TEXT",
        "ALTER TABLE hosts ADD COLUMN last_provisioned REAL",
        "ALTER TABLE events ADD COLUMN boot TEXT",
        "ALTER TABLE identity_tokens ADD COLUMN boot TEXT",
    ],
    # 5: stem-cell boots (issue 8). A role's boot mode and its settings (no row: ramdisk); gold
    # disk images by name and version; each iSCSI host's LUN (no foreign key to hosts: the disks
    # outlive an unenroll until `iscsi destroy`); what each role's NFS store was last synced for
    # (its toplevel and closure); and the stable export id of each host's NFS directory.
    [
        """CREATE TABLE role_boot (
            role      TEXT PRIMARY KEY REFERENCES roles(name) ON DELETE CASCADE,
            mode      TEXT NOT NULL,
            toplevel  TEXT,
            gold      TEXT,
            data_size INTEGER,
            san       TEXT,
            local     TEXT,
            changed   REAL NOT NULL)""",
        """CREATE TABLE iscsi_gold (
            name    TEXT NOT NULL,
            version INTEGER NOT NULL,
            file    TEXT NOT NULL,
            size    INTEGER NOT NULL,
            created REAL NOT NULL,
            source  TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (name, version))""",
        """CREATE TABLE iscsi_luns (
            mac          TEXT PRIMARY KEY,
            tid          INTEGER NOT NULL UNIQUE,
            target       TEXT NOT NULL UNIQUE,
            initiator    TEXT NOT NULL,
            gold         TEXT NOT NULL,
            gold_version INTEGER NOT NULL,
            method       TEXT NOT NULL,
            root         TEXT NOT NULL,
            data         TEXT NOT NULL,
            data_size    INTEGER NOT NULL,
            created      REAL NOT NULL,
            cloned       REAL NOT NULL,
            FOREIGN KEY (gold, gold_version) REFERENCES iscsi_gold(name, version))""",
        """CREATE TABLE nfs_syncs (
            role     TEXT PRIMARY KEY REFERENCES roles(name) ON DELETE CASCADE,
            toplevel TEXT NOT NULL,
            synced   REAL NOT NULL)""",
        """CREATE TABLE nfs_paths (
            role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
            path TEXT NOT NULL,
            PRIMARY KEY (role, path))""",
        """CREATE TABLE nfs_hosts (
            mac       TEXT PRIMARY KEY,
            export_id INTEGER NOT NULL UNIQUE,
            created   REAL NOT NULL)""",
    ],
    [
        # The boot chain (issue 14): a role's transport, HTTP-boot payload and Secure Boot rule.
        """CREATE TABLE role_chain (
            role        TEXT PRIMARY KEY REFERENCES roles(name) ON DELETE CASCADE,
            transport   TEXT,
            http_boot   TEXT,
            secure_boot TEXT NOT NULL DEFAULT 'off',
            changed     REAL NOT NULL)""",
    ],
    [
        # 7: admin API bearer tokens (issue 15): only the SHA-256 of each token is kept, with
        # its name, scope (read | admin), when it was made, last used and revoked.
        """CREATE TABLE api_tokens (
            id        INTEGER PRIMARY KEY,
            name      TEXT NOT NULL UNIQUE,
            digest    TEXT NOT NULL UNIQUE,
            scope     TEXT NOT NULL,
            created   REAL NOT NULL,
            last_used REAL,
            revoked   REAL)""",
    ],
    [
        # 8: discovery + hardware inventory (issue 16, the discovery half). `discovered`: unknown
        # machines that reported an inventory on a discovery boot (bounded: discovery.max_records,
        # expired after discovery.expire); `inventories`: each host's reports, a row per change
        # (digest of the canonical document) with what changed; `discovery_rules`: automatic
        # enrollment by match (JSON), a role and a hostname template.
        """CREATE TABLE discovered (
            mac        TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,
            last_seen  REAL NOT NULL,
            source_ip  TEXT,
            boot       TEXT,
            reports    INTEGER NOT NULL DEFAULT 1,
            inventory  TEXT NOT NULL)""",
        "CREATE INDEX discovered_last_seen ON discovered(last_seen)",
        """CREATE TABLE inventories (
            id            INTEGER PRIMARY KEY,
            mac           TEXT NOT NULL,
            reported      REAL NOT NULL,
            last_reported REAL NOT NULL,
            boot          TEXT,
            source_ip     TEXT,
            digest        TEXT NOT NULL,
            inventory     TEXT NOT NULL,
            changes       TEXT NOT NULL DEFAULT '[]')""",
        "CREATE INDEX inventories_mac ON inventories(mac, id)",
        """CREATE TABLE discovery_rules (
            id       INTEGER PRIMARY KEY,
            name     TEXT NOT NULL UNIQUE,
            match    TEXT NOT NULL,
            role     TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
            hostname TEXT,
            created  REAL NOT NULL,
            enrolled INTEGER NOT NULL DEFAULT 0)""",
    ],
    [
        # 9 (bmc): per-host BMC settings (issue 16, power control). The password is not here:
        # it is a 0600 file under <state>/bmc/<mac>/ (power/credentials.py), written first.
        """CREATE TABLE bmcs (
            mac      TEXT PRIMARY KEY REFERENCES hosts(mac) ON DELETE CASCADE,
            kind     TEXT NOT NULL,
            address  TEXT NOT NULL,
            port     INTEGER,
            user     TEXT NOT NULL,
            ca_file  TEXT,
            insecure INTEGER NOT NULL DEFAULT 0,
            changed  REAL NOT NULL)""",
    ],
    [
        # 10 (shim): a role's loader before its UKI (issue 14: shim + MOK); NULL: boot.loader.
        "ALTER TABLE role_chain ADD COLUMN loader TEXT",
    ],
]
