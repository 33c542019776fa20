"""Secure Boot with netbootd's own keys: OVMF's secboot build (q35 + SMM) with netbootd's PK,
KEK and db enrolled (`netbootd secureboot export` -> virt-fw-vars) HTTPS-boots the host's
per-boot UKI, which netbootd signed with its db key; the guest reports Secure Boot `enabled`.
Refused by the firmware: the unsigned UKI (a netbootd without keys) and a UKI signed by another
netbootd's db key. A `secure_boot = "required"` role is refused to a host whose firmware reported
Secure Boot off (audited).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import ROLE, Netbootd, Site
from testbed.vm import OVMF_VARS, VM, booted_or_fail, wait_refused

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

VIRT_FW_VARS = Path(sys.executable).parent / "virt-fw-vars"


def enrolled_vars(nb: Netbootd, out: Path) -> Path:
    """OVMF vars with this netbootd's PK/KEK/db enrolled and Secure Boot on."""
    keys = out.parent / f"{out.stem}-keys"
    text = nb.cli("secureboot", "export", str(keys))
    owner = text.split("--set-pk ", 1)[1].split()[0]
    subprocess.run([str(VIRT_FW_VARS), "-i", str(OVMF_VARS), "-o", str(out), "--sb",
                    "--set-pk", owner, str(keys / "PK.crt"), "--add-kek", owner,
                    str(keys / "KEK.crt"), "--add-db", owner, str(keys / "db.crt")],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def sb_site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not VIRT_FW_VARS.exists():
        pytest.fail("virt-firmware is in the test extra; `make venv` installs it")
    work = tmp_path_factory.mktemp("sb-site")
    with Site.start(work, e2e_env) as s:
        s.nb.cli("role", "chain", ROLE, "--transport", "https", "--http-boot", "uki")
        s.nb.cli("tls", "export", "--format", "esl", "-o", str(s.lab.workdir / "ca.esl"))
        other = Netbootd(work / "other")  # another netbootd's keys: "foreign"
        other.cli("secureboot", "init")
        s.other_vars = enrolled_vars(other, s.lab.workdir / "other-vars.fd")  # type: ignore[attr-defined]
        yield s


def sb_vm(site: Site, name: str, mac: str, vars_fd: Path | None) -> VM:
    site.nb.enroll(mac, ROLE, hostname=name)
    return site.vm(name, mac, "uefi-http", ca_esl=site.lab.workdir / "ca.esl",
                   sb_vars=vars_fd).start()


def test_a_unsigned_uki_is_refused_under_secure_boot(sb_site: Site) -> None:
    # netbootd has no Secure Boot keys yet: it serves the UKI unsigned
    vm = sb_vm(sb_site, "sb-unsigned", "52:54:00:e2:14:21", sb_site.other_vars)  # type: ignore[attr-defined]
    try:
        why = wait_refused(vm)
    finally:
        vm.stop()
    assert any("served UKI" in ln and "unsigned" in ln
               for ln in sb_site.nb.log_lines_about("52:54:00:e2:14:21"))
    print(f"\nunsigned UKI: {why}")


def test_b_signed_uki_boots_with_secure_boot_enabled(sb_site: Site, boot_timer: Any) -> None:
    site = sb_site
    site.nb.cli("secureboot", "init")
    ours = enrolled_vars(site.nb, site.lab.workdir / "our-vars.fd")
    mac = "52:54:00:e2:14:22"
    vm = sb_vm(site, "sb-ok", mac, ours)
    result = booted_or_fail(site.lab, site.nb, vm, timeout=150)
    boot_timer(result.seconds, "[OVMF Secure Boot, own keys -> HTTPS -> signed UKI]")
    assert vm.marker("SECUREBOOT") == "enabled"
    assert any("served UKI" in ln and " signed" in ln for ln in site.nb.log_lines_about(mac))
    events = json.loads(site.nb.cli("events", mac, "--json"))
    booted = [e for e in events if e["event"] == "booted"]
    assert booted and booted[-1]["detail"].get("secureboot") == "enabled", booted


def test_c_foreign_signed_uki_is_refused(sb_site: Site) -> None:
    vm = sb_vm(sb_site, "sb-foreign", "52:54:00:e2:14:23", sb_site.other_vars)  # type: ignore[attr-defined]
    try:
        why = wait_refused(vm)
    finally:
        vm.stop()
    assert any("served UKI" in ln and " signed" in ln
               for ln in sb_site.nb.log_lines_about("52:54:00:e2:14:23"))
    print(f"\nUKI signed by a key not in db: {why}")


def test_d_required_role_refused_to_a_host_with_secure_boot_off(sb_site: Site) -> None:
    site, mac = sb_site, "52:54:00:e2:14:24"
    site.nb.cli("role", "chain", ROLE, "--secure-boot", "required")
    vm = sb_vm(site, "sb-off", mac, None)  # plain OVMF: Secure Boot off
    # first contact: state unknown, signed UKI served
    booted_or_fail(site.lab, site.nb, vm, timeout=150)
    assert vm.marker("SECUREBOOT") == "disabled"
    again = site.vm("sb-off-2", mac, "uefi-http", ca_esl=site.lab.workdir / "ca.esl").start()
    try:
        wait_refused(again)
    finally:
        again.stop()
    lines = site.nb.log_lines_about(mac)
    assert any("UKI refused: Secure Boot required but the host reported it disabled" in ln
               for ln in lines), lines
    events = json.loads(site.nb.cli("events", mac, "--json"))
    assert any(e["event"] == "denied" and "Secure Boot required" in
               str(e["detail"].get("reason")) for e in events), events
