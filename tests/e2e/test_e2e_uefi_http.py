"""UEFI HTTP boot through netbootd's proxyDHCP: OVMF's own HTTP boot (arch 16, "HTTPClient"),
beside the site's DHCP server, fetches the iPXE binary netbootd names in its proxy offer; iPXE
then gets the per-host script, kernel and initrd and the guest reports `booted`.
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.lab import DHCP_IP, HTTP_PORT, ROLE, SRV_IP, TFTP_PORT, Site
from testbed.vm import booted_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MAC_HTTP = "52:54:00:e2:14:01"


def dhcp_replies(site: Site, mac: str, src: str) -> list[Any]:
    from scapy.layers.dhcp import BOOTP, DHCP

    b = mac.replace(":", "").lower()
    bpf = (f"src host {src} and udp src port 67 and udp[36:4] = 0x{b[:8]} "
           f"and udp[40:2] = 0x{b[8:]}")
    return [p for p in site.lab.packets(bpf) if BOOTP in p and DHCP in p]


def dhcp_options(p: Any) -> dict[str, Any]:
    from scapy.layers.dhcp import DHCP

    return {o[0]: o[1] for o in p[DHCP].options if isinstance(o, tuple) and len(o) >= 2}


def test_ovmf_http_boot_via_proxydhcp(site: Site, boot_timer: Any) -> None:
    from scapy.layers.dhcp import BOOTP

    site.nb.enroll(MAC_HTTP, ROLE, hostname="u-http")
    # (explain reads the config, where the HTTP port is 80; `serve` here was told 8080)
    explain = site.nb.cli("explain", MAC_HTTP, "--arch", "http", "--advertise-address", SRV_IP)
    assert "HTTPClient" in explain and f"http://{SRV_IP}/ipxe/ipxe.efi" in explain, explain
    url = f"http://{SRV_IP}:{HTTP_PORT}/ipxe/ipxe.efi"
    vm = site.vm("u-http", MAC_HTTP, "uefi-http").start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=150)
    boot_timer(result.seconds, "[OVMF HTTP boot -> ipxe.efi -> script]")

    # The firmware's own DHCP (arch 16) got netbootd's proxy offer: no address, HTTPClient, URL.
    offers = [p for p in dhcp_replies(site, MAC_HTTP, SRV_IP)
              if dhcp_options(p).get("vendor_class_id") == b"HTTPClient"]
    assert offers, "netbootd sent no HTTPClient proxy offer"
    for p in offers:
        assert p[BOOTP].yiaddr == "0.0.0.0"
        assert p[BOOTP].file.rstrip(b"\0").decode() == url
        assert dhcp_options(p)["message-type"] == 2  # an OFFER; never an ACK of the site's lease
    assert all(dhcp_options(p)["message-type"] != 5 or dhcp_options(p).get("vendor_class_id")
               != b"HTTPClient" for p in dhcp_replies(site, MAC_HTTP, SRV_IP))
    # The site server handed out the address (so this really ran beside a site DHCP server).
    assert any(p[BOOTP].yiaddr != "0.0.0.0" for p in dhcp_replies(site, MAC_HTTP, DHCP_IP))

    # EDK2 asked HEAD, then GET, for the binary; netbootd answered application/efi with a length.
    reqs = site.lab.http_requests(MAC_HTTP)
    binary = [(m, path) for port, m, path in reqs if path == "/ipxe/ipxe.efi"]
    assert binary[:2] == [("HEAD", "/ipxe/ipxe.efi"), ("GET", "/ipxe/ipxe.efi")], reqs
    heads = [h.decode("latin-1").lower() for h in site.lab.http_responses(HTTP_PORT, MAC_HTTP)]
    efi = [h for h in heads if "content-type: application/efi" in h]
    assert len(efi) >= 2 and all("content-length: " in h and h.startswith("http/1.1 200")
                                 for h in efi), heads
    # then iPXE fetched the host's script and the role's kernel and initrd
    paths = [path for _, m, path in reqs if m == "GET"]
    assert f"/boot/{MAC_HTTP.replace(':', '-')}.ipxe" in paths, paths
    assert any(p.endswith("/kernel") for p in paths) and any("/initrd" in p for p in paths)
    # no TFTP: HTTP boot is all HTTP
    assert site.lab.pcap_count(f"ether src {MAC_HTTP} and udp dst port {TFTP_PORT}") == 0
