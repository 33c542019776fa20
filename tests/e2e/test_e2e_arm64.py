"""arm64 (qemu-system-aarch64 `virt`, AAVMF, TCG) beside the site's DHCP server, the test image
built for arm64 (images/test-initramfs/build.py --arch arm64: Debian's arm64 kernel and
busybox-static, systemd-boot-efi:arm64's stub, through a private apt state):

  - AAVMF's own PXE (arch 11) -> TFTP netbootd-ipxe/arm64/ipxe.efi (`netbootd ipxe build`
    with aarch64-linux-gnu-gcc; no boot_files.arm64 configured: the build answers arm64) ->
    script, kernel and initrd over HTTPS -> `booted`;
  - AAVMF's HTTPS boot (arch 19, netbootd's CA in etc/edk2/https/cacerts) of the host's
    per-boot UKI, assembled on the arm64 stub (the kernel's PE header picks it) -> `booted`;
  - AAVMF's HTTPS boot of /ipxe/netbootd-ipxe/arm64/ipxe.efi (arch 19, iPXE payload) -> the
    script, kernel and initrd over HTTPS -> `booted`: HTTPS from the firmware on.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import ipxebuild
from testbed.lab import SRV_IP, Lab, Missing, Netbootd, build_image
from testbed.skips import missing_files, missing_tools, require, unavailable
from testbed.vm import AAVMF_CODE, AAVMF_VARS, QEMU_ARM64, VM, booted_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(ipxebuild.BUILD_TIMEOUT) + 900)]

MAC_PXE = "52:54:00:a6:14:01"
MAC_UKI = "52:54:00:a6:14:02"
MAC_HTTP_IPXE = "52:54:00:a6:14:03"
HTTPS_PORT = 443
CMDLINE = "console=ttyAMA0 quiet"


@dataclass
class Arm64Site:
    lab: Lab
    nb: Netbootd
    image: dict[str, str]
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def arm64_site(e2e_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Site]:
    require(missing_tools({QEMU_ARM64: "qemu-system-arm"})
            + missing_files({AAVMF_CODE: "qemu-efi-aarch64", AAVMF_VARS: "qemu-efi-aarch64"})
            + ipxebuild.missing(arm64=True))
    work = tmp_path_factory.mktemp("arm64")
    try:
        image = build_image(work / "image", "--arch", "arm64")
    except Missing as e:
        unavailable(f"no arm64 guest image: {e}")
    config = work / "netbootd.toml"
    config.write_text(f'[boot]\nuki_stub_arm64 = "{image["uki_stub"]}"\n')
    with Lab(work / "lab") as lab:
        nb = Netbootd(work / "state")
        for role, payload in (("arm64-ipxe", "ipxe"), ("arm64-uki", "uki")):
            nb.role_add(role, Path(image["vmlinuz"]), [Path(image["initramfs"])], CMDLINE)
            nb.cli("role", "chain", role, "--transport", "https", "--http-boot", payload)
        nb.serve(lab, config=config)
        manifest = ipxebuild.build(nb, SRV_IP, "arm64-efi", https_port=HTTPS_PORT)
        time.sleep(1.5)  # serve looks at the build pointer once a second
        yield Arm64Site(lab, nb, image, manifest)


def _boot(site: Arm64Site, name: str, mac: str, client: str, **kw: Any) -> tuple[VM, float]:
    vm = VM(site.lab, name, mac, client, memory_mb=1024, **kw).start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=300)
    assert result.host.get("last_boot")
    return vm, result.seconds


def test_arm64_pxe_to_netbootd_ipxe_over_https(arm64_site: Arm64Site, boot_timer: Any) -> None:
    site = arm64_site
    site.nb.enroll(MAC_PXE, "arm64-ipxe", hostname="a64-pxe")
    explain = site.nb.cli("explain", MAC_PXE, "--arch", "arm64", "--advertise-address", SRV_IP)
    assert "netbootd-ipxe/arm64/ipxe.efi" in explain, explain
    vm, seconds = _boot(site, "a64-pxe", MAC_PXE, "arm64-pxe")
    boot_timer(seconds, "[AAVMF PXE -> netbootd-built arm64 iPXE -> HTTPS script/kernel/initrd]")
    log = site.nb.proc.log_path.read_text()  # type: ignore[union-attr]
    assert re.search(r"tftp: served /?netbootd-ipxe/arm64/ipxe\.efi", log), log[-2000:]
    console = vm.console()
    assert f"https://{SRV_IP}/boot/52-54-00-a6-14-01.ipxe" in console, vm.console_tail(40)
    fetched = re.findall(rf"https://{re.escape(SRV_IP)}/artifacts/[0-9a-f]{{64}}/(\w+)", console)
    assert "kernel" in fetched and any(n.startswith("initrd") for n in fetched), fetched
    assert "aarch64" in console or "arm64" in console, vm.console_tail(40)  # the guest's uname
    assert site.lab.http_requests(MAC_PXE) == []
    assert site.lab.pcap_count(f"ether src {MAC_PXE} and tcp and not dst port {HTTPS_PORT}") == 0


def test_arm64_https_boot_of_an_arm64_uki(arm64_site: Arm64Site, boot_timer: Any,
                                          tmp_path: Path) -> None:
    site = arm64_site
    site.nb.enroll(MAC_UKI, "arm64-uki", hostname="a64-uki")
    esl = tmp_path / "ca.esl"
    site.nb.cli("tls", "export", "--format", "esl", "-o", str(esl))
    vm, seconds = _boot(site, "a64-uki", MAC_UKI, "arm64-http", ca_esl=esl)
    boot_timer(seconds, "[AAVMF HTTPS boot -> per-boot arm64 UKI]")
    lines = site.nb.log_lines_about(MAC_UKI)
    assert any("served UKI" in ln for ln in lines), lines
    assert site.lab.http_requests(MAC_UKI) == []
    assert site.lab.pcap_count(f"ether src {MAC_UKI} and tcp and not dst port {HTTPS_PORT}") == 0
    assert site.lab.pcap_count(f"ether src {MAC_UKI} and udp dst port 69") == 0
    assert shutil.which("aarch64-linux-gnu-objcopy")


def test_arm64_https_boot_of_netbootd_ipxe(arm64_site: Arm64Site, boot_timer: Any,
                                           tmp_path: Path) -> None:
    site = arm64_site
    site.nb.enroll(MAC_HTTP_IPXE, "arm64-ipxe", hostname="a64-http")
    explain = site.nb.cli("explain", MAC_HTTP_IPXE, "--arch", "http-arm64",
                          "--advertise-address", SRV_IP)
    url = f"https://{SRV_IP}/ipxe/netbootd-ipxe/arm64/ipxe.efi"
    assert url in explain, explain
    esl = tmp_path / "ca.esl"
    site.nb.cli("tls", "export", "--format", "esl", "-o", str(esl))
    vm, seconds = _boot(site, "a64-http", MAC_HTTP_IPXE, "arm64-http", ca_esl=esl)
    boot_timer(seconds, "[AAVMF HTTPS boot -> netbootd-built arm64 iPXE -> HTTPS]")
    log = site.nb.proc.log_path.read_text()  # type: ignore[union-attr]
    assert "served netbootd-ipxe/arm64/ipxe.efi (netbootd's build)" in log, log[-2000:]
    assert f"https://{SRV_IP}/boot/52-54-00-a6-14-03.ipxe" in vm.console()
    assert site.lab.http_requests(MAC_HTTP_IPXE) == []
    mac = MAC_HTTP_IPXE
    assert site.lab.pcap_count(f"ether src {mac} and tcp and not dst port {HTTPS_PORT}") == 0
    assert site.lab.pcap_count(f"ether src {mac} and udp dst port 69") == 0
