"""THE one place that decides what a machine boots. Pure: no sockets, no SQL, no clock.

Callers look the host (and its image) up in the store and hand them in; the policy answers
 - `dhcp_boot`: what a proxyDHCP reply tells a (mac, arch, iPXE-or-not) client, or None to
   stay silent (unknown MAC under the `ignore` policy, an arch we have no binary for);
 - `boot_plan`: what the host's iPXE script boots (kernel, initrds, command line).
Both are cheap and idempotent: firmware asks several times per boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.model import Arch, BootClient, BootPlan, DhcpBoot, Host, Image, MacAddress


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


def initrd_name(position: int) -> str:
    return f"initrd{position}"


def boot_plan(host: Host, image: Image, urls: Urls) -> BootPlan:
    """The iPXE script's content for `host` booting `image`."""
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
    return BootPlan(
        host=host,
        image=image,
        kernel_url=urls.artifact(image.kernel.sha256, "kernel"),
        initrds=initrds,
        cmdline=" ".join(parts),
        events_url=urls.events(host.mac),
    )
