"""The client matrix: real firmware PXE clients (QEMU, TCG) boot from `netbootd serve` in proxy
mode.

All tests in this module share one lab and one netbootd (the `site` fixture): every test uses its
own MAC, so a boot is only ever credited to the test that made it, and test e relies on netbootd
having been running all along.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from testbed.lab import DHCP_IP, HTTP_PORT, ROLE, SRV_IP, TFTP_PORT, Site, mac_colon
from testbed.vm import GAVE_UP, BootFailed, BootResult, diagnostics, parse_time, wait_booted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# One MAC per client so netbootd's state tells the tests apart.
MAC_BIOS = "52:54:00:e2:00:0a"
MAC_UEFI_PXE = "52:54:00:e2:00:0b"
MAC_UEFI = "52:54:00:e2:00:0c"
MAC_LATE = "52:54:00:e2:00:0d"  # unenrolled in test d, enrolled while netbootd runs in test e
UNENROLLED_WAIT = 40.0  # bound for test d; iPXE gives up after ~8 s under TCG


def boot_and_confirm(
    site: Site, name: str, mac: str, client: str, timeout: float = 75
) -> BootResult:
    """Start a VM, wait until netbootd's state shows its boot; on failure show the evidence."""
    vm = site.vm(name, mac, client).start()
    try:
        return wait_booted(site.nb, vm, timeout=timeout)
    except BootFailed as e:
        failure = f"{e}\n{diagnostics(site.lab, site.nb, vm)}"
    finally:
        vm.stop(grace=3)
    pytest.fail(failure, pytrace=False)


def assert_booted_in_state(host: dict[str, Any], mac: str, hostname: str) -> None:
    assert mac_colon(host["mac"]) == mac_colon(mac)
    assert host["hostname"] == hostname
    assert host["role"] == ROLE
    assert parse_time(host["last_boot"]) is not None


def chaddr_bpf(mac: str) -> str:
    """BPF matching a BOOTP/DHCP packet whose client hardware address is `mac`."""
    b = mac.replace(":", "").lower()
    return f"udp[36:4] = 0x{b[:8]} and udp[40:2] = 0x{b[8:]}"


@pytest.mark.parametrize(
    ("client", "mac"),
    [
        pytest.param("bios", MAC_BIOS, id="a-seabios-virtio-ipxe-rom"),
        pytest.param("uefi-pxe", MAC_UEFI_PXE, id="b-ovmf-native-pxe"),
        pytest.param("uefi", MAC_UEFI, id="c-ovmf-efi-ipxe-rom"),
    ],
)
def test_client_boots(site: Site, boot_timer: Any, client: str, mac: str) -> None:
    name = f"m-{client}"
    site.nb.enroll(mac, ROLE, hostname=name)
    result = boot_and_confirm(site, name, mac, client)
    assert_booted_in_state(result.host, mac, name)
    if client == "uefi-pxe":
        # The firmware's own PXE fetched iPXE over TFTP from netbootd before the HTTP part.
        tftp = site.lab.pcap_count(
            f"ether src {mac} and dst host {SRV_IP} and udp dst port {TFTP_PORT}"
        )
        assert tftp > 0, "OVMF native PXE should have fetched ipxe.efi from netbootd's TFTP server"
    boot_timer(result.seconds, f"[{client}; state confirmed at {result.confirmed_after:.1f}s]")


def test_d_unenrolled_mac_is_ignored(site: Site) -> None:
    mac = MAC_LATE
    assert site.nb.host(mac) is None, "precondition: the MAC is not enrolled"
    vm = site.vm("d-unenrolled", mac, "bios").start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < UNENROLLED_WAIT and not vm.exited():
            if any(m in vm.console() for m in GAVE_UP):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # anything netbootd would still send lands in the capture now
        waited = time.monotonic() - t0
    finally:
        vm.stop()
    evidence = diagnostics(site.lab, site.nb, vm)
    print(f"\nunenrolled MAC watched for {waited:.1f}s")

    # The client really asked: it ran DHCP on the LAN (else this test would prove nothing).
    asked = site.lab.pcap_count(f"ether src {mac} and udp dst port 67")
    assert asked > 0, f"the VM never sent a DHCP request\n{evidence}"
    # The chaddr filter below does match DHCP replies to this VM: the site server's (a control).
    site_replies = site.lab.pcap_count(
        f"src host {DHCP_IP} and udp src port 67 and {chaddr_bpf(mac)}"
    )
    assert site_replies > 0, f"no site DHCP reply matched the chaddr filter\n{evidence}"
    # netbootd said nothing to it: no proxyDHCP offer/ack on 67 or 4011 for this chaddr ...
    replies = site.lab.pcap_count(
        f"src host {SRV_IP} and udp and (src port 67 or src port 4011) and {chaddr_bpf(mac)}"
    )
    assert replies == 0, f"netbootd answered an unenrolled MAC ({replies} packets)\n{evidence}"
    # ... so the VM never fetched a script, kernel or iPXE binary from it
    fetched = site.lab.pcap_count(
        f"ether src {mac} and dst host {SRV_IP} and "
        f"(tcp dst port {HTTP_PORT} or udp dst port {TFTP_PORT})"
    )
    assert fetched == 0, f"the unenrolled VM talked HTTP/TFTP to netbootd\n{evidence}"
    served = [
        line
        for line in site.nb.log_lines_about(mac)
        if any(w in line for w in ("served", "artifact", ".ipxe", "script"))
    ]
    assert not served, f"netbootd's log shows it served the unenrolled MAC: {served}"
    host = site.nb.host(mac)
    assert host is None or parse_time(host.get("last_boot")) is None, host


def test_e_enrolled_while_running_boots_without_restart(site: Site, boot_timer: Any) -> None:
    assert site.nb.proc is not None
    pid = site.nb.proc.pid
    host = site.nb.host(MAC_LATE)
    assert host is None or parse_time(host.get("last_boot")) is None, "precondition: never booted"
    site.nb.enroll(MAC_LATE, ROLE, hostname="e-late")  # netbootd keeps running
    result = boot_and_confirm(site, "e-late", MAC_LATE, "bios")
    assert_booted_in_state(result.host, MAC_LATE, "e-late")
    assert site.nb.proc.pid == pid and site.nb.proc.alive(), "netbootd was restarted or died"
    boot_timer(
        result.seconds,
        f"[bios, enrolled at runtime; state confirmed at {result.confirmed_after:.1f}s]",
    )
