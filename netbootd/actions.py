"""What the write commands do, shared by the CLI and the admin API (and so the dashboard):
enroll, unenroll, reprovision, arm an identity, switch and roll back a role, and a host's BMC
and power (bmc_set, bmc_remove, power, reboot_for_provision). Each validates,
acts through the store (and the vault), and returns an `Outcome`: JSON-ready data and the lines
a person reads -- the CLI prints the lines, the API answers with both, the remote CLI prints
the lines it got, so a command reads the same locally and remotely. No key material is ever in
an Outcome (fingerprints and hostIds only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netbootd import model, policy, views
from netbootd.config import Config
from netbootd.errors import BmcError, InvalidInput, NotFound
from netbootd.identity import hostkeys, vault
from netbootd.identity.vault import Vault
from netbootd.model import Host, IdentityPublic, MacAddress
from netbootd.power import clients, control, credentials, settings
from netbootd.power.clients import NoAnswer
from netbootd.power.credentials import BmcVault
from netbootd.power.settings import BmcSettings, PowerAction
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


def unenroll(store: Store, cfg: Config, host: Host) -> Outcome:
    had_bmc = store.bmc(host.mac) is not None
    store.unenroll(host.mac)  # its BMC row goes with it (ON DELETE CASCADE)
    lines = [f"unenrolled {host.label}"]
    if had_bmc:
        BmcVault(cfg.state_dir).remove(host.mac)
        lines.append("its BMC settings and password file are removed")
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


# -- BMCs and power (issue 16) --------------------------------------------------------------
# Passwords are read from the operator's file into a `Secret`, written to the BMC vault
# (0600) and read back only by power/control.py; no Outcome, line or event holds one.


def bmc_set(store: Store, cfg: Config, host: Host, ipmi: str | None, redfish: str | None,
            user: str, password_file: Path, ca_file: Path | None = None,
            insecure: bool = False) -> Outcome:
    if (ipmi is None) == (redfish is None):
        raise InvalidInput("give --ipmi ADDR[:PORT] or --redfish URL")
    if ipmi is not None:
        if ca_file is not None or insecure:
            raise InvalidInput("--ca-file and --insecure are for --redfish over HTTPS")
        addr, port = settings.parse_ipmi(ipmi)
        bmc = settings.BmcSettings(host.mac, settings.BmcKind.IPMI, addr, port,
                                   settings.user(user))
        limit = credentials.IPMI_MAX_PASSWORD
    else:
        url = settings.parse_redfish(redfish or "")
        if ca_file is not None and insecure:
            raise InvalidInput("--ca-file or --insecure, not both")
        if (ca_file is not None or insecure) and not url.startswith("https:"):
            raise InvalidInput("--ca-file and --insecure are for https:// Redfish URLs")
        ca = None
        if ca_file is not None:
            if not ca_file.is_file():
                raise InvalidInput(f"--ca-file {ca_file}: no such file")
            ca = str(ca_file.resolve())
        bmc = settings.BmcSettings(host.mac, settings.BmcKind.REDFISH, url, None,
                                   settings.user(user), ca, insecure)
        limit = credentials.MAX_PASSWORD
    password = credentials.read_password_file(password_file, limit)
    BmcVault(cfg.state_dir).write(host.mac, password)  # the file before the row
    saved = store.set_bmc(bmc)
    warn = ["warning: --insecure: the BMC's certificate is not checked"] if insecure else []
    return Outcome({"mac": str(host.mac), "bmc": views.bmc_json(saved)},
                   [f"{host.name}: BMC {saved.target} (user {saved.user}, password set)"] + warn)


def bmc_remove(store: Store, cfg: Config, host: Host) -> Outcome:
    old = store.remove_bmc(host.mac)
    BmcVault(cfg.state_dir).remove(host.mac)
    return Outcome({"mac": str(host.mac), "removed": old.target},
                   [f"{host.name}: BMC {old.target} removed (and its password file)"])


def limits(cfg: Config) -> control.Limits:
    return control.Limits(timeout=cfg.power.timeout, retries=cfg.power.retries)


def _bmc_of(store: Store, host: Host) -> BmcSettings:
    bmc = store.bmc(host.mac)
    if bmc is None:
        raise NotFound(f"{host.name} has no BMC settings (`netbootd bmc set {host.name} "
                       "--ipmi ADDR ...` or `--redfish URL ...`)")
    return bmc


def _power_once(store: Store, cfg: Config, host: Host, bmc: BmcSettings, action: PowerAction,
                via: str, factory: control.ClientFactory) -> str | None:
    """One power action, audited as a `power` event (action, BMC, result, the error; never a
    password). `status` is a read and, like the API's other reads, not recorded: a dashboard
    watching a host would otherwise write an event every 30 s."""
    detail: dict[str, object] = {"action": str(action), "bmc": bmc.target, "via": via}
    audit = action is not PowerAction.STATUS
    try:
        state = control.run(bmc, BmcVault(cfg.state_dir).read(host.mac), action,
                            limits(cfg), factory)
    except BmcError as e:
        if audit:
            store.record_event(host.mac, "power", None,
                               detail | {"result": "error", "error": str(e)[:500]})
        raise
    if audit:
        store.record_event(host.mac, "power", None, detail | {"result": "ok"})
    return state


_DONE = {PowerAction.ON: "power on sent", PowerAction.OFF: "power off sent",
         PowerAction.CYCLE: "power cycle sent",
         PowerAction.BOOT_ONCE_PXE: "next boot (once): PXE"}


def power(store: Store, cfg: Config, host: Host, action: PowerAction, via: str = "cli",
          factory: control.ClientFactory = clients.client) -> Outcome:
    """`power on|off|cycle|status`, `boot-once pxe`: blocking (the API offloads it)."""
    bmc = _bmc_of(store, host)
    state = _power_once(store, cfg, host, bmc, action, via, factory)
    line = (f"{host.name}: power is {state} ({bmc.target})" if action is PowerAction.STATUS
            else f"{host.name}: {_DONE[action]} ({bmc.target})")
    return Outcome({"mac": str(host.mac), "action": str(action), "bmc": bmc.target,
                    "state": state}, [line])


def reboot_for_provision(store: Store, cfg: Config, hosts: list[Host], via: str = "cli",
                         factory: control.ClientFactory = clients.client) -> Outcome:
    """`reprovision --reboot`'s second half, after the flag is armed: next boot PXE (once),
    then a power cycle, per host. A BMC that refuses the boot device (not every BMC offers
    it) is a warning: the cycle still goes, and a host that network-boots first gets its
    flag. A BMC that does not answer fails that host (its flag stays armed)."""
    lines: list[str] = []
    data: list[dict[str, Any]] = []
    for h in hosts:
        bmc = store.bmc(h.mac)
        if bmc is None:
            lines.append(f"{h.name}: not rebooted: no BMC settings (`netbootd bmc set`)")
            data.append({"mac": str(h.mac), "rebooted": False, "error": "no BMC settings"})
            continue
        warning = None
        try:
            try:
                _power_once(store, cfg, h, bmc, PowerAction.BOOT_ONCE_PXE, via, factory)
            except NoAnswer:
                raise
            except BmcError as e:
                warning = f"boot-once PXE refused ({e}); power cycling anyway"
                lines.append(f"{h.name}: warning: {warning}")
            _power_once(store, cfg, h, bmc, PowerAction.CYCLE, via, factory)
        except BmcError as e:
            lines.append(f"{h.name}: NOT rebooted (its flag stays armed): {e}")
            data.append({"mac": str(h.mac), "rebooted": False, "error": str(e)})
            continue
        lines.append(f"{h.name}: next boot PXE, power cycled ({bmc.target})"
                     if warning is None else f"{h.name}: power cycled ({bmc.target})")
        data.append({"mac": str(h.mac), "rebooted": True, "warning": warning})
    return Outcome({"hosts": data, "failed": sum(1 for d in data if not d["rebooted"])}, lines)
