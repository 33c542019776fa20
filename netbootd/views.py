"""What the listings show, as JSON-ready values computed from the store: `hosts`, `status`,
`role list|show|generations`, `events`, `keys list`. The CLI prints them (as text, or as is with
--json), the admin API answers with them and the remote CLI prints what the API answered with
the same printers -- so a listing reads the same locally and remotely. Reads only; the clock is
passed in. Public key halves only: nothing here ever holds key material."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from netbootd import policy
from netbootd.config import Config
from netbootd.errors import InvalidInput, NotFound
from netbootd.identity import hostkeys
from netbootd.model import Event, Host, HostState, IdentityPublic, Image, MacAddress, Provision
from netbootd.power.settings import BmcSettings
from netbootd.store import Store


def when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def seconds(iso: str | None) -> float | None:
    """when()'s inverse (the printers compute "2h ago" from what a listing carries)."""
    return datetime.fromisoformat(iso).timestamp() if iso else None


def find_host(store: Store, ident: str) -> Host:
    """A host by MAC (any spelling), hostname or canonical name (NotFound if none)."""
    try:
        host = store.host(MacAddress.parse(ident))
    except InvalidInput:
        host = store.host_by_name(ident.strip().lower())
    if host is None:
        raise NotFound(f"no enrolled host {ident!r} (give its MAC, hostname or canonical name)")
    return host


def provision_json(p: Provision | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"state": str(p.state), "armed": when(p.armed), "expires": when(p.expires),
            "boots": p.boots, "max_boots": p.max_boots, "reason": p.reason or None, "via": p.via}


def host_json(store: Store, h: Host, arming: Provision | None, now: float) -> dict[str, Any]:
    role = store.role(h.role)
    pinned = policy.boot_generation(h)
    return {
        "mac": str(h.mac),
        "hostname": h.hostname,
        "canon": h.canon,
        "role": h.role,
        "generation": pinned if pinned is not None else role.current_generation if role else None,
        "pinned": pinned is not None,
        "tags": list(h.tags),
        "enrolled": when(h.created),
        "last_boot": when(h.last_boot),
        "last_boot_ip": h.last_boot_ip,
        "last_provisioned": when(h.last_provisioned),
        "state": str(policy.host_state(arming, now)),
        "provision": provision_json(arming),
    }


def hosts(store: Store, tag: str | None, now: float) -> list[dict[str, Any]]:
    armings = store.provisions()
    return [host_json(store, h, armings.get(h.mac), now) for h in store.hosts(tag)]


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    d = max(0.0, now - ts)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit} ago"
    return f"{int(d)}s ago"


def status(store: Store, now: float, tag: str | None, stale: tuple[str, float] | None,
           stale_deploy: tuple[str, float] | None, failed: bool) -> dict[str, Any]:
    """Counts by state, and the hosts a check lists (with why). `stale`: (as given, seconds)."""
    armings = store.provisions()
    all_hosts = store.hosts(tag)
    listed: list[dict[str, Any]] = []
    states: dict[str, int] = {}
    for h in all_hosts:
        arming = armings.get(h.mac)
        state = policy.host_state(arming, now)
        states[str(state)] = states.get(str(state), 0) + 1
        why = []
        if stale is not None and policy.stale(h.last_boot, h.created, now, stale[1]):
            why.append(f"not booted within {stale[0]} (last boot {ago(h.last_boot, now)})")
        if stale_deploy is not None and policy.stale(h.last_provisioned, h.created, now,
                                                     stale_deploy[1]):
            why.append(f"not provisioned within {stale_deploy[0]} "
                       f"(last provisioned {ago(h.last_provisioned, now)})")
        if failed and state is HostState.FAILED:
            why.append(f"re-provision failed: {arming.reason if arming else '?'}")
        if why:
            listed.append({"mac": str(h.mac), "hostname": h.hostname, "role": h.role,
                           "state": str(state), "last_boot": when(h.last_boot),
                           "last_provisioned": when(h.last_provisioned), "reasons": why})
    return {"hosts": len(all_hosts), "states": states, "listed": listed}


def roles(store: Store, cfg: Config) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in store.roles():
        img = store.image(r.name)
        out.append({
            "name": r.name,
            "generation": r.current_generation,
            "generations": r.generations,
            "kernel": img.kernel.sha256 if img else None,
            "initrds": [a.sha256 for a in img.initrds] if img else [],
            "size": (img.kernel.size + sum(a.size for a in img.initrds)) if img else 0,
            "cmdline": img.cmdline if img else "",
            "created": when(img.created) if img else None,
            "provision_flag": policy.flag_word(r.provision_flag, cfg.provision.flag),
        })
    return out


def generation_json(img: Image, current: int | None, pinned_by: list[str]) -> dict[str, Any]:
    b = img.build
    return {
        "generation": img.generation,
        "current": img.generation == current,
        "pinned_by": pinned_by,
        "created": when(img.created),
        "source": img.source,
        "kernel": img.kernel.sha256,
        "initrds": [a.sha256 for a in img.initrds],
        "size": img.kernel.size + sum(a.size for a in img.initrds),
        "cmdline": img.cmdline,
        "mode": b.mode if b else None,
        "toplevel": b.toplevel_path if b else None,
        "kernel_path": b.kernel_path if b else None,
        "initrd_path": b.initrd_path if b else None,
        "build_seconds": b.build_seconds if b else None,
        "compose_hits": b.compose_hits if b else None,
        "compose_misses": b.compose_misses if b else None,
    }


def generations(store: Store, name: str) -> list[dict[str, Any]]:
    role = store.role(name)
    if role is None:
        raise NotFound(f"unknown role {name!r}")
    pins: dict[int, list[str]] = {}
    for h in store.hosts():
        if h.role == name and h.pinned_generation is not None:
            pins.setdefault(h.pinned_generation, []).append(h.name)
    return [generation_json(i, role.current_generation, pins.get(i.generation, []))
            for i in store.generations(name)]


def role(store: Store, cfg: Config, name: str) -> dict[str, Any]:
    """Everything about one role: generations, flag, boot mode and chain, its hosts."""
    r = store.role(name)
    if r is None:
        raise NotFound(f"unknown role {name!r}")
    boot, chain = store.role_boot(name), store.role_chain(name)
    img = store.image(name)
    users = [h for h in store.hosts() if h.role == name]
    return {
        "name": name, "generation": r.current_generation, "generations": r.generations,
        "provision_flag": policy.flag_word(r.provision_flag, cfg.provision.flag),
        "provision_flag_default": r.provision_flag is None,
        "mode": str(boot.mode),
        "transport": str(chain.transport) if chain.transport else None,
        "http_boot": str(chain.http_boot) if chain.http_boot else None,
        "secure_boot": str(chain.secure_boot),
        "loader": str(chain.loader) if chain.loader else None,
        "current": generation_json(img, r.current_generation, []) if img else None,
        "hosts": [{"mac": str(h.mac), "hostname": h.hostname} for h in users],
    }


def event_json(ev: Event, names: dict[MacAddress, str]) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(ev.time, UTC).isoformat(timespec="milliseconds"),
        "mac": str(ev.mac) if ev.mac else None,
        "host": names.get(ev.mac) if ev.mac else None,
        "event": ev.event,
        "source_ip": ev.source_ip,
        "boot": ev.boot,
        "detail": ev.detail,
    }


def events(store: Store, mac: MacAddress | None, since: float,
           boot: str | None = None) -> list[dict[str, Any]]:
    names = {h.mac: h.name for h in store.hosts()}
    return [event_json(e, names) for e in store.events(mac, since)
            if not boot or (e.boot or "").startswith(boot.strip().lower())]


def identity_json(pub: IdentityPublic) -> dict[str, Any]:
    """The public parts of one identity generation (never a private key)."""
    return {
        "mac": str(pub.mac),
        "generation": pub.generation,
        "created": when(pub.created),
        "ssh_ed25519": pub.ssh_ed25519,
        "ssh_ed25519_fingerprint": hostkeys.fingerprint(pub.ssh_ed25519),
        # None: RSA pending (bulk enrollment; `serve` makes it, or the first delivery does)
        "ssh_rsa_fingerprint": hostkeys.fingerprint(pub.ssh_rsa) if pub.ssh_rsa else None,
        "machine_id": pub.machine_id,
        "hostid": pub.hostid,
        "wireguard_public": pub.wg_public,
        "age_recipient": hostkeys.age_recipient(pub),
    }


def keys(store: Store) -> list[dict[str, Any]]:
    by_mac = {h.mac: h for h in store.hosts()}
    out = []
    for pub in store.identities():
        host = by_mac.get(pub.mac)
        state = store.identity_state(pub.mac)
        out.append(identity_json(pub) | {
            "hostname": host.hostname if host else None,
            "enrolled": host is not None,
            "armed": bool(state and state.armed),
            "every_boot": bool(state and state.every_boot),
        })
    return out


def host_keys(store: Store, host: Host) -> dict[str, Any]:
    state = store.identity_state(host.mac)
    gens = [identity_json(p) | {"current": bool(state and p.generation == state.generation)}
            for p in store.identities(host.mac)]
    return {"host": host.name, "armed": bool(state and state.armed),
            "every_boot": bool(state and state.every_boot), "generations": gens}


def bmc_json(bmc: BmcSettings | None) -> dict[str, Any] | None:
    """A host's BMC settings as shown (CLI `bmc show`, API): the password only as "set"."""
    if bmc is None:
        return None
    return {"kind": str(bmc.kind), "target": bmc.target, "address": bmc.address,
            "port": bmc.port, "user": bmc.user, "password": "set", "ca_file": bmc.ca_file,
            "insecure": bmc.insecure, "changed": when(bmc.changed)}
