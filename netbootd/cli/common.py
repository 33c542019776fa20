"""What every command group shares: the config and store it opens, host lookup by MAC or
name, durations, time and table formatting. Never exits (errors are NetbootdErrors)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netbootd import model, views
from netbootd.config import Config, load
from netbootd.errors import InvalidInput, NotFound
from netbootd.fmt import printable
from netbootd.identity import hostkeys
from netbootd.model import Host, IdentityPublic
from netbootd.roles.artifacts import Progress
from netbootd.store import Store

SYSTEM_CONFIG = Path("/etc/netbootd/netbootd.toml")
PROGRESS_MIN_BYTES = 32 << 20


def load_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    path = args.config or os.environ.get("NETBOOTD_CONFIG")
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    o = dict(overrides or {})
    if args.state_dir is not None:
        o["state_dir"] = str(args.state_dir)
    return load(Path(path) if path else None, o)


def open_store(cfg: Config, readonly: bool = False) -> Store:
    """The state database. `readonly` for commands that only look: the file is opened
    read-only and a missing state directory is an error (never silently created); a writing
    command that makes the directory says so on stderr."""
    store = Store(cfg.state_dir, readonly=readonly)
    if store.created:
        print(f"netbootd: created state directory {cfg.state_dir}", file=sys.stderr)
    return store


def when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    d = max(0.0, (now or time.time()) - ts)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit} ago"
    return f"{int(d)}s ago"


def table(rows: list[list[str]]) -> str:
    """Aligned columns. Every cell goes through fmt.printable: a cell may hold what a client
    sent (an event's detail), and it must not reach the terminal as escape sequences."""
    rows = [[printable(c, 1000) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def find_host(store: Store, ident: str) -> Host:
    return views.find_host(store, ident)


def hosts_for(store: Store, host: str | None, tag: str | None) -> list[Host]:
    if (host is None) == (tag is None):
        raise InvalidInput("name one host, or a group with --tag T")
    if host is not None:
        return [find_host(store, host)]
    t = model.tag(tag or "")
    hosts = store.hosts(t)
    if not hosts:
        raise NotFound(f"no hosts tagged {t!r}")
    return hosts


def identity_summary(pub: IdentityPublic) -> str:
    return f"ssh-ed25519 {hostkeys.fingerprint(pub.ssh_ed25519)}, hostId {pub.hostid}"


def progress_bar(path: Path) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    label = path.name[:24]
    last = [-1]

    def show(done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        pct = int(done * 100 / total) if total else 100
        if pct == last[0]:
            return
        last[0] = pct
        bar = "#" * (pct // 4)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label:24} [{bar:25}] {pct:3d}% "
                         f"{done / 1e6:.0f}/{total / 1e6:.0f} MB{end}")
        sys.stderr.flush()

    return show


def parse_since(text: str, now: float) -> float:
    """A duration ago (`30m`, `2h`, `1d`, model.duration) or an ISO date/time (UTC unless it
    says otherwise)."""
    try:
        return now - model.duration(text, "--since", unit=True)
    except InvalidInput:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--since: {text!r} is neither a duration (30m, 2h, 1d, 1w) nor an ISO date"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_duration(text: str, what: str) -> float:
    """`90s`, `15m`, `2h`, `7d`, `1w` -> seconds (model.duration, the one parser; a unit is
    required: `--stale 7` is refused, not read as 7 seconds)."""
    return model.duration(text, what, unit=True)
