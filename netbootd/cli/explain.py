"""`netbootd explain`: exactly what a machine would get, decided by the policy the servers ask.

The script part goes through `lookup.script_inputs` and `policy.script_plan`, as the HTTP adapter
does, and nothing is counted or issued: the per-boot tokens are placeholders (or the values a
test passes in), the re-provision flag is decided without counting the boot.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from netbootd import lookup, policy
from netbootd.cli.common import ago, find_host, load_config, open_store, when
from netbootd.codec import dhcp as dhcp_codec
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError, NotFound
from netbootd.identity import tls
from netbootd.identity.secureboot import Signer
from netbootd.ipxe import served
from netbootd.ipxe.served import ServedIpxe
from netbootd.model import (
    HTTP_ARCHES,
    SHIM_SECOND_STAGE,
    Arch,
    BootChain,
    BootClient,
    BootFileNames,
    BootMode,
    FlagAction,
    FlagDecision,
    HttpBoot,
    IdentityOffer,
    Loader,
    MacAddress,
    ScriptInputs,
    Transport,
    Urls,
    https_base,
)
from netbootd.store import Store

BOOT_TOKEN = "<boot-token>"
IDENTITY_TOKEN = "<per-boot-token>"
UNKNOWN_SERVER = "<server>"


@dataclass(frozen=True)
class Script:
    """The script `GET /boot/<mac>.ipxe` would get now, and why."""

    status: int  # 200, or 404 for a MAC that is not enrolled
    text: str
    inputs: ScriptInputs | None = None
    flag: FlagDecision | None = None
    offer: IdentityOffer | None = None


def script(store: Store, cfg: Config, renderer: ScriptRenderer, mac: MacAddress, *,
           boot_token: str = BOOT_TOKEN, identity_token: str = IDENTITY_TOKEN,
           pin: str | None = None, now: float | None = None) -> Script:
    """What the HTTP adapter would answer for `mac`, through the same lookup and policy."""
    inputs = lookup.script_inputs(store, cfg, mac, None)
    if inputs is None:
        return Script(404, renderer.unknown_script(mac))
    flag = policy.provision_flag(inputs.arming, time.time() if now is None else now)
    server = inputs.server or UNKNOWN_SERVER
    offer = None
    if policy.identity_offer(inputs.identity, cfg.https.enabled, "<requester>").ok:
        if pin is None:
            try:
                pin = tls.info(cfg.state_dir).pin
            except NetbootdError:
                pin = "sha256//<made-on-first-serve>"
        offer = IdentityOffer(f"{https_base(server, cfg.https.port)}/identity/{identity_token}",
                              pin)
    # transport https: the script is served over HTTPS only, with HTTPS URLs
    chain = lookup.boot_chain(store, cfg, inputs.host, False)
    urls = policy.chain_urls(chain, False, Urls.for_address(server, cfg.http.port),
                             Urls.for_https(server, cfg.https.port) if cfg.https.enabled else None)
    plan = policy.script_plan(inputs, urls, offer, boot_token, flag.action is FlagAction.SERVE)
    return Script(200, renderer.host_script(plan), inputs, flag, offer)


def chain_text(cfg: Config, store: Store, mac: MacAddress, chain: BootChain) -> dict[str, Any]:
    """The chain a machine gets: transport, HTTP-boot payload, trust anchor, signature, and for
    the shim path what verifies what (and whether it can be served now)."""
    try:
        anchor = f"netbootd CA sha256 {tls.info(cfg.state_dir).ca_sha256}"
    except NetbootdError:
        anchor = "netbootd CA (made on first serve)"
    signer = Signer.load(cfg.state_dir)
    signature = "unsigned"
    if signer is not None:
        db = x509.load_pem_x509_certificate(signer.cert.read_bytes())
        signature = f"signed, db key sha256 {db.fingerprint(hashes.SHA256()).hex()[:32]}"
    shim = None
    if chain.loader is Loader.SHIM:
        verdict = policy.shim_verdict(chain, cfg.boot.shim.is_file())
        shim = {"path": str(cfg.boot.shim), "present": cfg.boot.shim.is_file(),
                "served": verdict.ok, "reason": verdict.reason}
    return {"transport": str(chain.transport), "http_boot": str(chain.http_boot),
            "loader": str(chain.loader), "shim": shim,
            "trust_anchor": anchor if chain.transport is Transport.HTTPS else None,
            "uki_signature": signature, "secure_boot": str(chain.secure_boot),
            "secure_boot_reported": str(store.secure_boot_state(mac))}


def print_chain(c: dict[str, Any]) -> None:
    gets = "iPXE"
    if c["http_boot"] == str(HttpBoot.UKI):
        gets = "shim, then its UKI" if c.get("shim") else "its UKI"
    print(f"boot chain: transport {c['transport']}; UEFI HTTP boot gets "
          f"{gets}; trust anchor "
          f"{c['trust_anchor'] or '(plain HTTP: none)'}; UKIs "
          f"{c['uki_signature']}; Secure Boot {c['secure_boot']} (last reported: "
          f"{c['secure_boot_reported']})")
    shim = c.get("shim")
    if shim:
        print(f"  shim {shim['path']} (Microsoft-signed, verified by the firmware's db)"
              f"{'' if shim['present'] else ': MISSING'}\n"
              f"  -> {SHIM_SECOND_STAGE}: the per-boot UKI, {c['uki_signature']} (verified by "
              "shim against MokList: netbootd's db.cer enrolled as a MOK)")
        if not shim["served"]:
            print(f"  REFUSED now: {shim['reason']}")


def _target(store: Store, ident: str) -> MacAddress:
    """explain takes a MAC (enrolled or not) or an enrolled host's hostname/canonical name."""
    try:
        return find_host(store, ident).mac
    except NotFound:
        try:
            return MacAddress.parse(ident)
        except InvalidInput:
            raise NotFound(f"no enrolled host {ident!r} and not a MAC address") from None


def cmd_explain(args: argparse.Namespace) -> int:
    arch = Arch(args.arch)
    cfg = load_config(args, {"advertise_address": args.advertise_address})
    store = open_store(cfg, readonly=True)
    mac = _target(store, args.host)
    out: dict[str, Any] = {"mac": str(mac), "arch": str(arch)}
    text: list[str] = []
    address = lookup.server_address(cfg, None)
    out["advertise_address"] = address
    if address is None:
        text.append("note: no advertise_address/interface configured; the server fills in the "
                    "address")
        text.append(f"      each request arrived on. Shown here as 0.0.0.0 / {UNKNOWN_SERVER}.\n")
    server = IPv4Address(address) if address else IPv4Address("0.0.0.0")
    urls = Urls.for_address(address or UNKNOWN_SERVER, cfg.http.port)
    files = ServedIpxe(cfg.state_dir, lambda: lookup.ipxe_chain_target(cfg)).boot_files(
        BootFileNames(**cfg.boot_files.model_dump()))
    host = store.host(mac)
    out["host"] = None if host is None else {
        "hostname": host.hostname, "canon": host.canon, "role": host.role,
        "tags": list(host.tags), "last_boot": when(host.last_boot)}
    if host is None:
        text.append(f"{mac}: not enrolled")
    else:
        text.append(f"{mac}: {host.name}, role {host.role}, tags {','.join(host.tags) or '-'}, "
                    f"last boot {ago(host.last_boot)}")
    chain = None
    https = Urls.for_https(address or UNKNOWN_SERVER, cfg.https.port) if cfg.https.enabled \
        else None
    out["chain"] = None
    if host is not None:
        chain = lookup.boot_chain(store, cfg, host, Signer.load(cfg.state_dir) is not None)
        out["chain"] = chain_text(cfg, store, host.mac, chain)
    http_boot = arch in HTTP_ARCHES
    stages = [(f"firmware {'HTTP boot' if http_boot else 'PXE'} ({arch})",
               BootClient(mac, arch, ipxe=False))]
    if not http_boot or chain is None or chain.http_boot is HttpBoot.IPXE:
        # the iPXE the firmware was handed: netbootd's build speaks HTTPS; and, where it
        # matters, an iPXE that does not (a NIC's ROM, a distro build) asking first
        own = policy.ipxe_file(arch, files) in files.https_ipxe
        ipxe_arch = {Arch.HTTP: Arch.UEFI, Arch.HTTP_ARM64: Arch.ARM64}.get(arch, arch)
        stages.append((f"iPXE ({ipxe_arch}{', netbootd build: HTTPS' if own else ''})",
                       BootClient(mac, ipxe_arch, ipxe=True, ipxe_https=own)))
        if own or (chain is not None and chain.transport is Transport.HTTPS):
            stages.append((f"an iPXE without HTTPS ({ipxe_arch}: a NIC's ROM, a distro build)",
                           BootClient(mac, ipxe_arch, ipxe=True)))
    out["dhcp"] = []
    stage_text: list[str] = []
    for title, client in stages:
        stage_text.append(f"\n== {title}: DHCP DISCOVER on port {cfg.dhcp.port} ==")
        boot = policy.dhcp_boot(host, client, server, urls, files, chain, https)
        if boot is None:
            reason = ("not enrolled (unknown_policy=ignore)" if host is None
                      else "loader shim: boot.shim is x86-64 only" if chain is not None
                      and chain.loader is Loader.SHIM and arch is Arch.HTTP_ARM64
                      else "no HTTPS in this iPXE and no netbootd iPXE build for it (`netbootd "
                      "ipxe build`): it is never handed a plain-HTTP URL"
                      if client.ipxe and not client.ipxe_https else "no boot file for this arch")
            stage_text.append(f"no reply: {reason}")
            out["dhcp"].append({"stage": title, "reply": None, "reason": reason})
            continue
        req = dhcp_codec.synthetic_request(client, "dhcp")
        reply = dhcp_codec.build_reply(req, boot, server, "dhcp")
        fields = dhcp_codec.reply_summary(reply)
        stage_text.append(f"proxyDHCP reply ({boot.reason}):")
        stage_text += [f"  {k:20} {v}" for k, v in fields]
        out["dhcp"].append({"stage": title, "reason": boot.reason,
                            "reply": {k: str(v) for k, v in fields}})
    out["ipxe_build"], ipxe_line = _ipxe_build(cfg)
    stage_text.append(ipxe_line)
    s = script(store, cfg, ScriptRenderer(cfg.templates_dir), mac)
    out["script"] = {"path": f"/boot/{mac.hyphen}.ipxe", "status": s.status, "text": s.text,
                     "mode": str(s.inputs.stem.boot.mode) if s.inputs else None,
                     "identity_offered": s.offer is not None,
                     "binding": "dhcp" if cfg.binds_to_dhcp else "requester",
                     "reprovision": None if s.inputs is None or s.inputs.arming is None
                     or s.flag is None else {
                         "flag": s.inputs.flag_word, "on_next_boot":
                         s.flag.action is FlagAction.SERVE, "reason": s.flag.reason}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("\n".join(text))
    if out["chain"] is not None:
        print_chain(out["chain"])
    print("\n".join(stage_text))
    print(f"\n== iPXE script: GET /boot/{mac.hyphen}.ipxe ==")
    if s.inputs is None:
        print("HTTP 404")
        print(s.text, end="")
        return 0
    if s.inputs.stem.boot.mode is not BootMode.RAMDISK:
        print(f"(role {s.inputs.host.role} boots {s.inputs.stem.boot.mode})")
    print(s.text, end="")
    if cfg.binds_to_dhcp:
        print("\n(boot binding: the token, a flagged boot and the identity are in the script "
              "only when it is fetched from the address of this MAC's own DHCP exchange; "
              "fetched from anywhere else it comes without them)")
    else:
        print("\n(boot binding: requester -- no proxyDHCP, so the script's token and identity "
              "are bound to whoever fetches it)")
    if s.offer is not None:
        print("\n(identity armed: each bound script carries a fresh single-use token, for the "
              "MAC and the address the boot is bound to)")
    if s.inputs.arming is not None and s.flag is not None:
        on = s.flag.action is FlagAction.SERVE
        print(f"\n(re-provision: {s.flag.reason}; {s.inputs.flag_word} "
              f"{'is' if on else 'is not'} on the next bound boot's command line)")
    return 0


def _ipxe_build(cfg: Config) -> tuple[dict[str, Any] | None, str]:
    """Which iPXE binaries the offers above name: netbootd's build (`ipxe build`) or not."""
    try:
        st = served.status(cfg.state_dir, *lookup.ipxe_chain_target(cfg))
    except NetbootdError as e:
        return None, f"\n(iPXE binaries: the distro's; netbootd's build is unreadable: {e})"
    if st is None:
        return None, f"\n(iPXE binaries: the distro's, from {cfg.tftp_root}; no `ipxe build`)"
    data = {"key": st.key, "served": st.stale is None, "stale": st.stale,
            "ca_sha256": st.ca_sha256, "chains_to": f"{st.address}:{st.https_port}"}
    if st.stale:
        return data, (f"\n(iPXE binaries: the distro's -- netbootd's build {st.key} is stale: "
                      f"{st.stale}; `netbootd ipxe build` makes a new one)")
    return data, (f"\n(iPXE binaries: netbootd's build {st.key} from {st.source_label}, trusting "
                  f"only CA {st.ca_sha256[:16]}..., its script chaining to "
                  f"https://{st.address}:{st.https_port}/boot/<mac>.ipxe)")

def register(sub: Any) -> None:
    x = sub.add_parser("explain", help="show exactly what a machine would get")
    x.add_argument("host", metavar="HOST", help="a MAC (enrolled or not), or an enrolled "
                   "host's hostname or canonical name")
    x.add_argument("--arch", choices=[a.value for a in Arch], default="bios",
                   help="the client's firmware (DHCP option 93; default bios)")
    x.add_argument("--advertise-address", help="the server address to show (default: the "
                   "configured advertise_address or interface)")
    x.add_argument("--json", action="store_true", help="as JSON: DHCP replies, script, chain")
    x.set_defaults(func=cmd_explain)
