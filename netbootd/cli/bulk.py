"""`netbootd enroll --from hosts.csv|hosts.json`: many hosts at once, all or nothing.

Every row is validated (MAC, role, hostname, canonical name, tags; duplicates within the file;
hostnames another MAC already has) before anything is written; then each host that needs an
identity gets one -- ed25519, machine-id, hostId and WireGuard key at once (~1 ms), the RSA-4096
host key **later** (it takes ~1 s): `serve` makes pending RSA keys in the background, one after
another, and a bundle whose RSA key is still pending gets it made first (on first need); the
key files are written without an fsync each and flushed with one os.sync() (5 files x 1,000
hosts of fsyncs took 40 of 44 s); then one store transaction records every host and identity.
If it fails, the key files just written are removed again. bench/bulk_enroll.py measures it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from netbootd import model
from netbootd.cli.common import load_config, open_store
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.identity import vault
from netbootd.identity.vault import Vault
from netbootd.model import BulkHost, MacAddress

FIELDS = ("mac", "role", "hostname", "canon", "tags")
MAX_ERRORS = 20


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for every host in the file: CSV with a header line, or JSON (a list of
    objects, or {"hosts": [...]})."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{path}: not valid JSON: {e}") from None
        if isinstance(data, dict) and set(data) == {"hosts"}:
            data = data["hosts"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InvalidInput(f"{path}: JSON must be a list of objects (or {{\"hosts\": [...]}})")
        return [(f"{path.name} entry {i}", r) for i, r in enumerate(data, 1)]
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "mac" not in header or "role" not in header:
        raise InvalidInput(f"{path}: the first line must name the columns, with at least mac "
                           f"and role ({', '.join(FIELDS)})")
    reader.fieldnames = header
    return [(f"{path.name} line {reader.line_num}", r) for r in reader
            if any((v or "").strip() for v in r.values() if isinstance(v, str))]


def _tags(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [model.tag(str(t)) for t in value]
    if isinstance(value, str):
        return [model.tag(t) for t in value.replace(";", " ").replace(",", " ").split()]
    raise InvalidInput(f"tags: {value!r} is not a list or a string")


def validate(rows: list[tuple[str, dict[str, Any]]]) -> list[BulkHost]:
    """Every row as a BulkHost, or one InvalidInput listing (up to 20) bad rows."""
    out: list[BulkHost] = []
    errors: list[str] = []
    macs: dict[MacAddress, str] = {}
    names: dict[str, str] = {}
    for where, row in rows:
        try:
            extra = {k for k in row if k not in FIELDS}
            if extra:
                raise InvalidInput(f"unknown field(s) {', '.join(sorted(map(str, extra)))} "
                                   f"(known: {', '.join(FIELDS)})")
            mac = MacAddress.parse_host(str(row.get("mac") or ""))
            role = model.role_name(str(row.get("role") or ""))
            hn = row.get("hostname") or None
            hostname = model.hostname(str(hn)) if hn else None
            cn = row.get("canon") or None
            canon = model.canon_name(str(cn)) if cn else None
            tags = tuple(sorted(set(_tags(row.get("tags")))))
            if mac in macs:
                raise InvalidInput(f"{mac} is also in {macs[mac]}")
            macs[mac] = where
            if hostname is not None:
                if hostname in names:
                    raise InvalidInput(f"hostname {hostname} is also in {names[hostname]}")
                names[hostname] = where
            out.append(BulkHost(mac, role, hostname, canon, tags))
        except InvalidInput as e:
            errors.append(f"{where}: {e}")
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise InvalidInput("nothing enrolled; fix these rows first:\n  "
                           + "\n  ".join(errors[:MAX_ERRORS]) + more)
    if not out:
        raise InvalidInput("the file names no hosts")
    return out


def enroll_from(args: argparse.Namespace, path: Path) -> int:
    items = validate(read_rows(path))
    cfg = load_config(args)
    store = open_store(cfg)
    known_roles = {r.name for r in store.roles()}
    missing = sorted({it.role for it in items} - known_roles)
    if missing:
        raise InvalidInput(f"nothing enrolled: unknown role(s) {', '.join(missing)} (known: "
                           f"{', '.join(sorted(known_roles)) or 'none yet'})")
    existing = {h.mac: h for h in store.hosts()}
    for it in items:
        if it.hostname is not None:
            other = store.host_by_name(it.hostname)
            if other is not None and other.mac != it.mac:
                raise InvalidInput(f"nothing enrolled: hostname {it.hostname} belongs to "
                                   f"{other.mac} already")
    with_identity = {p.mac for p in store.identities()} if existing else set()
    keys = Vault(cfg.state_dir)
    taken = store.identity_hostids()
    ready: list[BulkHost] = []
    written: list[tuple[MacAddress, str]] = []
    try:
        for it in items:
            if args.no_identity:
                ready.append(it)
            elif it.mac in with_identity:
                ready.append(BulkHost(it.mac, it.role, it.hostname, it.canon, it.tags,
                                      rearm=True))
            else:
                pub = vault.prepare_identity(store, keys, it.mac, it.hostname or it.mac.hyphen,
                                             taken, with_rsa=False, durable=False)
                written.append((it.mac, pub.directory))
                ready.append(BulkHost(it.mac, it.role, it.hostname, it.canon, it.tags, pub))
        if written:
            os.sync()  # every key file on disk before the rows that name them (one flush)
        done = store.enroll_many(ready)
    except (NetbootdError, KeyboardInterrupt, OSError):
        for mac, directory in written:
            keys.remove(mac, directory)
        raise
    created = sum(1 for _, c in done if c)
    print(f"{path.name}: {created} host(s) enrolled, {len(done) - created} updated")
    if written:
        print(f"{len(written)} new identit{'y' if len(written) == 1 else 'ies'} armed (ed25519, "
              "machine-id, hostId, WireGuard now; the RSA host keys are made by `netbootd serve` "
              "in the background, or at first delivery)")
    return 0
