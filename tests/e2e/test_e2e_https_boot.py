"""HTTPS all the way: OVMF's own HTTPS boot, trusting netbootd's CA (exported by `netbootd tls
export --format esl`, given to the firmware as fw_cfg etc/edk2/https/cacerts), boots the host's
per-boot UKI from netbootd (role chain: transport https, http boot uki); the booted guest posts
its `booted` event over HTTPS. The LAN capture shows no plain-HTTP request and no TFTP from the
VM. The same VM with no CA, or with another netbootd's CA, refuses the server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import ROLE, SRV_IP, Netbootd, Site
from testbed.vm import booted_or_fail, wait_refused

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAC_OK = "52:54:00:e2:14:11"
MAC_NO_CA = "52:54:00:e2:14:12"
MAC_WRONG_CA = "52:54:00:e2:14:13"
HTTPS_PORT = 443  # `serve` as root
# What EDK2 prints when its HTTPS boot gives up (measured: no CA, wrong CA, wrong name)
REFUSED = ("Could not retrieve NBP", "Remote boot cancelled", "Unexpected network error")


@pytest.fixture(scope="module")
def https_site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Site.start(tmp_path_factory.mktemp("https-site"), e2e_env) as s:
        s.nb.cli("role", "chain", ROLE, "--transport", "https", "--http-boot", "uki")
        yield s


def export_ca(nb: Netbootd, out: Path) -> Path:
    nb.cli("tls", "export", "--format", "esl", "-o", str(out))
    return out


def test_https_uki_boot_with_exported_ca(https_site: Site, boot_timer: Any) -> None:
    site = https_site
    site.nb.enroll(MAC_OK, ROLE, hostname="h-ok")
    esl = export_ca(site.nb, site.lab.workdir / "ca.esl")
    explain = site.nb.cli("explain", MAC_OK, "--arch", "http", "--advertise-address", SRV_IP)
    assert "boot chain: transport https; UEFI HTTP boot gets its UKI; trust anchor netbootd CA" \
        in explain and f"offered UKI https://{SRV_IP}/uki/52-54-00-e2-14-11.efi" in explain, \
        explain
    vm = site.vm("h-ok", MAC_OK, "uefi-http", ca_esl=esl).start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=150)
    boot_timer(result.seconds, "[OVMF HTTPS boot -> per-boot UKI, events over HTTPS]")
    lab = site.lab
    # Everything the VM sent over TCP went to the HTTPS port; not one plain-HTTP request line.
    assert lab.pcap_count(f"ether src {MAC_OK} and tcp dst port {HTTPS_PORT}") > 0
    assert lab.http_requests(MAC_OK) == [], lab.http_requests(MAC_OK)
    assert lab.pcap_count(f"ether src {MAC_OK} and tcp and not dst port {HTTPS_PORT}") == 0
    assert lab.pcap_count(f"ether src {MAC_OK} and udp dst port 69") == 0
    # netbootd served the UKI and recorded the boot it named (its boot id) over HTTPS
    lines = site.nb.log_lines_about(MAC_OK)
    assert any("served UKI" in ln for ln in lines), lines
    assert result.host.get("last_boot")
    console = vm.console()
    assert f"netbootd.events=https://{SRV_IP}/api/v1/hosts/" in console or "BOOTED-EVENT-SENT "\
        f"https://{SRV_IP}/" in console, vm.console_tail(30)


@pytest.mark.parametrize("case", ["no-ca", "wrong-ca"])
def test_https_boot_refused_without_our_ca(https_site: Site, case: str,
                                           tmp_path: Path) -> None:
    site = https_site
    mac = MAC_NO_CA if case == "no-ca" else MAC_WRONG_CA
    site.nb.enroll(mac, ROLE, hostname=f"h-{case}")
    esl = None
    if case == "wrong-ca":  # another netbootd's CA: a valid chain, to the wrong root
        other = Netbootd(tmp_path / "other")
        other.cli("tls", "rotate", "--ca")
        esl = export_ca(other, tmp_path / "other-ca.esl")
    vm = site.vm(f"h-{case}", mac, "uefi-http", ca_esl=esl).start()
    try:
        wait_refused(vm, REFUSED)
        t = time.time() - vm.t_start
        time.sleep(1.0)
    finally:
        vm.stop()
    print(f"\n{case}: refused {t:.1f}s after QEMU start")
    host = site.nb.host(mac)
    assert host is not None and not host.get("last_boot"), host
    assert not any("served UKI" in ln for ln in site.nb.log_lines_about(mac))
    syns = site.lab.pcap_count(f"ether src {mac} and tcp dst port {HTTPS_PORT} and "
                               "tcp[tcpflags] & tcp-syn != 0")
    if case == "no-ca":
        assert syns == 0, "with no CA EDK2 should not even connect"  # measured in the reference
    else:
        assert syns > 0, "with a CA the firmware connects, then refuses the chain"
    assert site.lab.http_requests(mac) == []
