"""A real VM beside an attacker (issue #13's acceptance): from a namespace on the same LAN at
another address than the host's own DHCP exchange, a client can neither trip nor clear the
host's re-provision, nor redeem its identity, nor move its last boot -- even with the host's own
boot token, sniffed off the LAN -- while the host's own boot does all three.

The guest image carries both test overlays: the identity hook (fetches its identity over pinned
HTTPS, reports identity-installed) and the provision hook (lays out its disk when the role's flag
is on its command line and reports `provisioned`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import REPO
from testbed.lab import HTTP_PORT, ROLE, SRV_IP, Missing, Site, build_image
from testbed.netns import http_get, in_netns
from testbed.skips import unavailable
from testbed.vm import booted_or_fail, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:a7:01"
HYPHEN = MAC.replace(":", "-")
NAME = "e2e-victim"
ATTACKER = "192.168.77.66"
FLAG = "homelab.provision_disks=true"
IMAGES = REPO / "images" / "test-initramfs"


@pytest.fixture(scope="module")
def attacked_site(e2e_env: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, str]]:
    work = tmp_path_factory.mktemp("attacker")
    overlays = []
    for builder, args in (("identity_overlay.py", []), ("provision_overlay.py", ["--flag", FLAG])):
        out = work / builder.split("_")[0]
        r = subprocess.run([sys.executable, str(IMAGES / builder), str(out), *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 2:
            unavailable(r.stderr.strip().splitlines()[-1])
        assert r.returncode == 0, r.stderr
        overlays += ["--overlay", str(out)]
    mods = [a for m in ("virtio_blk", "ext4", "crc32c_generic") for a in ("--module", m)]
    try:
        image = build_image(work / "image", *overlays, *mods)
    except Missing as e:
        unavailable(str(e))
    with Site.start(work, image) as site:
        yield site, site.lab.add_host("atk", ATTACKER)


def _post(ns: str, url: str, body: dict[str, object]) -> int:
    def go() -> int:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    return in_netns(ns, go)


def test_an_attacker_beside_the_host_can_neither_trip_clear_redeem_nor_move(
    attacked_site: tuple[Site, str], boot_timer, tmp_path: Path
) -> None:
    site, atk = attacked_site
    nb = site.nb
    nb.cli("role", "set", ROLE, "--provision-flag", FLAG)
    nb.enroll(MAC, ROLE, hostname=NAME)  # identity generated and armed
    nb.cli("reprovision", NAME, "--max-boots", "3")
    base = f"http://{SRV_IP}:{HTTP_PORT}"
    events = f"{base}/api/v1/hosts/{HYPHEN}/events"

    # -- the attacker, before the host boots: four script fetches (the loop guard is 3)
    for _ in range(4):
        status, body = http_get(atk, f"{base}/boot/{HYPHEN}.ipxe", timeout=5)
        script = body.decode()
        assert status == 200 and "kernel " in script
        assert "netbootd.boot=" not in script and "netbootd.identity=" not in script
        assert FLAG not in script
    host = nb.host(MAC)
    assert host is not None and host["state"] == "armed" and host["provision"]["boots"] == 0
    # ... reports without a token, and with made-up ones, change nothing
    assert _post(atk, events, {"event": "provisioned"}) == 401
    assert _post(atk, events, {"event": "booted"}) == 401
    assert _post(atk, events, {"event": "booted", "token": "A" * 56}) == 403
    status, _ = http_get(atk, f"{base}/identity/{'B' * 51}", timeout=5)  # (plain HTTP)
    assert status == 403
    host = nb.host(MAC)
    assert host["last_boot"] is None and host["state"] == "armed"

    # -- the host's own boot: bound to its DHCP exchange, it does all three
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (64 << 20))
    vm = site.vm(NAME, MAC, "bios", disks=[disk]).start()
    result = booted_or_fail(site.lab, nb, vm, timeout=180, grace=5)
    boot_timer(result.seconds, "[bios, beside an attacker: identity + re-provision + booted]")
    evidence = diagnostics(site.lab, nb, vm)
    deadline = time.monotonic() + 30
    while nb.host(MAC)["state"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    host = nb.host(MAC)
    vm_ip = host["last_boot_ip"]
    assert vm_ip and vm_ip != ATTACKER, evidence
    assert host["state"] == "ok" and host["last_provisioned"] is not None, (host, evidence)
    evs = json.loads(nb.cli("events", NAME, "--json"))
    kinds = [e["event"] for e in evs]
    assert kinds.count("identity-delivered") == 1 and kinds.count("provisioned") == 1, kinds
    delivered = next(e for e in evs if e["event"] == "identity-delivered")
    assert delivered["source_ip"] == vm_ip
    assert next(e for e in evs if e["event"] == "provisioned")["source_ip"] == vm_ip
    assert "provision-failed" not in kinds
    assert all(e["source_ip"] != ATTACKER for e in evs
               if e["event"] in ("booted", "provisioned", "identity-delivered"))
    refused = [e for e in evs if e["event"] in ("unauthenticated-report", "denied")]
    assert {e["source_ip"] for e in refused} == {ATTACKER}, refused

    # -- the host's boot token, sniffed off the LAN (the script travels in plain HTTP), is
    #    useless from the attacker's address
    sniffed = re.findall(rb"netbootd\.boot=([A-Za-z0-9_-]{56})",
                         site.lab.pcap.read_bytes())
    assert sniffed, "the host's script is in the capture"
    last_boot = host["last_boot"]
    assert _post(atk, events, {"event": "booted", "token": sniffed[-1].decode()}) == 403
    assert _post(atk, events, {"event": "provisioned", "token": sniffed[-1].decode()}) == 403
    assert nb.host(MAC)["last_boot"] == last_boot
    assert "bound to " + vm_ip in json.dumps(json.loads(nb.cli("events", NAME, "--json"))[-1])
