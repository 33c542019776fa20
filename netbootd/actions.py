"""What the write commands do, shared by the CLI and the admin API (and so the dashboard):
enroll, unenroll, reprovision, arm an identity, switch and roll back a role. Each validates,
acts through the store (and the vault), and returns an `Outcome`: JSON-ready data and the lines
a person reads -- the CLI prints the lines, the API answers with both, the remote CLI prints
the lines it got, so a command reads the same locally and remotely. No key material is ever in
an Outcome (fingerprints and hostIds only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from netbootd import model, policy, views
from netbootd.config import Config
from netbootd.errors import InvalidInput
from netbootd.identity import hostkeys, vault
from netbootd.identity.vault import Vault
from netbootd.model import Host, IdentityPublic, MacAddress
from netbootd.store import Store

ARMED = "armed: delivered once, over HTTPS, on its next boot"


@dataclass
class Outcome:
    data: dict[str, Any]
    lines: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {"result": self.data, "messages": self.lines}


def identity_summary(pub: IdentityPublic) -> str:
    return f"ssh-ed25519 {hostkeys.fingerprint(pub.ssh_ed25519)}, hostId {pub.hostid}"


def enroll(store: Store, cfg: Config, mac: str, role: str, hostname: str | None,
           canon: str | None, tags: list[str], identity: bool = True) -> Outcome:
    # Validate everything before the store is touched: a bad argument writes nothing.
    m = MacAddress.parse_host(mac)
    r = model.role_name(role)
    hn = model.hostname(hostname) if hostname is not None else None
    cn = model.canon_name(canon) if canon is not None else None
    tg = sorted({model.tag(t) for t in tags})
    host, created, made, rearmed = vault.enroll(store, Vault(cfg.state_dir), m, r, hn, cn, tg,
                                                identity=identity)
    lines = [f"{'enrolled' if created else 'updated'} {host.label} -> role {host.role}"]
    if store.adopt_discovery(host.mac, time.time(), ["first inventory (from its discovery)"]):
        lines.append("its discovered inventory is its first (`netbootd hosts show "
                     f"{host.name}`)")
    if made is not None:
        repaired = "" if created else " (it had none: made now)"
        lines += [f"identity generation {made.generation}{repaired}: {identity_summary(made)}",
                  ARMED]
    elif rearmed:
        pub = store.identity(host.mac)
        assert pub is not None
        lines += [f"identity generation {pub.generation} (kept from before): "
                  f"{identity_summary(pub)}", ARMED]
    return Outcome({"host": views.host_json(store, host, None, 0.0) | {"state": None},
                    "created": created, "identity_made": made is not None}, lines)


def unenroll(store: Store, host: Host) -> Outcome:
    store.unenroll(host.mac)
    lines = [f"unenrolled {host.label}"]
    kept = store.identity(host.mac) is not None
    if kept:
        lines.append("its identity is kept (disarmed); enrolling the MAC again re-arms it, "
                     "`netbootd keys rotate` replaces it")
    return Outcome({"mac": str(host.mac), "identity_kept": kept}, lines)


def reprovision(store: Store, cfg: Config, hosts: list[Host], ttl: float | None,
                max_boots: int | None, cancel: bool, via: str = "cli") -> Outcome:
    if cancel and (ttl is not None or max_boots is not None):
        raise InvalidInput("--cancel takes no --ttl or --max-boots")
    secs = float(cfg.provision.ttl) if ttl is None else ttl
    boots = cfg.provision.max_boots if max_boots is None else max_boots
    if boots < 1:
        raise InvalidInput("--max-boots: at least 1")
    lines: list[str] = []
    data: list[dict[str, Any]] = []
    if cancel:
        gone = {p.mac: p for p in store.cancel_provision([h.mac for h in hosts])}
        for h in hosts:
            p = gone.get(h.mac)
            lines.append(f"{h.name}: re-provision cancelled (was {p.state}, {p.boots} flagged "
                         "boot(s))" if p else f"{h.name}: no re-provision pending")
            data.append({"mac": str(h.mac), "cancelled": p is not None})
        return Outcome({"hosts": data}, lines)
    roles = {r.name: r for r in store.roles()}
    for p in store.arm_provision([h.mac for h in hosts], secs, boots, via=via):
        host = next(h for h in hosts if h.mac == p.mac)
        r = roles.get(host.role)
        word = policy.flag_word(r.provision_flag if r else None, cfg.provision.flag)
        lines.append(f"{host.name}: re-provision armed: `{word}` on its boots until it reports "
                     f"provisioned; at most {p.max_boots} boot(s), until {views.when(p.expires)}")
        data.append({"mac": str(p.mac), "flag": word, "max_boots": p.max_boots,
                     "expires": views.when(p.expires)})
    return Outcome({"hosts": data}, lines)


def arm(store: Store, host: Host, every_boot: bool) -> Outcome:
    vault.current(store, host)
    state = store.arm_identity(host.mac, armed=True, every_boot=every_boot)
    when = "at every boot" if state.every_boot else "once, on its next boot"
    return Outcome({"mac": str(host.mac), "generation": state.generation,
                    "every_boot": state.every_boot},
                   [f"{host.name}: identity generation {state.generation} armed: delivered "
                    f"{when}"])


def switch(store: Store, role: str, generation: int) -> Outcome:
    name = model.role_name(role)
    old, new = store.switch(name, generation)
    return Outcome({"role": name, "from": old, "to": new},
                   [f"role {name}: generation {new} is current (was {old}); hosts get it on "
                    "their next request"])


def rollback(store: Store, role: str) -> Outcome:
    name = model.role_name(role)
    old, new = store.rollback(name)
    return Outcome({"role": name, "from": old, "to": new},
                   [f"role {name}: rolled back from generation {old} to {new}"])
