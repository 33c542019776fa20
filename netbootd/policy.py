"""THE one place that decides what a machine gets. Pure: no sockets, no SQL, no clock.

Callers gather the inputs as values (`lookup.py`: the host, its image, its arming, its identity
state, its stem-cell layout, the address clients reach us at) and hand them in; the policy
answers:
 - `advertised_address`, `nfs_server`, `iscsi_portal`: which address clients are told to contact;
 - `dhcp_boot`: what a proxyDHCP reply tells a (mac, arch, iPXE-or-not) client, or None to
   stay silent (unknown MAC under the `ignore` policy, an arch we have no binary for);
 - `boot_plan` / `script_plan`: what the host's iPXE script boots (kernel, initrds, command line,
   and -- when its identity is offered -- the per-boot identity URL and the server's key pin);
 - `identity_offer`: whether a script offers the host its identity; `identity_release`: whether
   a request for the bundle gets it (token row, host, arming, requester, clock and ARP result);
 - `provision_flag`: whether this boot's command line carries the host's one-shot re-provision
   flag (armed? TTL expired? loop guard tripped?), and `provision_report`: whether a
   `provisioned` report clears it;
 - `boot_binding`: whether a script fetch counts as the MAC's boot (its own DHCP exchange's
   address), `report_token`: whether a host's report is authenticated;
 - `destroy_decision`, `reclone_decision`: whether a host's iSCSI disks may be destroyed or
   re-cloned now;
 - `discovery_plan`, `discovery_report`, `discovery_rule`, `rule_hostname`: what an unknown
   machine boots under `unknown_policy = "discover"`, whether its report is authenticated, and
   which discovery rule (if any) enrolls it under which name.
All are cheap and free of side effects: the store acts on their answer in the transaction that
read their inputs, so the servers, the CLI and `explain` cannot disagree.

One piece on purpose: every decision lives in this file, so a reader who wants to know what a
machine gets, or why a request was refused, reads one module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from ipaddress import IPv4Address

from netbootd.errors import InvalidInput, StemCellError
from netbootd.inventory.records import DiscoveryRule
from netbootd.inventory.schema import Inventory
from netbootd.model import (
    ARP_NOT_CHECKED,
    Arch,
    ArpCheck,
    ArpResult,
    BootChain,
    BootClient,
    BootFileNames,
    BootMode,
    BootPlan,
    DhcpBoot,
    Flag,
    FlagAction,
    FlagDecision,
    Host,
    HostState,
    HttpBoot,
    IdentityOffer,
    IdentityState,
    IdentityToken,
    Image,
    Lease,
    Loader,
    MacAddress,
    Provision,
    ProvisionBoot,
    ProvisionState,
    Release,
    RoleBoot,
    RoleChain,
    SanBoot,
    ScriptInputs,
    SecureBootRule,
    SecureBootState,
    StaticUrls,
    StemCell,
    Transport,
    Urls,
)
from netbootd.tokens import TokenClaim, TokenStatus

# -- where clients reach netbootd -------------------------------------------------------------


def advertised_address(configured: IPv4Address | None, interface: IPv4Address | None,
                       arrived_on: str | None) -> str | None:
    """The address clients are told to contact (boot server, script and artifact URLs, the
    identity URL): `advertise_address` if configured, else the serving interface's IPv4 (as read
    now), else the local address the request arrived on. None: nothing says (a wildcard)."""
    if configured is not None:
        return str(configured)
    if interface is not None:
        return str(interface)
    if arrived_on and arrived_on not in ("0.0.0.0", "::"):
        return arrived_on
    return None


def nfs_server(configured: IPv4Address | None, advertised: str | None) -> str | None:
    """What nfs-store hosts mount from: `nfs.server`, else netbootd's advertised address."""
    return str(configured) if configured is not None else advertised


def iscsi_portal(configured: str | None, advertised: str | None) -> str | None:
    """`address:port` iscsi hosts log in to: `iscsi.portal`, else the advertised address."""
    p = configured or advertised
    if not p:
        return None
    return p if ":" in p else f"{p}:3260"


def dhcp_boot(
    host: Host | None,
    client: BootClient,
    server: IPv4Address,
    urls: Urls,
    files: BootFileNames,
    chain: BootChain | None = None,
    https: Urls | None = None,
    discover: bool = False,
) -> DhcpBoot | None:
    """The proxyDHCP answer for `client`, or None: say nothing. `chain`: the host's boot chain
    (transport https: iPXE and HTTP boot clients get https URLs; http_boot uki: HTTP boot
    clients get the host's UKI); `https`: where the HTTPS port is (None: HTTPS off);
    `discover`: unknown_policy is "discover", so an unknown MAC is answered like a host of the
    plain-HTTP iPXE chain (its script is the discovery boot)."""
    if host is None and not discover:  # unknown_policy = "ignore"
        return None
    if host is None:
        chain = None
    if chain is not None:
        urls = chain_urls(chain, False, urls, https)
        if chain.transport is Transport.HTTPS and not urls.secure:
            return None  # transport https with HTTPS off: never a plain-HTTP URL
        if client.arch in (Arch.HTTP, Arch.HTTP_ARM64) and not client.ipxe and (
                chain.http_boot is HttpBoot.UKI):
            if chain.loader is Loader.SHIM:
                if client.arch is not Arch.HTTP:  # boot.shim is shimx64 (x86-64) only
                    return None
                url = urls.shim(client.mac)
                return DhcpBoot(url, server, vendor_class="HTTPClient",
                                reason=f"offered shim {url} (it loads the UKI as grubx64.efi)")
            url = urls.uki(client.mac)
            return DhcpBoot(url, server, vendor_class="HTTPClient", reason=f"offered UKI {url}")
    if client.ipxe:
        if urls.secure and not client.ipxe_https:
            return _https_ipxe(client, server, files)
        url = urls.script(client.mac)
        return DhcpBoot(url, server, reason=f"offered script {url}")
    if client.arch in (Arch.BIOS, Arch.UEFI, Arch.ARM64):
        name = ipxe_file(client.arch, files)
        return None if name is None else DhcpBoot(name, server, reason=f"offered {name}")
    if client.arch is Arch.HTTP:
        url = urls.ipxe_binary(files.uefi)
        return DhcpBoot(url, server, vendor_class="HTTPClient", reason=f"offered {url}")
    if client.arch is Arch.HTTP_ARM64:
        if files.arm64 is None:
            return None
        url = urls.ipxe_binary(files.arm64)
        return DhcpBoot(url, server, vendor_class="HTTPClient", reason=f"offered {url}")
    return None


def ipxe_file(arch: Arch, files: BootFileNames) -> str | None:
    """The iPXE binary a client of `arch` loads (over TFTP; HTTP boot clients over HTTP)."""
    return {Arch.BIOS: files.bios, Arch.UEFI: files.uefi, Arch.ARM64: files.arm64,
            Arch.HTTP: files.uefi, Arch.HTTP_ARM64: files.arm64}.get(arch)


def _https_ipxe(client: BootClient, server: IPv4Address,
                files: BootFileNames) -> DhcpBoot | None:
    """An iPXE without HTTPS (Debian 12's, a NIC's ROM: QEMU's is one) asked for a host whose
    URLs are https: it cannot fetch the script, so it is handed netbootd's own build (which
    chains to the script over HTTPS by itself), or nothing when there is none: a plain-HTTP
    URL is never the fallback."""
    name = ipxe_file(client.arch, files)
    if name is None or name not in files.https_ipxe:
        return None
    return DhcpBoot(name, server, reason=f"offered {name}: this iPXE has no HTTPS, "
                    "netbootd's build has")


def boot_generation(host: Host) -> int | None:
    """Which generation of its role `host` boots: the one it is pinned to, or None for the
    role's current generation (which the store reads together with the image, so a switch is
    seen whole). Callers pass this straight to `store.image(host.role, ...)`."""
    return host.pinned_generation


def initrd_name(position: int) -> str:
    return f"initrd{position}"


def flag_word(role_flag: str | None, default: str) -> str:
    """The flag a role's hosts get: the role's own (`role set --provision-flag`) or the default."""
    return role_flag or default


def _without_flag(cmdline: str, name: str) -> str:
    return " ".join(w for w in cmdline.split() if w.split("=", 1)[0] != name)


def boot_plan(
    host: Host,
    image: Image,
    urls: Urls | StaticUrls,
    identity: IdentityOffer | None = None,
    boot_token: str | None = None,
    provision: Flag | None = None,
    stem: StemCell | None = None,
    machine_id: str | None = None,
) -> BootPlan:
    """The iPXE script's content for `host` booting `image`; `identity` when it is armed;
    `boot_token` names this boot (`netbootd.boot=`); `provision` is the role's flag and whether
    this boot gets it. A flag that came with the image's own command line (a role's --cmdline,
    NixOS boot.kernelParams) is removed: it would be on every boot, the install loop this flag
    exists to prevent. Only `provision.on` puts it there. `machine_id` goes with `identity`
    (`systemd.machine_id=`: systemd sets it before any unit, where the identity unit could only
    write over a first boot's read-only /etc/machine-id; not a secret, and on the boots that
    carry the identity token only)."""
    initrds = tuple(
        (initrd_name(i), urls.artifact(a.sha256, initrd_name(i)))
        for i, a in enumerate(image.initrds)
    )
    # EFI iPXE hands initrds to the kernel's EFI stub only when named on the command line.
    parts = [f"initrd={name}" for name, _ in initrds]
    cmdline = image.cmdline if provision is None else _without_flag(image.cmdline, provision.name)
    if cmdline:
        parts.append(cmdline)
    events = urls.events(host.mac)
    if events:  # a static store has no server to report to
        parts.append(f"netbootd.events={events}")
    if host.hostname:
        parts.append(f"netbootd.hostname={host.hostname}")
    if identity is not None:
        parts.append(f"netbootd.identity={identity.url}")
        parts.append(f"netbootd.pin={identity.pin}")
        if machine_id is not None:
            parts.append(f"systemd.machine_id={machine_id}")
    if boot_token is not None:
        parts.append(f"netbootd.boot={boot_token}")
    if provision is not None and provision.on:
        parts.append(provision.word)
    # The role's boot mode (`stem`: its settings and, for iscsi / nfs-store, the host's LUN or
    # the NFS layout, looked up by the caller) may add parameters and change what the script does.
    mode, stem_params, san, local = stem_cell(host, stem)
    parts += stem_params
    return BootPlan(
        host=host,
        image=image,
        kernel_url=urls.artifact(image.kernel.sha256, "kernel"),
        initrds=initrds,
        cmdline=" ".join(parts),
        events_url=events or "",
        mode=mode,
        san=san,
        local=local,
    )


def script_plan(inputs: ScriptInputs, urls: Urls, identity: IdentityOffer | None,
                boot_token: str | None, flag_on: bool) -> BootPlan:
    """`boot_plan` for what `lookup.script_inputs` gathered; `flag_on`: this boot carries the
    re-provision flag (`provision_flag` said SERVE). The HTTP adapter and `explain` both call
    this, so the script explain prints is the one the server sends."""
    plan = boot_plan(inputs.host, inputs.image, urls, identity, boot_token,
                     Flag(inputs.flag_word, flag_on), inputs.stem, inputs.machine_id)
    if inputs.inventory is None:
        return plan
    return replace(plan, inventory=inputs.inventory)


def identity_offer(state: IdentityState | None, https: bool, requester: str | None) -> Release:
    """Does this boot's script offer the host its identity (a single-use token URL and the pin)?
    Only when it is armed, HTTPS is up and we know the requester the token is bound to."""
    if state is None:
        return Release(False, "no identity")
    if not state.armed:
        return Release(False, "identity not armed")
    if not https:
        return Release(False, "identity is armed but HTTPS is off: not offered")
    if not requester:
        return Release(False, "the requester's address is unknown: a token cannot be bound")
    return Release(True, f"identity generation {state.generation} is armed")


# -- discovery: unknown machines under unknown_policy = "discover" ---------------------------


def discovery_plan(mac: MacAddress, image: Image, urls: Urls, report_url: str,
                   boot_token: str | None, action: str) -> BootPlan:
    """The discovery boot of an unknown `mac`: the discovery role's image with where to POST the
    inventory (`netbootd.discovery=`), this boot's token (bound like any boot's:
    `boot_binding`) and what to do after the report (`netbootd.discovery.action=`)."""
    plan = boot_plan(Host(mac, image.role), image, urls, boot_token=boot_token)
    cmdline = " ".join(w for w in plan.cmdline.split()
                       if not w.startswith("netbootd.discovery"))
    cmdline += f" netbootd.discovery={report_url} netbootd.discovery.action={action}"
    return BootPlan(plan.host, plan.image, plan.kernel_url, plan.initrds, cmdline,
                    plan.events_url)


def discovery_report(claim: TokenClaim | None, peer: str | None, now: float,
                     ttl: float, macs: Sequence[str] | None = None) -> Release:
    """Is an inventory report authenticated? By a valid per-boot token (a discovery boot's or
    an enrolled host's), from the address it is bound to, within `ttl`; and (`macs`: the NICs
    the document lists, once it is parsed) the machine it describes has the token's MAC among
    its NICs: a report about another machine is refused."""
    if claim is None or claim.mac is None:
        return report_token(claim, MacAddress(bytes(6)), peer, now, ttl)
    verdict = report_token(claim, claim.mac, peer, now, ttl)
    if not verdict.ok or macs is None:
        return verdict
    if str(claim.mac) not in {m.lower() for m in macs}:
        return Release(False, f"the inventory has no NIC with the token's MAC {claim.mac}")
    return Release(True, "valid per-boot token")


RULE_FIELDS = ("vendor", "product", "serial", "disk_serial", "mac_prefix", "nics")


def discovery_rule(rules: Sequence[DiscoveryRule], mac: MacAddress,
                   inv: Inventory) -> DiscoveryRule | None:
    """The first rule (by id) every given field of which matches the machine: vendor, product,
    serial (DMI, shell globs), disk_serial (a glob any disk's serial matches), mac_prefix (of
    the booting MAC), nics (the NIC count). A rule with no field matches nothing."""
    for rule in sorted(rules, key=lambda r: r.id):
        if rule.match and all(_rule_field(k, v, mac, inv) for k, v in rule.match.items()):
            return rule
    return None


def _rule_field(key: str, want: str | int, mac: MacAddress, inv: Inventory) -> bool:
    if key == "nics":
        return len(inv.nics) == int(want)
    w = str(want)
    if key == "mac_prefix":
        return str(mac).startswith(w.lower())
    if key == "disk_serial":
        return any(d.serial is not None and fnmatchcase(d.serial, w) for d in inv.disks)
    if key in ("vendor", "product", "serial"):
        got = getattr(inv.system, key)
        return got is not None and fnmatchcase(got, w)
    return False  # a field this netbootd does not know matches nothing


def rule_hostname(template: str | None, mac: MacAddress, inv: Inventory, n: int) -> str | None:
    """The hostname a rule gives: its template with {serial} {vendor} {product} (lowercased,
    anything but a-z0-9- as '-'), {mac} (aa-bb-..), {mac_hex} and {n} (the rule's count, from
    1). None: no template. The result is still checked by model.hostname when enrolled."""
    if not template:
        return None
    serial = inv.system.serial or next((d.serial for d in inv.disks if d.serial), None)
    values = {"serial": serial, "vendor": inv.system.vendor, "product": inv.system.product,
              "mac": mac.hyphen, "mac_hex": str(mac).replace(":", ""), "n": str(n)}

    def sub(m: re.Match[str]) -> str:
        v = values.get(m.group(1))
        if v is None:
            raise InvalidInput(f"hostname template: {{{m.group(1)}}} has no value here")
        return re.sub(r"[^a-z0-9-]+", "-", v.lower()).strip("-") or "x"

    return re.sub(r"\{([a-z_]+)\}", sub, template)[:63].strip("-")


# -- identity release -------------------------------------------------------------------------


def _at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def identity_release(
    token: IdentityToken | None,
    host: Host | None,
    state: IdentityState | None,
    peer_ip: str,
    now: float,
    arp: ArpCheck = ARP_NOT_CHECKED,
    requested_name: str | None = None,
) -> Release:
    """May `peer_ip` have the identity bundle of the host `token` was issued for, now?

    `requested_name` is the host name in the compatibility path `/keys/<name>.tar.gz`; it must
    name the token's host. The order matters only for the reason an operator reads in
    `netbootd events`; every "no" is the same 403 to the client.
    """
    if token is None:
        return Release(False, "unknown token")
    if token.used is not None:
        return Release(False, f"token already used ({_at(token.used)} from {token.used_ip})")
    if now >= token.expires:
        return Release(False, f"token expired ({_at(token.expires)})")
    if peer_ip != token.ip:
        return Release(False, f"wrong source IP (token issued to {token.ip})")
    if host is None or host.mac != token.mac:
        return Release(False, "host not enrolled")
    if requested_name is not None and requested_name not in (
        host.hostname, host.canon, host.mac.hyphen
    ):
        return Release(False, f"token is for {host.name}, not {requested_name}")
    if state is None:
        return Release(False, "host has no identity")
    if not state.armed:
        return Release(False, "identity not armed")
    if arp.result is ArpResult.MISMATCH:
        return Release(False, f"ARP: {peer_ip} answered with another MAC ({arp.note})")
    if arp.result is ArpResult.NO_ANSWER:
        return Release(False, f"ARP: {peer_ip} did not answer on the shared segment")
    if arp.result is ArpResult.NOT_CHECKED and arp.required:
        return Release(False, f"ARP verification required but not possible ({arp.note})")
    return Release(True, "delivered")


# -- one-shot re-provisioning ----------------------------------------------------------------


def provision_flag(arming: Provision | None, now: float) -> FlagDecision:
    """Does the boot being served now carry the host's re-provision flag?

    The flag stays on every boot until the host reports `provisioned` with the per-boot token of
    the latest boot that carried it (so a failed install retries), but on at most
    `arming.max_boots` boots (so a broken install cannot wipe the machine forever) and not after
    `arming.expires`."""
    if arming is None:
        return FlagDecision(FlagAction.NONE, "no re-provision armed")
    if arming.state is ProvisionState.FAILED:
        return FlagDecision(FlagAction.NONE, f"re-provision failed earlier: {arming.reason}")
    if now >= arming.expires:
        return FlagDecision(FlagAction.EXPIRE, f"the flag expired at {_at(arming.expires)} after "
                            f"{arming.boots} boot(s) without a provisioned report")
    if arming.boots >= arming.max_boots:
        return FlagDecision(FlagAction.TRIP, f"loop guard: {arming.boots} boot(s) carried the "
                            "flag and none reported provisioned")
    n = arming.boots + 1
    return FlagDecision(FlagAction.SERVE, f"flagged boot {n} of at most {arming.max_boots}", n)


def provision_report(arming: Provision | None, boot: ProvisionBoot | None) -> Release:
    """Does a `provisioned` report carrying a (valid, this host's) per-boot token clear the flag?

    `boot` is the flagged boot that token names (None: the token's boot never carried the flag).
    Only the latest flagged boot of the current arming counts: an earlier boot's token is stale
    (that install was superseded by a later boot), and once the flag is cleared every token is."""
    if arming is None:
        return Release(False, "no re-provision pending (already provisioned, cancelled or expired)")
    if arming.state is ProvisionState.FAILED:
        return Release(False, f"re-provision failed ({arming.reason}); `netbootd reprovision` "
                       "arms it again")
    if boot is None:
        return Release(False, "stale token: its boot did not carry the flag")
    if boot.armed != arming.armed:
        return Release(False, f"stale token: flagged boot {boot.number} of an earlier re-provision")
    if boot.digest != arming.last_boot:
        return Release(False, f"stale token: flagged boot {boot.number}, the latest is boot "
                       f"{arming.boots}")
    return Release(True, f"provisioned on flagged boot {boot.number}")


# Events a booted host may report, each with `"token": "<netbootd.boot= of this boot>"` (its
# per-boot id is then recorded with the event). `identity-installed` carries the fingerprint of
# the ed25519 key the host installed. `provisioned` must carry the token of the latest boot that
# was served the re-provision flag; it clears the flag.
HOST_EVENTS = frozenset({"booted", "identity-installed", "provision-started", "provisioned",
                         "provision-failed"})


def boot_binding(dhcp: bool, lease: Lease | None, requester: str | None) -> Release:
    """Does this script fetch count as the MAC's boot (mint its token, count a flagged boot,
    offer its identity)? With `dhcp` binding only from the address the MAC's own DHCP exchange
    used (`lease`: what the proxyDHCP responder saw within its window); otherwise from the
    requester. Anything else is served explain-style: the same script with nothing bound."""
    if not requester or not _ipv4(requester):
        return Release(False, f"the requester's address {requester!r} cannot be bound "
                       "(IPv4 only)")
    if not dhcp:
        return Release(True, f"bound to the requester {requester} (requester binding)")
    if lease is None:
        return Release(False, "no DHCP exchange of this MAC seen recently")
    if lease.others:
        return Release(False, f"its recent DHCP claimed several addresses ({lease.ip}, "
                       f"{', '.join(lease.others)})")
    if lease.ip != requester:
        return Release(False, f"fetched from {requester}, its DHCP exchange used {lease.ip}")
    return Release(True, f"bound to {requester}, the address of its DHCP exchange")


def _ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def report_token(claim: TokenClaim | None, mac: MacAddress, peer: str | None, now: float,
                 ttl: float) -> Release:
    """Is a host's report authenticated? Only by a valid boot token of that host, presented from
    the address the boot is bound to, within `ttl` seconds of its issue. `claim`: the parsed
    token (None: the report carried none -- it changes nothing)."""
    if claim is None:
        return Release(False, "no per-boot token (netbootd.boot=)")
    if claim.status is not TokenStatus.VALID:
        return Release(False, f"{claim.status} per-boot token")
    if claim.mac != mac:
        return Release(False, f"the per-boot token is for {claim.mac}")
    if claim.ip != peer:
        return Release(False, f"the per-boot token is bound to {claim.ip}, not {peer}")
    assert claim.issued is not None
    if now - claim.issued > ttl:
        return Release(False, f"the per-boot token expired (issued {_at(claim.issued)})")
    if claim.issued - now > 300:
        return Release(False, f"the per-boot token was issued in the future ({_at(claim.issued)})")
    return Release(True, "valid per-boot token")


def host_state(arming: Provision | None, now: float) -> HostState:
    """What `netbootd hosts` says about a host's re-provisioning, now."""
    d = provision_flag(arming, now)
    if arming is None:
        return HostState.OK
    if arming.state is ProvisionState.FAILED:
        return HostState.FAILED
    if d.action is FlagAction.EXPIRE:
        return HostState.EXPIRED
    return HostState.PROVISIONING if arming.boots else HostState.ARMED


def stale(last: float | None, enrolled: float, now: float, max_age: float) -> bool:
    """Has a host gone `max_age` seconds without the thing `last` records (a boot, a provisioned
    report)? Never having done it counts from its enrollment, so a host enrolled an hour ago is
    not stale for a week-long window yet."""
    return now - (last if last is not None else enrolled) > max_age


# -- stem-cell boots: nfs-store, iscsi, local ------------------------------------------------


_STORE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*/[0-9a-z]{32}-[A-Za-z0-9._+?=-]+")


def iscsi_uri(portal: str, lun: int, target: str) -> str:
    """iPXE's (and dracut's netroot=) iSCSI URI: `iscsi:<server>::<port>:<lun>:<target>`."""
    server, _, port = portal.rpartition(":")
    return f"iscsi:{server}::{port}:{lun}:{target}"


def stem_cell(host: Host, stem: StemCell | None
              ) -> tuple[BootMode, list[str], SanBoot | None, str | None]:
    """How `host` boots under its role's mode: (mode, kernel parameters to add, the SAN boot for
    iscsi, the local method for local). Differentiation is the command line alone: every
    nfs-store host of every role boots the same stem-cell initramfs, told here where its store,
    its writable directory and its role's toplevel are."""
    boot = stem.boot if stem is not None else RoleBoot(host.role)
    if boot.mode is BootMode.RAMDISK:
        return boot.mode, [], None, None
    assert stem is not None
    if boot.mode is BootMode.LOCAL:
        return boot.mode, [], None, boot.local
    if boot.mode is BootMode.NFS_STORE:
        if not (stem.nfs_server and stem.nfs_store and stem.nfs_host):
            raise StemCellError(f"role {boot.role} boots nfs-store but no NFS server address is "
                                "known (set nfs.server or advertise_address)")
        if not stem.toplevel:
            raise StemCellError(f"role {boot.role} boots nfs-store but its store was never "
                                f"synced: netbootd nfs sync {boot.role}")
        if not _STORE_PATH.fullmatch(stem.toplevel):
            raise StemCellError(f"role {boot.role}: {stem.toplevel!r} is not a store path")
        return boot.mode, [
            f"netbootd.nfs.server={stem.nfs_server}",
            f"netbootd.nfs.store={stem.nfs_store}",
            f"netbootd.nfs.host={stem.nfs_host}",
            f"netbootd.nfs.upper={stem.upper}",
            f"netbootd.toplevel={stem.toplevel}",
        ], None, None
    # iscsi
    if stem.lun is None:
        raise StemCellError(f"{host.name} (role {boot.role}, iscsi) has no LUN yet: "
                            "netbootd iscsi reconcile")
    if not stem.portal:
        raise StemCellError("no iSCSI portal address (set iscsi.portal or advertise_address)")
    lun = stem.lun
    root = iscsi_uri(stem.portal, 1, lun.target)
    data = iscsi_uri(stem.portal, 2, lun.target)
    hook = boot.san == "sanhook"
    # With sanhook the role's kernel boots with the LUN described in the iBFT and on its command
    # line (dracut's netroot= / rd.iscsi.initiator=, and netbootd's own names for the data disk).
    params = [f"netroot={root}", f"rd.iscsi.initiator={lun.initiator}",
              f"netbootd.iscsi.data={data}"] if hook else []
    return boot.mode, params, SanBoot(root, data, lun.initiator, hook), None


def destroy_decision(host: Host | None, connected: Sequence[str], now: float,
                     guard: float) -> Release:
    """May the disks of `host` (its iSCSI LUNs) be destroyed now? Not while an initiator is
    logged in to its target, nor within `guard` seconds of its last boot."""
    if connected:
        return Release(False, "an initiator is logged in to its target now "
                       f"({', '.join(connected)})")
    if host is not None and host.last_boot is not None and now - host.last_boot < guard:
        ago = int(now - host.last_boot)
        return Release(False, f"it booted {ago}s ago ({_at(host.last_boot)}), within "
                       f"iscsi.destroy_guard ({guard:.0f}s)")
    return Release(True, "not booted recently and not logged in")


def reclone_decision(connected: Sequence[str]) -> Release:
    """May a host's root LUN be replaced by a fresh clone now? Not while an initiator is logged
    in to its target (its file system would change under it)."""
    if connected:
        return Release(False, "an initiator is logged in to its target now "
                       f"({', '.join(connected)})")
    return Release(True, "no initiator logged in")


# -- the boot chain: TLS, transport, UKIs, Secure Boot ----------------------------------------


def tls_reissue(from_current_ca: bool, not_after: float, sans: Sequence[str],
                wanted: Sequence[str], now: float, renew_before: float) -> Release:
    """Must the HTTPS server certificate be re-issued now? When another CA signed it, when it
    expires within `renew_before` seconds, or when it does not name every address and name
    netbootd advertises (EDK2 refuses a certificate whose SANs miss the URL's host)."""
    if not from_current_ca:
        return Release(True, "it was not issued by the current CA")
    if not_after - now < renew_before:
        return Release(True, f"it expires {_at(not_after)}")
    missing = sorted(set(wanted) - set(sans))
    if missing:
        return Release(True, f"it does not name {', '.join(missing)}")
    return Release(False, "current")


def boot_chain(role: RoleChain, transport: str, http_boot: str, signing: bool,
               loader: str = "none") -> BootChain:
    """A host's chain: its role's settings over the configured defaults. A role that requires
    Secure Boot is offered UKIs only (netbootd signs those; its iPXE builds are not signed),
    and so is a role whose loader is shim (shim loads netbootd's signed UKI, nothing else)."""
    rule = role.secure_boot
    payload = role.http_boot or HttpBoot(http_boot)
    first = role.loader or Loader(loader)
    if rule is SecureBootRule.REQUIRED or first is Loader.SHIM:
        payload = HttpBoot.UKI
    return BootChain(role.transport or Transport(transport), payload, rule, signing, first)


def chain_urls(chain: BootChain | None, secure_request: bool, http: Urls,
               https: Urls | None) -> Urls:
    """The URLs a client is handed: HTTPS when it came over HTTPS (everything after an HTTPS
    step stays HTTPS) or its role's transport is https; else plain HTTP. With HTTPS off
    (`https` None) the HTTP URLs: the caller refuses an https transport then."""
    wants = secure_request or (chain is not None and chain.transport is Transport.HTTPS)
    if wants and https is not None:
        return https
    return http


def transport_verdict(chain: BootChain, secure_request: bool, https_up: bool) -> Release:
    """May a host's script or UKI be answered on this request? A role with transport https
    is never answered over plain HTTP (its URLs, tokens and pin would travel in the clear)."""
    if chain.transport is Transport.HTTPS:
        if not https_up:
            return Release(False, "transport https but HTTPS is off")
        if not secure_request:
            return Release(False, "transport https: refused over plain HTTP")
    return Release(True, f"transport {'https' if secure_request else 'http'}")


def secure_boot_verdict(chain: BootChain, state: SecureBootState) -> Release:
    """May a host be served its role's UKI now? A `secure_boot = "required"` role is refused to
    a host whose latest report says its firmware has Secure Boot off, and needs netbootd's
    signing keys. `state` is what the host's booted kernel reported (self-reported: a guard
    against misconfigured machines, not an attestation)."""
    if chain.secure_boot is not SecureBootRule.REQUIRED:
        return Release(True, "Secure Boot not required")
    if not chain.signed:
        return Release(False, "Secure Boot required but netbootd has no signing keys "
                       "(netbootd secureboot init)")
    if state is SecureBootState.DISABLED:
        return Release(False, "Secure Boot required but the host reported it disabled")
    return Release(True, f"Secure Boot required; host reported {state}")


def shim_verdict(chain: BootChain, shim_present: bool) -> Release:
    """May a host of a loader-shim role be served shim and, through it, its UKI? Only with
    netbootd's signing keys (shim verifies the UKI against MokList; an unsigned one makes it
    hang without a word) and with the shim binary there (boot.shim; netbootd serves it as is)."""
    if chain.loader is not Loader.SHIM:
        return Release(False, "the role's loader is not shim")
    if not chain.signed:
        return Release(False, "loader shim but netbootd has no signing keys: shim would refuse "
                       "the unsigned UKI (netbootd secureboot init; enroll db.cer as a MOK)")
    if not shim_present:
        return Release(False, "loader shim but the shim binary (boot.shim) is missing "
                       "(Debian: shim-signed)")
    return Release(True, "shim, then the UKI signed with netbootd's db key")


def report_secure_boot(chain: BootChain, reported: str | None) -> Release:
    """Is a `booted` report's Secure Boot state acceptable for the host's role? A required role
    whose host reports it off is refused (audited; its next boots are refused the UKI)."""
    if chain.secure_boot is SecureBootRule.REQUIRED and reported != SecureBootState.ENABLED:
        return Release(False, f"Secure Boot required, host reported {reported or 'nothing'}")
    return Release(True, "ok")


def uki_cmdline(plan: BootPlan) -> str:
    """A UKI's command line: the script's, without the `initrd=` names iPXE needs (the stub
    hands the kernel the UKI's own .initrd; an initrd= naming no file would fail the boot)."""
    return " ".join(w for w in plan.cmdline.split() if not w.startswith("initrd="))
