"""netbootd-built iPXE (`netbootd ipxe build`: TRUST= netbootd's CA, an embedded script that
chains to the host's script over HTTPS) boots a VM: OVMF's own PXE fetches the build over TFTP
(`serve` offers netbootd-ipxe/ipxe.efi instead of the distro's as soon as the build exists),
and iPXE fetches the script, kernel and initrd over HTTPS from netbootd (role chain transport
https) -- the LAN capture shows no plain-HTTP request from the VM. The same binary, handed out by
a netbootd with another CA, refuses that server: no script is served, no `booted`.

BIOS: SeaBIOS with the NIC's ROM, which is Debian's iPXE (no HTTPS: its DHCP option 175 lists
no feature 0x14), asks for a transport-https host; netbootd hands it its own undionly.kpxe over
TFTP instead of an https script it could not fetch; that iPXE (on the ROM's PXE stack) fetches
script, kernel and initrd over HTTPS.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import ipxebuild
from testbed.lab import ROLE, ROLE_CMDLINE, SRV_IP, Lab, Netbootd, Site
from testbed.skips import require
from testbed.vm import VM, booted_or_fail, wait_refused

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(ipxebuild.BUILD_TIMEOUT) + 600)]

MAC_OK = "52:54:00:e2:14:21"
MAC_OTHER_CA = "52:54:00:e2:14:22"
MAC_BIOS = "52:54:00:e2:14:23"
HTTPS_PORT = 443  # `serve` as root
REFUSED = "NETBOOTD-IPXE: chain failed"  # the embedded script's line (netbootd/ipxe/build.py)


@pytest.fixture(scope="module")
def built_site(e2e_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, Any]]]:
    require(ipxebuild.missing())
    with Site.start(tmp_path_factory.mktemp("ipxe-site"), e2e_env) as s:
        s.nb.cli("role", "chain", ROLE, "--transport", "https")
        # built while `serve` runs: it hands the build out from its next look (1 s)
        manifest = ipxebuild.build(s.nb, SRV_IP, "x86_64-efi", "bios", https_port=HTTPS_PORT)
        time.sleep(1.5)
        yield s, manifest


def _served_over_https_only(site: Site, mac: str) -> None:
    """netbootd served the script over HTTPS, and the LAN saw no plain-HTTP request (nor any
    TCP but to the HTTPS port) from the VM."""
    lines = site.nb.log_lines_about(mac)
    assert any("served script" in ln for ln in lines), lines
    lab = site.lab
    assert lab.http_requests(mac) == [], lab.http_requests(mac)
    assert lab.pcap_count(f"ether src {mac} and tcp dst port {HTTPS_PORT}") > 0
    assert lab.pcap_count(f"ether src {mac} and tcp and not dst port {HTTPS_PORT}") == 0


def test_built_ipxe_fetches_script_kernel_initrd_over_https(
        built_site: tuple[Site, dict[str, Any]], boot_timer: Any) -> None:
    site, manifest = built_site
    site.nb.enroll(MAC_OK, ROLE, hostname="h-ipxe")
    explain = site.nb.cli("explain", MAC_OK, "--arch", "uefi", "--advertise-address", SRV_IP)
    assert "netbootd-ipxe/ipxe.efi" in explain, explain
    vm = site.vm("h-ipxe", MAC_OK, "uefi-pxe").start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=180)
    boot_timer(result.seconds, "[OVMF PXE -> netbootd-built iPXE -> HTTPS script/kernel/initrd]")
    console = vm.console()
    # OVMF fetched netbootd's build over TFTP, not the distro's ipxe.efi
    tftp = [ln for ln in site.nb.proc.log_path.read_text().splitlines()  # type: ignore[union-attr]
            if "tftp: served" in ln]
    assert any("netbootd-ipxe/ipxe.efi" in ln for ln in tftp), tftp
    assert not any(re.search(r"served /?ipxe\.efi ", ln) for ln in tftp), tftp
    # iPXE printed each HTTPS fetch: the script, then the kernel and the initrd
    script_url = f"https://{SRV_IP}/boot/52-54-00-e2-14-21.ipxe"
    assert script_url in console, vm.console_tail(40)
    fetched = re.findall(rf"https://{re.escape(SRV_IP)}/artifacts/[0-9a-f]{{64}}/(\w+)", console)
    assert "kernel" in fetched and any(n.startswith("initrd") for n in fetched), fetched
    assert f"http://{SRV_IP}" not in console
    _served_over_https_only(site, MAC_OK)
    assert result.host.get("last_boot")
    print(f"\nbuild {manifest['key']}: {manifest['targets']['x86_64-efi']}")


def test_bios_ipxe_rom_without_https_is_handed_netbootds_undionly(
        built_site: tuple[Site, dict[str, Any]], boot_timer: Any) -> None:
    site, manifest = built_site
    site.nb.enroll(MAC_BIOS, ROLE, hostname="h-bios")
    explain = site.nb.cli("explain", MAC_BIOS, "--advertise-address", SRV_IP)  # --arch bios
    assert "offered netbootd-ipxe/undionly.kpxe: this iPXE has no HTTPS" in explain, explain
    vm = site.vm("h-bios", MAC_BIOS, "bios").start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=180)
    boot_timer(result.seconds, "[SeaBIOS + iPXE ROM -> netbootd's undionly.kpxe -> HTTPS]")
    log = site.nb.proc.log_path.read_text()  # type: ignore[union-attr]
    offers = [ln for ln in log.splitlines() if "52:54:00:e2:14:23" in ln and "offered" in ln]
    # the ROM (iPXE, no HTTPS) got netbootd's undionly.kpxe; the build (HTTPS) got the script
    assert any("netbootd-ipxe/undionly.kpxe" in ln for ln in offers), offers
    assert any("https://" in ln and "/boot/52-54-00-e2-14-23.ipxe" in ln
               for ln in offers), offers
    assert not any("http://" in ln for ln in offers), offers
    tftp = [ln for ln in log.splitlines() if "tftp: served" in ln]
    assert any("netbootd-ipxe/undionly.kpxe" in ln for ln in tftp), tftp
    _served_over_https_only(site, MAC_BIOS)
    assert result.host.get("last_boot")
    print(f"\nbuild {manifest['key']}: {manifest['targets']['bios']}")


def test_built_ipxe_refuses_a_netbootd_with_another_ca(
        built_site: tuple[Site, dict[str, Any]], tmp_path: Path) -> None:
    """Another netbootd (its own state, so its own CA) on another LAN hands out the very same
    binary by TFTP (as its distro iPXE) and serves the host; the binary refuses its HTTPS. Its
    TFTP root also offers an autoexec.ipxe (which EFI iPXE fetches from the server it came
    from) that chains over plain HTTP: the embedded script still runs, not that one."""
    site, manifest = built_site
    root = tmp_path / "tftp-root"
    root.mkdir()
    shutil.copyfile(Path(manifest["directory"]) / "ipxe.efi", root / "ipxe.efi")
    (root / "autoexec.ipxe").write_text(
        "#!ipxe\necho AUTOEXEC-RAN\ndhcp\nchain http://${next-server}:8080/boot/"
        "${netX/mac:hexhyp}.ipxe\n")
    config = tmp_path / "other.toml"
    config.write_text(f'[tftp]\nroot = "{root}"\n')
    with Lab(tmp_path / "lab") as lab:  # (entering brings it up)
        other = Netbootd(tmp_path / "other-state")
        other.role_add(ROLE, Path(site.image["vmlinuz"]), [Path(site.image["initramfs"])],
                       ROLE_CMDLINE)
        other.cli("role", "chain", ROLE, "--transport", "https")
        other.enroll(MAC_OTHER_CA, ROLE, hostname="h-other")
        other.serve(lab, config=config)
        assert other.cli("tls", "show", "--json").count(manifest["ca_sha256"][:8]) == 0
        vm = VM(lab, "h-other", MAC_OTHER_CA, "uefi-pxe").start()
        try:
            wait_refused(vm, (REFUSED,), timeout=150)
            t = time.time() - vm.t_start
            time.sleep(1.0)
        finally:
            vm.stop()
        print(f"\nrefused {t:.1f}s after QEMU start")
        tftp = [ln for ln in other.proc.log_path.read_text().splitlines()  # type: ignore
                if "tftp: served" in ln]
        assert any("ipxe.efi" in ln for ln in tftp), tftp  # the build did run there
        assert any("autoexec.ipxe" in ln for ln in tftp), tftp  # ... and fetched the bait
        assert "AUTOEXEC-RAN" not in vm.console(), vm.console_tail(30)
        assert "Permission denied" in vm.console(), vm.console_tail(30)  # iPXE's 0216eb8f
        lines = other.log_lines_about(MAC_OTHER_CA)
        assert not any("served script" in ln for ln in lines), lines
        host = other.host(MAC_OTHER_CA)
        assert host is not None and not host.get("last_boot"), host
        syns = lab.pcap_count(f"ether src {MAC_OTHER_CA} and tcp dst port {HTTPS_PORT} and "
                              "tcp[tcpflags] & tcp-syn != 0")
        assert syns > 0, "iPXE connects, then refuses the chain"
        assert lab.http_requests(MAC_OTHER_CA) == []
