"""THE one place that decides what a machine boots. Pure: no sockets, no SQL, no clock.

Callers look the host (and its image) up in the store and hand them in; the policy answers
 - `dhcp_boot`: what a proxyDHCP reply tells a (mac, arch, iPXE-or-not) client, or None to
   stay silent (unknown MAC under the `ignore` policy, an arch we have no binary for);
 - `boot_plan`: what the host's iPXE script boots (kernel, initrds, command line, and -- when
   its identity is armed -- the per-boot identity URL and the server's key pin, passed in);
 - `identity_release`: whether a request for a host's identity bundle gets it (the token row,
   the host, its arming state, the requester's address, the clock and the ARP result are all
   passed in as values).
All are cheap and idempotent: firmware asks several times per boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address

from netbootd.model import (
    Arch,
    BootClient,
    BootPlan,
    DhcpBoot,
    Host,
    IdentityOffer,
    IdentityState,
    IdentityToken,
    Image,
    MacAddress,
)


@dataclass(frozen=True)
class Urls:
    """Where clients reach netbootd's HTTP server, e.g. `http://192.168.1.10:8080`."""

    base: str

    @classmethod
    def for_address(cls, address: IPv4Address | str, port: int) -> Urls:
        host = str(address)
        return cls(f"http://{host}" if port == 80 else f"http://{host}:{port}")

    def script(self, mac: MacAddress) -> str:
        return f"{self.base}/boot/{mac.hyphen}.ipxe"

    def artifact(self, sha256: str, name: str) -> str:
        return f"{self.base}/artifacts/{sha256}/{name}"

    def ipxe_binary(self, name: str) -> str:
        return f"{self.base}/ipxe/{name}"

    def events(self, mac: MacAddress) -> str:
        return f"{self.base}/api/v1/hosts/{mac.hyphen}/events"


def https_base(address: IPv4Address | str, port: int) -> str:
    """Where clients reach the HTTPS port (identity bundles), e.g. `https://192.168.1.10:8443`."""
    return f"https://{address}" if port == 443 else f"https://{address}:{port}"


@dataclass(frozen=True)
class BootFileNames:
    bios: str = "undionly.kpxe"
    uefi: str = "ipxe.efi"
    arm64: str | None = None


def dhcp_boot(
    host: Host | None,
    client: BootClient,
    server: IPv4Address,
    urls: Urls,
    files: BootFileNames,
) -> DhcpBoot | None:
    """The proxyDHCP answer for `client`, or None: say nothing."""
    if host is None:  # unknown_policy = "ignore" (the only policy until discovery exists)
        return None
    if client.ipxe:
        url = urls.script(client.mac)
        return DhcpBoot(url, server, reason=f"offered script {url}")
    if client.arch is Arch.BIOS:
        return DhcpBoot(files.bios, server, reason=f"offered {files.bios}")
    if client.arch is Arch.UEFI:
        return DhcpBoot(files.uefi, server, reason=f"offered {files.uefi}")
    if client.arch is Arch.ARM64:
        if files.arm64 is None:
            return None
        return DhcpBoot(files.arm64, server, reason=f"offered {files.arm64}")
    if client.arch is Arch.HTTP:
        url = urls.ipxe_binary(files.uefi)
        return DhcpBoot(url, server, vendor_class="HTTPClient", reason=f"offered {url}")
    return None


def boot_generation(host: Host) -> int | None:
    """Which generation of its role `host` boots: the one it is pinned to, or None for the
    role's current generation (which the store reads together with the image, so a switch is
    seen whole). Callers pass this straight to `store.image(host.role, ...)`."""
    return host.pinned_generation


def initrd_name(position: int) -> str:
    return f"initrd{position}"


def boot_plan(
    host: Host, image: Image, urls: Urls, identity: IdentityOffer | None = None
) -> BootPlan:
    """The iPXE script's content for `host` booting `image`; `identity` when it is armed."""
    initrds = tuple(
        (initrd_name(i), urls.artifact(a.sha256, initrd_name(i))) for i, a in enumerate(image.initrds)
    )
    # EFI iPXE hands initrds to the kernel's EFI stub only when named on the command line.
    parts = [f"initrd={name}" for name, _ in initrds]
    if image.cmdline:
        parts.append(image.cmdline)
    parts.append(f"netbootd.events={urls.events(host.mac)}")
    if host.hostname:
        parts.append(f"netbootd.hostname={host.hostname}")
    if identity is not None:
        parts.append(f"netbootd.identity={identity.url}")
        parts.append(f"netbootd.pin={identity.pin}")
    return BootPlan(
        host=host,
        image=image,
        kernel_url=urls.artifact(image.kernel.sha256, "kernel"),
        initrds=initrds,
        cmdline=" ".join(parts),
        events_url=urls.events(host.mac),
    )


# -- identity release -------------------------------------------------------------------------


class ArpResult(StrEnum):
    MATCH = "match"  # the requester's IP answered with the enrolled MAC, and nothing else did
    MISMATCH = "mismatch"  # some other MAC answered for that IP
    NO_ANSWER = "no-answer"  # we asked on the shared segment and nobody answered
    NOT_CHECKED = "not-checked"  # not on a shared L2 segment, disabled, or not possible


@dataclass(frozen=True)
class ArpCheck:
    result: ArpResult
    required: bool = False  # verify_arp = "always", or "auto" on a shared segment
    note: str = ""  # why it was not checked, or which MACs answered


ARP_NOT_CHECKED = ArpCheck(ArpResult.NOT_CHECKED)


@dataclass(frozen=True)
class Release:
    ok: bool
    reason: str


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
