"""Machines that keep Microsoft's keys: the shim + MOK path (issue 14). OVMF's secboot build
(q35 + SMM) with Microsoft's vars (OVMF_VARS_4M.ms.fd) plus netbootd's db certificate as a MOK
(`netbootd secureboot export` -> `virt-fw-vars --add-mok`) HTTPS-boots, through netbootd's
proxyDHCP beside the site DHCP server, Debian's real Microsoft-signed shim
(`/uki/<mac>/shimx64.efi`, shim-signed fetched with `apt-get download` and `dpkg-deb -x` by
testbed/shim.py, never installed); shim fetches `grubx64.efi` from the same directory, which is
the host's per-boot UKI signed with netbootd's db key, verifies it against MokList and runs it;
the guest reports `booted` with Secure Boot `enabled`.

Negative: the same VM and Microsoft's vars WITHOUT our MOK. shim is served and fetches the
signed UKI (netbootd's log says so), then refuses it. Debian's shim may print nothing on the
serial console when it refuses (measured in ../shared/reference/uefi-https: with a second stage
it cannot verify it hangs silently), so the evidence is what OVMF/shim print if anything
(REFUSED) or else: no kernel start (neither the kernel's nor /init's first line) within
NO_KERNEL_S seconds of the UKI being served, while the positive boot's whole run takes ~20-60 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import ROLE, SRV_IP, Netbootd, Site
from testbed.shim import ShimMissing, debian_shim
from testbed.skips import unavailable
from testbed.vm import VM, booted_or_fail, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

VIRT_FW_VARS = Path(sys.executable).parent / "virt-fw-vars"
MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")  # Microsoft's KEK/db, Secure Boot on
MAC_OK = "52:54:00:e2:14:31"
MAC_NO_MOK = "52:54:00:e2:14:32"
# What shim or OVMF print when an image fails verification (if they print anything)
REFUSED = ("Verification failed", "Security Violation", "Access Denied", "Failed to load image")
KERNEL_STARTED = ("Linux version", "NETBOOTD-TEST: init started")
NO_KERNEL_S = 75


@pytest.fixture(scope="module")
def shim_site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not VIRT_FW_VARS.exists():
        pytest.fail("virt-firmware is in the test extra; `make venv` installs it")
    if not MS_VARS.exists():
        unavailable(f"{MS_VARS} missing (Debian package ovmf)")
    try:
        shim = debian_shim()
    except ShimMissing as e:
        unavailable(f"Debian's shim-signed cannot be had: {e}")
    work = tmp_path_factory.mktemp("shim-site")
    config = work / "netbootd.toml"
    # debug: the log shows which optional files shim probed (404, debug lines only)
    config.write_text(f'log_level = "debug"\n[boot]\nshim = "{shim}"\n')
    with Site.start(work, e2e_env, config=config) as s:
        s.nb.cli("role", "chain", ROLE, "--transport", "https", "--loader", "shim")
        s.nb.cli("tls", "export", "--format", "esl", "-o", str(s.lab.workdir / "ca.esl"))
        s.nb.cli("secureboot", "init")
        s.config = config  # type: ignore[attr-defined]
        yield s


def ms_vars(nb: Netbootd, out: Path, mok: bool) -> Path:
    """Microsoft's vars, with this netbootd's db certificate in MokList if `mok`."""
    keys = out.parent / f"{out.stem}-keys"
    text = nb.cli("secureboot", "export", str(keys))
    owner = text.split("--add-mok ", 1)[1].split()[0]
    argv = [str(VIRT_FW_VARS), "-i", str(MS_VARS), "-o", str(out)]
    if mok:
        argv += ["--add-mok", owner, str(keys / "db.cer")]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return out


def shim_vm(site: Site, name: str, mac: str, vars_fd: Path) -> VM:
    if site.nb.host(mac) is None:
        site.nb.enroll(mac, ROLE, hostname=name)
    return site.vm(name, mac, "uefi-http", ca_esl=site.lab.workdir / "ca.esl",
                   sb_vars=vars_fd).start()


def test_a_shim_boots_the_signed_uki_with_our_mok(shim_site: Site, boot_timer: Any) -> None:
    site = shim_site
    site.nb.enroll(MAC_OK, ROLE, hostname="shim-ok")
    explain = site.nb.cli("--config", str(site.config), "explain", MAC_OK, "--arch", "http",  # type: ignore[attr-defined]
                          "--advertise-address", SRV_IP)
    assert "UEFI HTTP boot gets shim, then its UKI" in explain, explain
    assert "Microsoft-signed, verified by the firmware's db" in explain, explain
    assert "verified by shim against MokList" in explain and "REFUSED" not in explain, explain
    vm = shim_vm(site, "shim-ok", MAC_OK, ms_vars(site.nb, site.lab.workdir / "ms-mok.fd", True))
    result = booted_or_fail(site.lab, site.nb, vm, timeout=200)
    boot_timer(result.seconds, "[OVMF Secure Boot, Microsoft keys + MOK -> HTTPS -> Debian shim "
               "-> signed UKI]")
    assert vm.marker("SECUREBOOT") == "enabled"
    lines = site.nb.log_lines_about(MAC_OK)
    assert any("served shim" in ln for ln in lines), lines
    assert any("served UKI as shim's grubx64.efi" in ln and " signed" in ln for ln in lines), lines
    # shim's optional probes were answered 404 quietly (debug lines), nothing else was asked
    probes = [ln for ln in lines if "shim probed" in ln]
    print("\nshim probed: " + ", ".join(sorted({ln.split("shim probed ")[1].split(":")[0]
                                                for ln in probes})))
    assert not [ln for ln in lines if "in its shim directory" in ln], lines
    events = json.loads(site.nb.cli("events", MAC_OK, "--json"))
    booted = [e for e in events if e["event"] == "booted"]
    assert booted and booted[-1]["detail"].get("secureboot") == "enabled", booted


def test_b_without_our_mok_shim_does_not_run_the_uki(shim_site: Site) -> None:
    site = shim_site
    vm = shim_vm(site, "shim-no-mok", MAC_NO_MOK,
                 ms_vars(site.nb, site.lab.workdir / "ms-only.fd", False))
    served_at = None
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and not vm.exited():
            console = vm.console()
            if any(k in console for k in KERNEL_STARTED):
                raise AssertionError(f"the kernel started without our MOK\n{vm.console_tail(20)}")
            if served_at is None and any("served UKI as shim's grubx64.efi" in ln
                                         for ln in site.nb.log_lines_about(MAC_NO_MOK)):
                served_at = time.monotonic()
            hit = next((m for m in REFUSED if m in console), None)
            if served_at is not None and (hit or time.monotonic() - served_at > NO_KERNEL_S):
                break
            time.sleep(1.0)
        assert served_at is not None, (
            f"shim never fetched its second stage\n{diagnostics(site.lab, site.nb, vm)}")
        assert not any(k in vm.console() for k in KERNEL_STARTED), vm.console_tail(20)
    finally:
        vm.stop()
    console = vm.console()
    hit = next((m for m in REFUSED if m in console), None)
    # shim draws its error in a text-mode box: the message up to the box's frame
    said = re.match(r"[ -~]*", console[console.index(hit):]).group(0).strip() if hit else None
    print(f"\nwithout the MOK: {said or f'no kernel start within {NO_KERNEL_S} s of the UKI'}")
    assert site.nb.host(MAC_NO_MOK)["last_boot"] is None  # type: ignore[index]
