"""A real VM fetches its identity from netbootd and reports the fingerprint of what it got.

The guest image is the test initramfs plus the identity overlay (images/test-initramfs/
identity_overlay.py): its hook reads netbootd.identity= and netbootd.pin= from the kernel command
line, fetches the bundle with curl --pinnedpubkey, unpacks it over /, prints the SHA256 fingerprint
of /etc/ssh/ssh_host_ed25519_key.pub (ssh-keygen -l), the files' modes and `hostid`, POSTs an
identity-installed event, and tries the same token again. The test matches the fingerprint against
`ssh-keygen -lf` on the known_hosts netbootd exports, and reads netbootd's audit trail: delivered
once to the VM's address with the ARP check answered by the VM's own MAC, the reuse refused.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import REPO
from testbed.lab import ROLE, Missing, Site, build_image
from testbed.skips import unavailable
from testbed.vm import booted_or_fail, diagnostics
from tests.integration.identity_helpers import assert_no_key_material

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAC = "52:54:00:e2:1d:01"
NAME = "e2e-identity"
OVERLAY_BUILDER = REPO / "images" / "test-initramfs" / "identity_overlay.py"


@pytest.fixture(scope="module")
def identity_site(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("identity")
    try:
        image = build_image(work / "image", overlay=(OVERLAY_BUILDER, []))
    except Missing as e:
        unavailable(str(e))
    with Site.start(work, image) as site:
        yield site


def test_vm_fetches_its_identity_once_over_pinned_https(
    identity_site: Site, boot_timer, tmp_path: Path
) -> None:
    site = identity_site
    site.nb.enroll(MAC, ROLE, hostname=NAME)  # enrolling generates the identity and arms it
    vm = site.vm(NAME, MAC, "bios").start()
    result = booted_or_fail(site.lab, site.nb, vm, timeout=150, grace=5)
    evidence = diagnostics(site.lab, site.nb, vm)
    assert vm.first_line_with("NETBOOTD-TEST: IDENTITY-FAILED") is None, evidence

    # What the VM says it received ...
    fingerprint = vm.marker("IDENTITY-FINGERPRINT")
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint), fingerprint
    # ... is the ed25519 key netbootd's known_hosts names for it (ssh-keygen -lf on the export)
    kh = tmp_path / "known_hosts"
    site.nb.cli("keys", "export", "known_hosts", "-o", str(kh))
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(kh)], capture_output=True, text=True, check=True
    ).stdout
    ours = [line for line in listed.splitlines() if NAME in line and "(ED25519)" in line]
    assert len(ours) == 1 and ours[0].split()[1] == fingerprint, (listed, fingerprint)
    ip = result.host["last_boot_ip"]
    assert f"{NAME},{ip}" in kh.read_text(), "known_hosts names it by hostname and last-seen IP"

    # files installed with their modes; /etc/hostid as glibc (busybox hostid) reads it back
    assert vm.marker("IDENTITY-MODES") == "600 600 600 644"
    keys = json.loads(site.nb.cli("keys", "list", "--json"))
    (mine,) = [k for k in keys if k["hostname"] == NAME]
    assert vm.marker("IDENTITY-HOSTID") == mine["hostid"]
    assert mine["ssh_ed25519_fingerprint"] == fingerprint and mine["armed"] is False

    # a server key that does not match the pin is refused by the client (curl exit 90) ...
    assert vm.marker("IDENTITY-WRONG-PIN") == "curl exit 90"
    # ... and the second use of the same token gets 403
    assert vm.marker("IDENTITY-REUSE") == "403"

    events = json.loads(site.nb.cli("events", NAME, "--json"))
    kinds = [e["event"] for e in events]
    assert kinds.count("identity-issued") >= 1 and kinds.count("identity-delivered") == 1, kinds
    delivered = next(e for e in events if e["event"] == "identity-delivered")
    assert delivered["source_ip"] == ip
    assert delivered["detail"]["arp"] == f"match ({MAC} on eth0)", delivered
    denied = [e for e in events if e["event"] == "identity-denied"]
    assert len(denied) == 1 and "token already used" in denied[0]["detail"]["reason"]
    assert denied[0]["source_ip"] == ip
    installed = next(e for e in events if e["event"] == "identity-installed")
    assert installed["detail"]["ed25519"] == fingerprint
    boot_timer(result.seconds, "[bios, with identity over pinned HTTPS]")

    # nothing secret in netbootd's log
    log = site.nb.proc.log_path.read_text() if site.nb.proc and site.nb.proc.log_path else ""
    assert "identity delivered" in log
    assert_no_key_material(site.nb.state_dir, log)
