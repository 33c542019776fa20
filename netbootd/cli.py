"""The `netbootd` command. The only place that exits: NetbootdError -> message + status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from netbootd import __version__, model, policy
from netbootd.config import Config, load
from netbootd.errors import InvalidInput, NetbootdError, NotFound
from netbootd.fsutil import write_file
from netbootd.identity import hostkeys, tls, vault
from netbootd.identity.vault import Vault
from netbootd.model import (
    Arch,
    BootClient,
    BootFileNames,
    Event,
    Flag,
    FlagAction,
    Host,
    HostState,
    IdentityOffer,
    IdentityPublic,
    MacAddress,
    Provision,
    Urls,
    https_base,
)
from netbootd.roles.artifacts import Artifacts, Progress, import_role
from netbootd.store import Store

SYSTEM_CONFIG = Path("/etc/netbootd/netbootd.toml")
PROGRESS_MIN_BYTES = 32 << 20


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    path = args.config or os.environ.get("NETBOOTD_CONFIG")
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    o = dict(overrides or {})
    if args.state_dir is not None:
        o["state_dir"] = str(args.state_dir)
    return load(Path(path) if path else None, o)


def _store(cfg: Config) -> Store:
    return Store(cfg.state_dir)


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    d = max(0.0, (now or time.time()) - ts)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit} ago"
    return f"{int(d)}s ago"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _find_host(store: Store, ident: str) -> Host:
    try:
        host = store.host(MacAddress.parse(ident))
    except InvalidInput:
        host = store.host_by_name(ident.strip().lower())
    if host is None:
        raise NotFound(f"no enrolled host {ident!r} (give its MAC, hostname or canonical name)")
    return host


def _progress_bar(path: Path) -> Progress | None:
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
        sys.stderr.write(f"\r{label:24} [{bar:25}] {pct:3d}% {done / 1e6:.0f}/{total / 1e6:.0f} MB{end}")
        sys.stderr.flush()

    return show


# -- commands ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from netbootd.app import Netbootd

    overrides: dict[str, Any] = {
        "interface": args.interface,
        "advertise_address": args.advertise_address,
        "http.port": args.http_port,
        "https.port": args.https_port,
        "tftp.port": args.tftp_port,
        "tftp.root": args.tftp_root,
    }
    if args.no_dhcp:
        overrides["dhcp.enabled"] = False
    if args.no_tftp:
        overrides["tftp.enabled"] = False
    if args.no_https:
        overrides["https.enabled"] = False
    cfg = _config(args, overrides)
    logging.basicConfig(
        level="DEBUG" if args.verbose else cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("scapy", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    daemon = Netbootd.build(cfg)
    asyncio.run(daemon.run())
    return 0


def cmd_role_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    flag = model.provision_flag(args.provision_flag) if args.provision_flag else None
    store = _store(cfg)
    image = import_role(
        store,
        Artifacts(cfg.state_dir),
        args.name,
        Path(args.kernel),
        [Path(p) for p in args.initrd],
        args.cmdline or "",
        progress=_progress_bar,
    )
    print(
        f"role {image.role}: generation {image.generation} is current "
        f"(kernel {image.kernel.sha256[:12]}, {len(image.initrds)} initrd(s))"
    )
    if flag is not None:
        store.set_provision_flag(image.role, flag)
        print(f"role {image.role}: re-provision flag {flag}")
    return 0


def cmd_role_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    out: list[dict[str, Any]] = []
    for r in store.roles():
        img = store.image(r.name)
        out.append(
            {
                "name": r.name,
                "generation": r.current_generation,
                "generations": r.generations,
                "kernel": img.kernel.sha256 if img else None,
                "initrds": [a.sha256 for a in img.initrds] if img else [],
                "size": (img.kernel.size + sum(a.size for a in img.initrds)) if img else 0,
                "cmdline": img.cmdline if img else "",
                "created": _when(img.created) if img else None,
                "provision_flag": policy.flag_word(r.provision_flag, cfg.provision.flag),
            }
        )
    if args.json:
        print(json.dumps(out, indent=2))
    elif not out:
        print("no roles yet: netbootd role add <name> --kernel FILE --initrd FILE")
    else:
        rows = [["ROLE", "GEN", "SIZE", "KERNEL", "CMDLINE"]]
        for o in out:
            rows.append(
                [
                    o["name"],
                    f"{o['generation']}/{o['generations']}",
                    f"{o['size'] / 1e6:.1f} MB",
                    (o["kernel"] or "")[:12],
                    o["cmdline"],
                ]
            )
        print(_table(rows))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    # Validate everything before the store is touched: a bad argument writes nothing.
    mac = MacAddress.parse(args.mac)
    role = model.role_name(args.role)
    hostname = model.hostname(args.hostname) if args.hostname is not None else None
    canon = model.canon_name(args.canon) if args.canon is not None else None
    tags = sorted({model.tag(t) for t in args.tag or []})
    cfg = _config(args)
    store = _store(cfg)
    host, created = store.enroll(mac, role, hostname, canon, tags)
    verb = "enrolled" if created else "updated"
    print(f"{verb} {host.mac} ({host.name}) -> role {host.role}")
    if not created or args.no_identity:
        return 0
    # A new host gets an identity, armed: handed out once, on its next boot.
    pub = store.identity(host.mac)
    if pub is None:
        pub = vault.create_identity(store, Vault(cfg.state_dir), host, arm=True, event="keys-generated")
        print(f"identity generation {pub.generation}: {_identity_summary(pub)}")
    else:
        store.arm_identity(host.mac, armed=True)
        print(f"identity generation {pub.generation} (kept from before): {_identity_summary(pub)}")
    print("armed: delivered once, over HTTPS, on its next boot")
    return 0


def _identity_summary(pub: IdentityPublic) -> str:
    return f"ssh-ed25519 {hostkeys.fingerprint(pub.ssh_ed25519)}, hostId {pub.hostid}"


def cmd_unenroll(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    host = _find_host(store, args.host)
    store.unenroll(host.mac)
    print(f"unenrolled {host.mac} ({host.name})")
    if store.identity(host.mac) is not None:
        print("its identity is kept (disarmed); enrolling the MAC again re-arms it, "
              "`netbootd keys rotate` replaces it")
    return 0


# -- keys, tls, events ------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    host = _find_host(store, args.host)
    vault.check_new(store, host)
    pub = vault.create_identity(store, Vault(cfg.state_dir), host, arm=not args.no_arm,
                             event="keys-generated")
    print(f"{host.name}: identity generation {pub.generation}: {_identity_summary(pub)}")
    print("armed: delivered once on its next boot" if not args.no_arm else
          f"not armed: `netbootd keys arm {host.name}` when it should get it")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    host = _find_host(store, args.host)
    old = vault.current(store, host)
    pub = vault.create_identity(store, Vault(cfg.state_dir), host, arm=True, event="keys-rotated")
    print(f"{host.name}: identity generation {pub.generation} replaces {old.generation} "
          f"(kept in the state directory): {_identity_summary(pub)}")
    print("armed: delivered once on its next boot; update known_hosts and age recipients")
    return 0


def cmd_keys_arm(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    host = _find_host(store, args.host)
    vault.current(store, host)
    state = store.arm_identity(host.mac, armed=True, every_boot=args.every_boot)
    when = "at every boot" if state.every_boot else "once, on its next boot"
    print(f"{host.name}: identity generation {state.generation} armed: delivered {when}")
    return 0


def cmd_keys_disarm(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    host = _find_host(store, args.host)
    vault.current(store, host)
    state = store.arm_identity(host.mac, armed=False)
    print(f"{host.name}: identity generation {state.generation} disarmed")
    return 0


def _key_rows(store: Store) -> list[dict[str, Any]]:
    hosts = {h.mac: h for h in store.hosts()}
    out = []
    for pub in store.identities():
        host = hosts.get(pub.mac)
        state = store.identity_state(pub.mac)
        out.append(_pub_json(pub) | {
            "hostname": host.hostname if host else None,
            "enrolled": host is not None,
            "armed": bool(state and state.armed),
            "every_boot": bool(state and state.every_boot),
        })
    return out


def _pub_json(pub: IdentityPublic) -> dict[str, Any]:
    return {
        "mac": str(pub.mac),
        "generation": pub.generation,
        "created": _when(pub.created),
        "ssh_ed25519": pub.ssh_ed25519,
        "ssh_ed25519_fingerprint": hostkeys.fingerprint(pub.ssh_ed25519),
        "ssh_rsa_fingerprint": hostkeys.fingerprint(pub.ssh_rsa),
        "machine_id": pub.machine_id,
        "hostid": pub.hostid,
        "wireguard_public": pub.wg_public,
        "age_recipient": hostkeys.age_recipient(pub),
    }


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    if args.host:
        host = _find_host(store, args.host)
        state = store.identity_state(host.mac)
        gens = [_pub_json(p) | {"current": bool(state and p.generation == state.generation)}
                for p in store.identities(host.mac)]
        if args.json:
            print(json.dumps({"host": host.name, "armed": bool(state and state.armed),
                              "every_boot": bool(state and state.every_boot),
                              "generations": gens}, indent=2))
        elif not gens:
            print(f"{host.name} has no identity: netbootd keys generate {host.name}")
        else:
            arming = "armed (every boot)" if state and state.every_boot else \
                "armed" if state and state.armed else "not armed"
            print(f"{host.name} ({host.mac}): {arming}")
            for g in gens:
                mark = "*" if g["current"] else " "
                print(f"{mark} generation {g['generation']}  {g['created']}  ed25519 "
                      f"{g['ssh_ed25519_fingerprint']}  rsa {g['ssh_rsa_fingerprint']}")
                print(f"    machine-id {g['machine_id']}  hostId {g['hostid']}  "
                      f"wireguard {g['wireguard_public']}")
        return 0
    rows_json = _key_rows(store)
    if args.json:
        print(json.dumps(rows_json, indent=2))
        return 0
    if not rows_json:
        print("no identities yet: `netbootd enroll` makes one, or `netbootd keys generate <host>`")
        return 0
    rows = [["HOST", "GEN", "ARMED", "ED25519", "HOSTID", "WIREGUARD"]]
    for r in rows_json:
        armed = "every-boot" if r["every_boot"] else "yes" if r["armed"] else "no"
        rows.append([r["hostname"] or r["mac"], str(r["generation"]), armed,
                     r["ssh_ed25519_fingerprint"], r["hostid"], r["wireguard_public"]])
    print(_table(rows))
    return 0


def _export(store: Store, what: str, as_json: bool, age1: bool) -> str:
    entries = []
    for host in store.hosts():
        pub = store.identity(host.mac)
        if pub is not None:
            entries.append((host, pub))
    if what in ("known_hosts", "known-hosts"):
        if as_json:
            raise InvalidInput("known_hosts has no --json form")
        return hostkeys.known_hosts([(h, p, store.last_seen_ip(h.mac)) for h, p in entries])
    recipient = hostkeys.age_x25519_recipient if age1 else hostkeys.age_recipient
    if as_json:
        return json.dumps({h.name: recipient(p) for h, p in entries}, indent=2) + "\n"
    lines = ["# netbootd age recipients (one per host; `age -R` reads this file)"]
    for h, p in entries:
        lines.append(f"# {h.name} ({h.mac}), identity generation {p.generation}")
        lines.append(recipient(p))
    return "\n".join(lines) + "\n"


def cmd_keys_export(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    text = _export(store, args.what, args.json, args.age1)
    if args.output:
        out = Path(args.output)
        write_file(out, text.encode(), 0o644)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_tls_show(args: argparse.Namespace) -> int:
    cfg = _config(args)
    i = tls.info(cfg.state_dir)
    data = {
        "pin": i.pin,
        "subject": i.subject,
        "subject_alt_names": list(i.sans),
        "not_after": i.not_after.isoformat(timespec="seconds"),
        "ca_subject": i.ca_subject,
        "ca_sha256": i.ca_sha256,
        "ca_cert": str(tls.ca_cert_path(cfg.state_dir)),
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:18} {', '.join(v) if isinstance(v, list) else v}")
    return 0


def cmd_tls_rotate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    addresses = [str(cfg.advertise_address)] if cfg.advertise_address else []
    pin = tls.rotate(cfg.state_dir, ca=args.ca, addresses=addresses)
    print(f"new HTTPS {'CA and ' if args.ca else ''}server key; pin {pin}")
    print("a running `netbootd serve` uses it from its next connection; scripts carry the new pin")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """`30s`, `15m`, `2h`, `1d`, `1w` ago, or an ISO date/time (UTC unless it says otherwise)."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", text)
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--since: {text!r} is neither a duration (30m, 2h, 1d, 1w) nor an ISO date"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _event_json(ev: Event, names: dict[MacAddress, str]) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(ev.time, UTC).isoformat(timespec="milliseconds"),
        "mac": str(ev.mac) if ev.mac else None,
        "host": names.get(ev.mac) if ev.mac else None,
        "event": ev.event,
        "source_ip": ev.source_ip,
        "boot": ev.boot,
        "detail": ev.detail,
    }


def cmd_events(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    since = parse_since(args.since, time.time()) if args.since else 0.0
    mac = None
    if args.host:
        try:
            mac = _find_host(store, args.host).mac
        except NotFound:
            try:
                mac = MacAddress.parse(args.host)  # a host unenrolled since keeps its history
            except InvalidInput:
                raise NotFound(f"no enrolled host {args.host!r} (give its MAC, hostname or "
                               "canonical name)") from None
    names = {h.mac: h.name for h in store.hosts()}
    events = [_event_json(e, names) for e in store.events(mac, since)
              if not args.boot or (e.boot or "").startswith(args.boot.strip().lower())]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print("no events" + (f" since {args.since}" if args.since else ""))
        return 0
    rows = [["TIME", "HOST", "EVENT", "FROM", "BOOT", "DETAIL"]]
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
        rows.append([e["time"][:19] + "Z", e["host"] or e["mac"] or "-", e["event"],
                     e["source_ip"] or "-", e["boot"] or "-", detail])
    print(_table(rows))
    return 0


def _host_json(store: Store, h: Host, arming: Provision | None = None,
               now: float | None = None) -> dict[str, Any]:
    role = store.role(h.role)
    pinned = policy.boot_generation(h)
    now = time.time() if now is None else now
    return {
        "mac": str(h.mac),
        "hostname": h.hostname,
        "canon": h.canon,
        "role": h.role,
        "generation": pinned if pinned is not None else role.current_generation if role else None,
        "pinned": pinned is not None,
        "tags": list(h.tags),
        "enrolled": _when(h.created),
        "last_boot": _when(h.last_boot),
        "last_boot_ip": h.last_boot_ip,
        "last_provisioned": _when(h.last_provisioned),
        "state": str(policy.host_state(arming, now)),
        "provision": _provision_json(arming),
    }


def _provision_json(p: Provision | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"state": str(p.state), "armed": _when(p.armed), "expires": _when(p.expires),
            "boots": p.boots, "max_boots": p.max_boots, "reason": p.reason or None, "via": p.via}


def _state_text(h: dict[str, Any]) -> str:
    p = h["provision"]
    if h["state"] in ("provisioning", "armed") and p:
        return f"{h['state']} ({p['boots']}/{p['max_boots']})"
    return str(h["state"])


def cmd_hosts(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    tag = model.tag(args.tag) if args.tag else None
    armings, now = store.provisions(), time.time()
    hosts = [_host_json(store, h, armings.get(h.mac), now) for h in store.hosts(tag)]
    if args.json:
        print(json.dumps(hosts, indent=2))
        return 0
    if not hosts:
        print("no hosts enrolled: netbootd enroll <mac> <role>")
        return 0
    rows = [["MAC", "HOSTNAME", "ROLE", "GEN", "STATE", "TAGS", "LAST BOOT", "LAST PROVISIONED"]]
    for h, raw in zip(hosts, store.hosts(tag)):
        rows.append(
            [
                h["mac"],
                h["hostname"] or "-",
                h["role"],
                str(h["generation"] or "-"),
                _state_text(h),
                ",".join(h["tags"]) or "-",
                _ago(raw.last_boot, now) + (f" from {raw.last_boot_ip}" if raw.last_boot_ip else ""),
                _ago(raw.last_provisioned, now),
            ]
        )
    print(_table(rows))
    failed = [h for h in hosts if h["state"] == "failed"]
    for h in failed:
        print(f"{h['hostname'] or h['mac']}: re-provision FAILED: {h['provision']['reason']}; "
              "`netbootd reprovision` arms it again, `--cancel` clears it", file=sys.stderr)
    return 0


# -- re-provisioning, status ------------------------------------------------------------------


def parse_duration(text: str, what: str) -> float:
    """`90s`, `15m`, `2h`, `7d`, `1w` -> seconds."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", text or "")
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(f"{what}: {text!r} is not a duration (e.g. 90s, 30m, 2h, 7d, 1w)")
    return float(int(m.group(1)) * _UNITS[m.group(2)])


def _hosts_for(store: Store, host: str | None, tag: str | None) -> list[Host]:
    if (host is None) == (tag is None):
        raise InvalidInput("name one host, or a group with --tag T")
    if host is not None:
        return [_find_host(store, host)]
    t = model.tag(tag or "")
    hosts = store.hosts(t)
    if not hosts:
        raise NotFound(f"no hosts tagged {t!r}")
    return hosts


def cmd_reprovision(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    if args.cancel and (args.ttl or args.max_boots is not None):
        raise InvalidInput("--cancel takes no --ttl or --max-boots")
    ttl = parse_duration(args.ttl, "--ttl") if args.ttl else float(cfg.provision.ttl)
    max_boots = cfg.provision.max_boots if args.max_boots is None else args.max_boots
    if max_boots < 1:
        raise InvalidInput("--max-boots: at least 1")
    hosts = _hosts_for(store, args.host, args.tag)
    names = {h.mac: h.name for h in hosts}
    if args.cancel:
        gone = {p.mac: p for p in store.cancel_provision([h.mac for h in hosts])}
        for h in hosts:
            p = gone.get(h.mac)
            print(f"{h.name}: re-provision cancelled (was {p.state}, {p.boots} flagged boot(s))"
                  if p else f"{h.name}: no re-provision pending")
        return 0
    roles = {r.name: r for r in store.roles()}
    for p in store.arm_provision([h.mac for h in hosts], ttl, max_boots):
        host = next(h for h in hosts if h.mac == p.mac)
        r = roles.get(host.role)
        word = policy.flag_word(r.provision_flag if r else None, cfg.provision.flag)
        print(f"{names[p.mac]}: re-provision armed: `{word}` on its boots until it reports "
              f"provisioned; at most {p.max_boots} boot(s), until {_when(p.expires)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _store(cfg)
    now = time.time()
    stale_boot = parse_duration(args.stale, "--stale") if args.stale else None
    stale_deploy = parse_duration(args.stale_deploy, "--stale-deploy") if args.stale_deploy else None
    tag = model.tag(args.tag) if args.tag else None
    armings = store.provisions()
    hosts = store.hosts(tag)
    listed: list[dict[str, Any]] = []
    states: dict[str, int] = {}
    for h in hosts:
        arming = armings.get(h.mac)
        state = policy.host_state(arming, now)
        states[str(state)] = states.get(str(state), 0) + 1
        why = []
        if stale_boot is not None and policy.stale(h.last_boot, h.created, now, stale_boot):
            why.append(f"not booted within {args.stale} (last boot {_ago(h.last_boot, now)})")
        if stale_deploy is not None and policy.stale(h.last_provisioned, h.created, now,
                                                     stale_deploy):
            why.append(f"not provisioned within {args.stale_deploy} "
                       f"(last provisioned {_ago(h.last_provisioned, now)})")
        if args.failed and state is HostState.FAILED:
            why.append(f"re-provision failed: {arming.reason if arming else '?'}")
        if why:
            listed.append({"mac": str(h.mac), "hostname": h.hostname, "role": h.role,
                           "state": str(state), "last_boot": _when(h.last_boot),
                           "last_provisioned": _when(h.last_provisioned), "reasons": why})
    if args.json:
        print(json.dumps({"hosts": len(hosts), "states": states, "listed": listed}, indent=2))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        print(f"{len(hosts)} host(s){f' tagged {tag}' if tag else ''}: {summary}")
        for item in listed:
            print(f"{item['hostname'] or item['mac']} ({item['mac']}, role {item['role']}): "
                  + "; ".join(item["reasons"]))
        checked = stale_boot is not None or stale_deploy is not None or args.failed
        if checked and not listed:
            print("nothing stale" + (" or failed" if args.failed else ""))
    return 1 if listed else 0


def cmd_role_set(args: argparse.Namespace) -> int:
    cfg = _config(args)
    name = model.role_name(args.name)
    if args.provision_flag is None and not args.default_provision_flag:
        raise InvalidInput("nothing to set: --provision-flag WORD or --default-provision-flag")
    if args.provision_flag is not None and args.default_provision_flag:
        raise InvalidInput("--provision-flag and --default-provision-flag exclude each other")
    flag = model.provision_flag(args.provision_flag) if args.provision_flag is not None else None
    role = _store(cfg).set_provision_flag(name, flag)
    print(f"role {role.name}: re-provision flag "
          f"{policy.flag_word(role.provision_flag, cfg.provision.flag)}"
          + ("" if role.provision_flag else " (the default, provision.flag)"))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from netbootd.codec import dhcp as dhcp_codec
    from netbootd.codec.ipxe import ScriptRenderer

    mac = MacAddress.parse(args.mac)
    arch = Arch(args.arch)
    cfg = _config(args, {"advertise_address": args.advertise_address})
    store = _store(cfg)
    server = cfg.advertise_address
    if server is None and cfg.interface:
        from netbootd.app import interface_ipv4

        server = interface_ipv4(cfg.interface)
    if server is None:
        print("note: no advertise_address/interface configured; the server fills in the address")
        print("      each request arrived on. Shown here as 0.0.0.0 / <server>.\n")
        urls = Urls(f"http://<server>:{cfg.http.port}")
        server = IPv4Address("0.0.0.0")
    else:
        urls = Urls.for_address(server, cfg.http.port)
    files = BootFileNames(**cfg.boot_files.model_dump())
    host = store.host(mac)
    if host is None:
        print(f"{mac}: not enrolled")
    else:
        print(f"{mac}: {host.name}, role {host.role}, tags {','.join(host.tags) or '-'}, "
              f"last boot {_ago(host.last_boot)}")
    stages = [(f"firmware PXE ({arch})", BootClient(mac, arch, ipxe=False))]
    if arch is not Arch.HTTP:
        stages.append((f"iPXE ({arch})", BootClient(mac, arch, ipxe=True)))
    for title, client in stages:
        print(f"\n== {title}: DHCP DISCOVER on port {cfg.dhcp.port} ==")
        boot = policy.dhcp_boot(host, client, server, urls, files)
        if boot is None:
            reason = "not enrolled (unknown_policy=ignore)" if host is None else "no boot file for this arch"
            print(f"no reply: {reason}")
            continue
        req = dhcp_codec.synthetic_request(client, "dhcp")
        reply = dhcp_codec.build_reply(req, boot, server, "dhcp")
        print(f"proxyDHCP reply ({boot.reason}):")
        for k, v in dhcp_codec.reply_summary(reply):
            print(f"  {k:20} {v}")
    print(f"\n== iPXE script: GET /boot/{mac.hyphen}.ipxe ==")
    renderer = ScriptRenderer(cfg.templates_dir)
    if host is None:
        print("HTTP 404")
        print(renderer.unknown_script(mac), end="")
        return 0
    image = store.image(host.role, policy.boot_generation(host))
    if image is None:
        raise NotFound(f"role {host.role!r} has no image")
    offer = None
    state = store.identity_state(host.mac)
    if state is not None and state.armed and cfg.https.enabled:
        try:
            pin = tls.info(cfg.state_dir).pin
        except NetbootdError:
            pin = "sha256//<made-on-first-serve>"
        where = "<server>" if str(server) == "0.0.0.0" else str(server)
        base = https_base(where, cfg.https.port)
        offer = IdentityOffer(f"{base}/identity/<per-boot-token>", pin)
    # What the next boot gets, decided by the same policy the server asks (nothing is counted).
    role = store.role(host.role)
    arming = store.provision(host.mac)
    decision = policy.provision_flag(arming, time.time())
    flag = Flag(policy.flag_word(role.provision_flag if role else None, cfg.provision.flag),
                       decision.action is FlagAction.SERVE)
    from netbootd.lookup import stem_inputs

    stem = stem_inputs(store, cfg, host, None if str(server) == "0.0.0.0" else str(server))
    plan = policy.boot_plan(host, image, urls, offer, "<boot-token>", flag, stem)
    if plan.mode is not model.BootMode.RAMDISK:
        print(f"(role {host.role} boots {plan.mode})")
    print(renderer.host_script(plan), end="")
    if offer is not None:
        print("\n(identity armed: each served script carries a fresh single-use token, bound to "
              "the MAC and the address that fetched it)")
    if arming is not None:
        print(f"\n(re-provision: {decision.reason}; {flag.word} "
              f"{'is' if flag.on else 'is not'} on the next boot's command line)")
    return 0


# -- NixOS roles, generations, gc, static stores -------------------------------------------


def cmd_role_build(args: argparse.Namespace) -> int:
    from netbootd.roles.build import build_role
    from netbootd.roles.nixbuild import Attrs, Source

    source = Source.parse(args.flake, args.file, args.attr)
    attrs = Attrs(
        kernel=args.kernel_attr or Attrs.kernel,
        netboot_initrd=args.initrd_attr or Attrs.netboot_initrd,
        stage1_initrd=args.initrd_attr or Attrs.stage1_initrd,
        toplevel=args.toplevel_attr or Attrs.toplevel,
        kernel_params=args.kernel_params_attr or Attrs.kernel_params,
        kernel_file=args.kernel_file or Attrs.kernel_file,
        initrd_file=args.initrd_file or Attrs.initrd_file,
    ).check()
    cfg = _config(args)
    flag = model.provision_flag(args.provision_flag) if args.provision_flag else None
    store = _store(cfg)

    def log(line: str) -> None:  # Nix's progress and netbootd's steps, as they happen
        print(line, file=sys.stderr, flush=True)

    r = build_role(store, cfg.state_dir, args.name, source, mode=args.mode, attrs=attrs,
                   cmdline=args.cmdline or "", keep=args.keep, compression=args.compression,
                   log=log)
    img = r.image
    assert img.build is not None
    print(f"role {img.role}: generation {img.generation} is current ({img.build.mode} initrd, "
          f"built in {img.build.build_seconds:.1f}s from {img.source})")
    if r.compose is not None:
        print(f"composed initrd: {r.compose.summary()}")
    if flag is not None:
        store.set_provision_flag(img.role, flag)
        print(f"role {img.role}: re-provision flag {flag}")
    return 0


def _gen_json(img: model.Image, current: int | None, pinned_by: list[str]) -> dict[str, Any]:
    b = img.build
    return {
        "generation": img.generation,
        "current": img.generation == current,
        "pinned_by": pinned_by,
        "created": _when(img.created),
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


def cmd_role_generations(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    name = model.role_name(args.name)
    role = store.role(name)
    if role is None:
        raise NotFound(f"unknown role {name!r}")
    pins: dict[int, list[str]] = {}
    for h in store.hosts():
        if h.role == name and h.pinned_generation is not None:
            pins.setdefault(h.pinned_generation, []).append(h.name)
    gens = [_gen_json(i, role.current_generation, pins.get(i.generation, []))
            for i in store.generations(name)]
    if args.json:
        print(json.dumps(gens, indent=2))
        return 0
    rows = [["", "GEN", "CREATED", "SIZE", "MODE", "BUILD", "SOURCE", "PINNED BY"]]
    for g in gens:
        rows.append(["*" if g["current"] else "", str(g["generation"]), g["created"] or "-",
                     f"{g['size'] / 1e6:.1f} MB", g["mode"] or "import",
                     f"{g['build_seconds']:.1f}s" if g["build_seconds"] is not None else "-",
                     g["source"], ",".join(g["pinned_by"]) or "-"])
    print(_table(rows))
    return 0


def cmd_role_switch(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    old, new = store.switch(model.role_name(args.name), args.generation)
    print(f"role {args.name}: generation {new} is current (was {old}); hosts get it on their "
          "next request")
    return 0


def cmd_role_rollback(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    old, new = store.rollback(model.role_name(args.name))
    print(f"role {args.name}: rolled back from generation {old} to {new}")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    if (args.generation is None) == (not args.none):
        raise InvalidInput("give a generation number, or --none to follow the role's current one")
    store = _store(_config(args))
    host = _find_host(store, args.host)
    host = store.pin(host.mac, None if args.none else args.generation)
    if host.pinned_generation is None:
        print(f"{host.name}: follows role {host.role}'s current generation")
    else:
        print(f"{host.name}: pinned to generation {host.pinned_generation} of role {host.role}")
    return 0


def cmd_images_gc(args: argparse.Namespace) -> int:
    from netbootd.fmt import human_size
    from netbootd.roles.artifacts import gc

    cfg = _config(args)
    store = _store(cfg)
    pruned: dict[str, list[int]] = {}
    if args.keep is not None and not args.dry_run:
        for r in store.roles():
            gone = store.prune(r.name, args.keep)
            if gone:
                pruned[r.name] = gone
    rep = gc(store, cfg.state_dir, grace=args.grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({
            "pruned": pruned, "artifacts": rep.artifacts, "artifact_bytes": rep.artifact_bytes,
            "cache_entries": rep.cache_entries, "cache_bytes": rep.cache_bytes,
            "temp_files": rep.temp_files, "kept_young": rep.kept_young, "freed": rep.freed,
            "dry_run": args.dry_run,
        }, indent=2))
        return 0
    for role, gens in pruned.items():
        print(f"role {role}: forgot generations {', '.join(map(str, gens))}")
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {human_size(rep.freed)}: {len(rep.artifacts)} artifact(s) "
          f"({human_size(rep.artifact_bytes)}), {len(rep.cache_entries)} compose-cache "
          f"entr{'y' if len(rep.cache_entries) == 1 else 'ies'} ({human_size(rep.cache_bytes)}), "
          f"{rep.temp_files} temp file(s)")
    if rep.kept_young:
        print(f"kept {rep.kept_young} unreferenced file(s) younger than {args.grace:.0f}s")
    return 0


def cmd_build_image(args: argparse.Namespace) -> int:
    from netbootd.roles import static_export

    cfg = _config(args)
    store = _store(cfg)
    role = model.role_name(args.role)
    if args.mac is not None:
        subdir = f"by-mac/{MacAddress.parse(args.mac).hyphen}"
    else:
        subdir = f"by-canon/{model.canon_name(args.canon)}"
    image = store.image(role, args.generation)
    if image is None:
        what = f"generation {args.generation}" if args.generation is not None else "an image"
        raise NotFound(f"role {role!r} has no {what}")
    out = static_export.write(Path(args.store), subdir, image, Artifacts(cfg.state_dir),
                            args.cmdline or "")
    print(f"wrote {out}/ (kernel, initrd, netboot.ipxe): role {role} generation "
          f"{image.generation}")
    return 0


# -- argument parsing -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd", description="Network-boot and provisioning server.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}")
    p.add_argument("--state-dir", type=Path, help="state directory (env NETBOOTD_STATE_DIR; "
                   "default /var/lib/netbootd)")
    p.add_argument("--config", type=Path, help="TOML config file (env NETBOOTD_CONFIG; "
                   f"default {SYSTEM_CONFIG} if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxyDHCP, TFTP and HTTP servers")
    s.add_argument("--interface", help="network interface to serve on (its IPv4 is advertised)")
    s.add_argument("--advertise-address", help="IPv4 address clients reach netbootd at")
    s.add_argument("--http-port", type=int)
    s.add_argument("--https-port", type=int, help="HTTPS port (identity bundles); default 443 "
                   "as root, else 8443")
    s.add_argument("--no-https", action="store_true",
                   help="no HTTPS: host identities are then not offered")
    s.add_argument("--tftp-port", type=int)
    s.add_argument("--tftp-root", help="directory with iPXE binaries (default /usr/lib/ipxe)")
    s.add_argument("--no-dhcp", action="store_true", help="do not run the proxyDHCP responder")
    s.add_argument("--no-tftp", action="store_true", help="do not run the TFTP server")
    s.set_defaults(func=cmd_serve)

    role = sub.add_parser("role", help="manage roles (what a host boots)")
    rsub = role.add_subparsers(dest="role_command", required=True, metavar="SUBCOMMAND")
    ra = rsub.add_parser("add", help="import a kernel and initrd(s) as a new generation of a role")
    ra.add_argument("name")
    ra.add_argument("--kernel", required=True)
    ra.add_argument("--initrd", required=True, action="append", help="repeat for several")
    ra.add_argument("--cmdline", default="", help="kernel command line")
    ra.add_argument("--provision-flag", help="the role's re-provision flag (e.g. "
                    "homelab.provision_disks=true); default: provision.flag")
    ra.set_defaults(func=cmd_role_add)
    rl = rsub.add_parser("list", help="list roles")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_role_list)
    rb = rsub.add_parser("build", help="build a NixOS configuration into a new generation")
    rb.add_argument("name")
    rb.add_argument("--flake", help="<flake ref>#<name>: nixosConfigurations.<name>")
    rb.add_argument("--file", help="a Nix file (with --attr), like nix-build -f FILE -A ATTR")
    rb.add_argument("--attr", help="the configuration's attribute path in --file")
    rb.add_argument("--mode", choices=["netboot", "compose"], default="netboot",
                    help="netboot: NixOS's netbootRamdisk as is; compose: initialRamdisk + one "
                    "cached archive per store path of the toplevel's closure (default netboot)")
    rb.add_argument("--cmdline", default="", help="appended to init=... and boot.kernelParams")
    rb.add_argument("--keep", type=int, default=5, help="generations kept (default 5)")
    rb.add_argument("--compression", choices=["gzip", "xz", "none"], default="gzip",
                    help="of the composed per-path archives (default gzip)")
    rb.add_argument("--provision-flag", help="the role's re-provision flag (e.g. "
                    "homelab.provision_disks=true); default: provision.flag")
    for opt, default in (("kernel-attr", "config.system.build.kernel"),
                         ("initrd-attr", "config.system.build.netbootRamdisk or .initialRamdisk"),
                         ("toplevel-attr", "config.system.build.toplevel"),
                         ("kernel-params-attr", "config.boot.kernelParams"),
                         ("kernel-file", "bzImage"), ("initrd-file", "initrd")):
        rb.add_argument(f"--{opt}", help=f"default {default}")
    rb.set_defaults(func=cmd_role_build)
    rg = rsub.add_parser("generations", help="a role's generations (* current)")
    rg.add_argument("name")
    rg.add_argument("--json", action="store_true")
    rg.set_defaults(func=cmd_role_generations)
    rs = rsub.add_parser("switch", help="make a generation current (atomic)")
    rs.add_argument("name")
    rs.add_argument("--generation", type=int, required=True)
    rs.set_defaults(func=cmd_role_switch)
    rr = rsub.add_parser("rollback", help="make the previous generation current")
    rr.add_argument("name")
    rr.set_defaults(func=cmd_role_rollback)
    from netbootd import cli_stemcell  # role mode, nfs ..., iscsi ...

    cli_stemcell.register(sub, rsub)
    rt = rsub.add_parser("set", help="a role's settings: the re-provision flag its hosts get")
    rt.add_argument("name")
    rt.add_argument("--provision-flag", help="one kernel parameter, e.g. homelab.provision_disks=true")
    rt.add_argument("--default-provision-flag", action="store_true",
                    help="use the configured default (provision.flag) again")
    rt.set_defaults(func=cmd_role_set)

    pn = sub.add_parser("pin", help="pin a host to a generation of its role (--none: unpin)")
    pn.add_argument("host", help="MAC, hostname or canonical name")
    pn.add_argument("generation", type=int, nargs="?")
    pn.add_argument("--none", action="store_true", help="follow the role's current generation")
    pn.set_defaults(func=cmd_pin)

    im = sub.add_parser("images", help="the artifact store and compose cache")
    isub = im.add_subparsers(dest="images_command", required=True, metavar="SUBCOMMAND")
    ig = isub.add_parser("gc", help="delete artifacts and compose-cache entries no kept "
                         "generation needs")
    ig.add_argument("--keep", type=int, help="first forget all but the newest N generations of "
                    "every role (never the current or a pinned one)")
    ig.add_argument("--grace", type=float, default=3600.0,
                    help="never delete files younger than this many seconds (default 3600)")
    ig.add_argument("--dry-run", action="store_true")
    ig.add_argument("--json", action="store_true")
    ig.set_defaults(func=cmd_images_gc)

    bi = sub.add_parser("build-image", help="write a host's kernel, initrd and iPXE script into "
                        "a static netboot store (by-mac/<mac>/ or by-canon/<name>/)")
    bi.add_argument("--role", required=True)
    who = bi.add_mutually_exclusive_group(required=True)
    who.add_argument("--mac")
    who.add_argument("--canon")
    bi.add_argument("--store", required=True, help="the static store's root directory")
    bi.add_argument("--generation", type=int, help="default: the role's current generation")
    bi.add_argument("--cmdline", default="", help="appended to the generation's command line")
    bi.set_defaults(func=cmd_build_image)

    e = sub.add_parser("enroll", help="make a machine (by MAC) boot a role")
    e.add_argument("mac")
    e.add_argument("role")
    e.add_argument("--hostname")
    e.add_argument("--canon", help="canonical (fully qualified) host name")
    e.add_argument("--tag", action="append", help="repeat for several")
    e.add_argument("--no-identity", action="store_true",
                   help="do not generate (and arm) host keys for a new host")
    e.set_defaults(func=cmd_enroll)

    u = sub.add_parser("unenroll", help="forget a machine (by MAC or hostname)")
    u.add_argument("host")
    u.set_defaults(func=cmd_unenroll)

    h = sub.add_parser("hosts", help="list enrolled machines: role, generation, state, last boot, "
                       "last provisioned")
    h.add_argument("--json", action="store_true")
    h.add_argument("--tag", help="only the hosts with this tag")
    h.set_defaults(func=cmd_hosts)

    rp = sub.add_parser("reprovision", help="wipe and lay out a host's disks on its next boot "
                        "(a one-shot kernel flag, cleared by its provisioned report)")
    rp.add_argument("host", nargs="?", help="MAC, hostname or canonical name")
    rp.add_argument("--tag", help="every host with this tag")
    rp.add_argument("--ttl", help="clear the flag after this long (e.g. 2h; default provision.ttl)")
    rp.add_argument("--max-boots", type=int, help="loop guard: boots with the flag and no "
                    "provisioned report before it is marked failed (default provision.max_boots)")
    rp.add_argument("--cancel", action="store_true", help="clear a pending or failed re-provision")
    rp.set_defaults(func=cmd_reprovision)

    st = sub.add_parser("status", help="hosts not booted / provisioned recently; exit 1 when any "
                        "is listed (0: none, 2: error)")
    st.add_argument("--stale", metavar="DURATION", help="list hosts not booted within it (7d)")
    st.add_argument("--stale-deploy", metavar="DURATION",
                    help="list hosts not provisioned within it (90d)")
    st.add_argument("--failed", action="store_true",
                    help="list hosts whose re-provision failed (loop guard)")
    st.add_argument("--tag", help="only the hosts with this tag")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    k = sub.add_parser("keys", help="host identities: SSH and WireGuard keys, machine-id, hostId")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    kg = ksub.add_parser("generate", help="make a host's first identity (and arm it)")
    kg.add_argument("host")
    kg.add_argument("--no-arm", action="store_true", help="generate, but do not hand it out yet")
    kg.set_defaults(func=cmd_keys_generate)
    kr = ksub.add_parser("rotate", help="new keys for a host (the old generation is kept); arms")
    kr.add_argument("host")
    kr.set_defaults(func=cmd_keys_rotate)
    ka = ksub.add_parser("arm", help="hand the identity out on the host's next boot")
    ka.add_argument("host")
    ka.add_argument("--every-boot", action="store_true",
                    help="at every boot (stateless hosts), not just the next one")
    ka.set_defaults(func=cmd_keys_arm)
    kd = ksub.add_parser("disarm", help="stop handing the identity out")
    kd.add_argument("host")
    kd.set_defaults(func=cmd_keys_disarm)
    kl = ksub.add_parser("list", help="hosts' identities (public parts), or one host's generations")
    kl.add_argument("host", nargs="?")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=cmd_keys_list)
    kx = ksub.add_parser("export", help="known_hosts or age recipients of every enrolled host")
    kx.add_argument("what", choices=["known_hosts", "known-hosts", "age-recipients"])
    for sp in (kx,
               ksub.add_parser("known-hosts", help="same as `keys export known_hosts`"),
               ksub.add_parser("age-recipients", help="same as `keys export age-recipients`")):
        sp.add_argument("-o", "--output", help="write this file instead of standard output")
        sp.add_argument("--json", action="store_true", help="age recipients as {host: recipient}")
        sp.add_argument("--age1", action="store_true", help="age recipients in ssh-to-age's "
                        "age1... form (decrypt with the converted key, not the host key)")
        sp.set_defaults(func=cmd_keys_export)
    ksub.choices["known-hosts"].set_defaults(what="known_hosts")
    ksub.choices["age-recipients"].set_defaults(what="age-recipients")

    t = sub.add_parser("tls", help="netbootd's CA and HTTPS certificate")
    tsub = t.add_subparsers(dest="tls_command", required=True, metavar="SUBCOMMAND")
    ts = tsub.add_parser("show", help="the certificate, its pin and the CA")
    ts.add_argument("--json", action="store_true")
    ts.set_defaults(func=cmd_tls_show)
    tr = tsub.add_parser("rotate", help="a new HTTPS server key and certificate")
    tr.add_argument("--ca", action="store_true", help="a new CA too")
    tr.set_defaults(func=cmd_tls_rotate)

    ev = sub.add_parser("events", help="boot, provisioning and audit events, with source IP and "
                        "per-boot id")
    ev.add_argument("host", nargs="?", help="one host (MAC, hostname or canonical name)")
    ev.add_argument("--since", help="e.g. 30m, 2h, 1d, 1w, or an ISO date")
    ev.add_argument("--boot", help="only the events of one boot (its id, or a prefix)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_events)

    x = sub.add_parser("explain", help="show exactly what a machine would get")
    x.add_argument("mac")
    x.add_argument("--arch", choices=[a.value for a in Arch], default="bios")
    x.add_argument("--advertise-address")
    x.set_defaults(func=cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NetbootdError as e:
        print(f"netbootd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
