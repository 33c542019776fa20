"""A real VM PXE-boots from netbootd while an attacker on the LAN holds 5,000 connections.

netbootd runs as a systemd service would start it (soft RLIMIT_NOFILE 1024) with its default
limits. The attacker (testbed.flood, in a namespace of its own on the lab's bridge via
`Lab.add_host`, from 50 addresses) keeps 5,000 connections to the HTTP and HTTPS ports, idle
or with half a request head / half a ClientHello, re-opening each one the server closes. Then
OVMF's own PXE (DHCP, proxyDHCP, TFTP ipxe.efi) and iPXE (HTTP script, kernel, initrd) boot the
VM to its booted event. The daemon's log stays under LOG_LINES lines / LOG_BYTES bytes and has
no traceback.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import REPO
from testbed.lab import HTTP_PORT, ROLE, SRV_IP, Site
from testbed.procs import wait_for
from testbed.skips import unavailable
from testbed.vm import booted_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

MAC = "52:54:00:e2:f1:01"
ATTACK = 5000
SOURCES = [f"192.168.77.{200 + i}" for i in range(50)]  # outside the site's DHCP range
HTTPS_PORT = 443  # the lab's netbootd runs as root: the default HTTPS port
LOG_LINES = 60
LOG_BYTES = 12000


@pytest.fixture(scope="module")
def flood_site(e2e_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 524288 if hard == resource.RLIM_INFINITY else min(hard, 524288)
    if hard < 4096:
        unavailable(f"the hard RLIMIT_NOFILE here is {hard} (netbootd's defaults need ~3,000)")
    with Site.start(tmp_path_factory.mktemp("flood"), e2e_env, nofile=(1024, hard)) as site:
        yield site


def _stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def test_vm_boots_while_5000_connections_are_held(flood_site: Site, boot_timer: Any,
                                                  tmp_path: Path) -> None:
    site, lab, nb = flood_site, flood_site.lab, flood_site.nb
    assert nb.proc is not None
    nb.enroll(MAC, ROLE, hostname="flooded")
    atk = lab.add_host("atk", "192.168.77.3", *SOURCES)
    stats = tmp_path / "flood.json"
    flood = lab.spawn("flood", [
        sys.executable, "-m", "testbed.flood", "--count", str(ATTACK), "--partial", "0.5",
        "--target", f"{SRV_IP}:{HTTP_PORT}", "--target", f"tls:{SRV_IP}:{HTTPS_PORT}",
        *[a for src in SOURCES for a in ("--source", src)],
        # re-opening at 200/s keeps the house full without taking the TCG guest's CPU
        "--reopen-rate", "200", "--duration", "300", "--stats", str(stats)], ns=atk, cwd=REPO)
    wait_for(lambda: _stats(stats).get("established", 0) >= ATTACK, 60,
             f"the attacker to open {ATTACK} connections")
    held = _stats(stats)
    fds = len(os.listdir(f"/proc/{nb.proc.pid}/fd"))
    vm = site.vm("flooded", MAC, "uefi-pxe").start()
    result = booted_or_fail(lab, nb, vm, timeout=240)
    during = _stats(stats)
    lab.stop(flood)
    assert result.host["hostname"] == "flooded"
    assert nb.proc.alive()
    assert fds < 2 * 1024 + 300  # at most its 1,024 connections, whatever the attacker holds
    assert during["closed_by_server"] > 0  # the attacker's idle connections made room
    tftp = lab.pcap_count(f"ether src {MAC} and dst host {SRV_IP} and udp dst port 69")
    assert tftp > 0, "OVMF fetched ipxe.efi over TFTP"
    lab.stop(nb.proc)  # the last interval's summary lines are written on the way out
    log = nb.proc.log_path.read_text() if nb.proc.log_path else ""
    lines = log.splitlines()
    assert "Traceback" not in log, log[-3000:]
    assert len(lines) < LOG_LINES and len(log.encode()) < LOG_BYTES, log[-3000:]
    summary = {"attacker_when_the_vm_started": held, "attacker_at_the_end": during,
               "server_fds": fds, "boot_seconds": round(result.seconds, 1),
               "log_lines": len(lines), "log_bytes": len(log.encode())}
    print("\nflood e2e:", json.dumps(summary))
    boot_timer(result.seconds, f"[uefi-pxe beside {ATTACK} attacker connections; "
                               f"server fds {fds}, log {len(lines)} lines]")
