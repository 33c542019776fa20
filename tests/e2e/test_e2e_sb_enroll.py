"""Secure Boot enrolled through netbootd's signed .auth files, checked by the firmware itself.

OVMF's secboot build starts in setup mode (a fresh OVMF_VARS_4M.fd: no PK). The first boot
HTTPS-boots netbootd's UKI (setup mode runs anything); a hook in the guest writes the files
`netbootd secureboot export` made to efivarfs in the order that makes OVMF check them: PK.auth
(setup -> user mode), then a dbx update signed by another netbootd's KEK (OVMF must refuse
it: that KEK is not enrolled), then KEK.auth (checked against the PK just enrolled), then db.auth
(checked against that KEK). The second boot, on the vars the first one left, runs with Secure
Boot on and boots netbootd's signed UKI: `booted`, Secure Boot `enabled`; a third, served by
the other netbootd (its UKI signed by a key not in db), is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import ROLE, Missing, Netbootd, Site, build_image
from testbed.skips import require, unavailable
from testbed.vm import VM, booted_or_fail, wait_refused

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:14:31"
GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE: PK, KEK
IMAGE_DB = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # EFI_IMAGE_SECURITY_DATABASE: db
# Sourced by the test image's /init (hooks.d): each write is one write(2) of the attributes
# (NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x27, little endian) + the .auth file,
# which is what efi-updatevar does; the firmware's answer is the write's result.
HOOK = f"""\
mkdir -p /sys/firmware/efi/efivars
mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
nb_put() {{
    {{ printf '\\047\\000\\000\\000'; cat "/enroll/$3"; }} > /tmp/var.bin
    if nb_err=$(dd if=/tmp/var.bin of="/sys/firmware/efi/efivars/$1-$2" bs=65536 \
            2>&1 >/dev/null); then echo ok
    else echo refused; nb_log "ENROLL-ERROR $1: $nb_err" >&2
    fi
}}
NB_E_PK=$(nb_put PK {GLOBAL} PK.auth)
NB_E_BAD=$(nb_put dbx {IMAGE_DB} foreign-dbx.auth)
NB_E_KEK=$(nb_put KEK {GLOBAL} KEK.auth)
NB_E_DB=$(nb_put db {IMAGE_DB} db.auth)
nb_log "ENROLL PK=$NB_E_PK foreign-dbx=$NB_E_BAD KEK=$NB_E_KEK db=$NB_E_DB"
"""
def _boot(site: Site, name: str, vars_fd: Path) -> tuple[VM, Any]:
    vm = site.vm(name, MAC, "uefi-http", ca_esl=site.lab.workdir / "ca.esl",
                 sb_vars=vars_fd).start()
    # it powers off by itself: the vars are written back
    return vm, booted_or_fail(site.lab, site.nb, vm, timeout=180, grace=60)


def test_enrolled_through_auth_files(e2e_env: dict[str, str],
                                     tmp_path_factory: pytest.TempPathFactory,
                                     boot_timer: Any) -> None:
    require([] if shutil.which("sign-efi-sig-list") else
            ["sign-efi-sig-list not found (Debian: efitools)"])
    work = tmp_path_factory.mktemp("sb-enroll")
    nb_keys = Netbootd(work / "site" / "state")  # Site.start serves <workdir>/state
    nb_keys.cli("secureboot", "init")
    nb_keys.cli("secureboot", "export", str(work / "ours"))
    other = Netbootd(work / "other-site" / "state")
    other.cli("secureboot", "init")
    other.cli("secureboot", "export", str(work / "theirs"))
    overlay = work / "overlay"
    (overlay / "etc/netbootd/hooks.d").mkdir(parents=True)
    (overlay / "etc/netbootd/hooks.d/50-enroll.sh").write_text(HOOK)
    (overlay / "enroll").mkdir()
    for name in ("PK", "KEK", "db"):
        shutil.copyfile(work / "ours" / f"{name}.auth", overlay / "enroll" / f"{name}.auth")
    # an update of dbx (checked against KEK, like db) signed by the other netbootd's KEK, made
    # by the same tool as ours; dbx, not db: a refused write leaves an immutable efivarfs file
    # behind, and busybox has no chattr to write that name again
    theirs = other.state_dir / "secureboot"
    subprocess.run(["sign-efi-sig-list", "-k", str(theirs / "KEK.key"), "-c",
                    str(theirs / "KEK.crt"), "dbx", str(work / "theirs" / "db.esl"),
                    str(overlay / "enroll" / "foreign-dbx.auth")], check=True,
                   capture_output=True, timeout=60)
    try:
        image = build_image(work / "image", "--overlay", str(overlay), "--module", "efivarfs")
    except Missing as e:
        unavailable(f"no guest image: {e}")
    with Site.start(work / "site", image) as site:
        site.nb.cli("role", "chain", ROLE, "--transport", "https", "--http-boot", "uki")
        site.nb.cli("tls", "export", "--format", "esl", "-o", str(site.lab.workdir / "ca.esl"))
        site.nb.enroll(MAC, ROLE, hostname="sb-enroll")
        setup_vars = site.lab.workdir / "setup-mode.fd"
        shutil.copyfile("/usr/share/OVMF/OVMF_VARS_4M.fd", setup_vars)  # no PK: setup mode

        vm1, _ = _boot(site, "sb-enroll-1", setup_vars)
        assert vm1.marker("SECUREBOOT") == "disabled", vm1.console_tail(30)  # setup mode
        # the firmware took every write but the foreign dbx update (its signer is no KEK of
        # this machine's); KEK and db, written after PK, had their signatures checked
        assert vm1.marker("ENROLL") == "PK=ok foreign-dbx=refused KEK=ok db=ok", \
            vm1.console_tail(30)
        print(f"\nfirmware's answer to the foreign dbx update: {vm1.marker('ENROLL-ERROR')}")

        enrolled = site.lab.workdir / "sb-enroll-1.OVMF_VARS.fd"  # what boot 1 left
        vm2, result = _boot(site, "sb-enroll-2", enrolled)
        boot_timer(result.seconds, "[OVMF, keys enrolled from .auth -> HTTPS -> signed UKI]")
        assert vm2.marker("SECUREBOOT") == "enabled", vm2.console_tail(30)
        events = json.loads(site.nb.cli("events", MAC, "--json"))
        booted = [e for e in events if e["event"] == "booted"]
        assert booted[-1]["detail"].get("secureboot") == "enabled", booted

    # the same firmware refuses a UKI signed by the other netbootd's db key
    with Site.start(work / "other-site", image) as theirs:
        theirs.nb.cli("role", "chain", ROLE, "--transport", "https", "--http-boot", "uki")
        theirs.nb.cli("tls", "export", "--format", "esl", "-o",
                      str(theirs.lab.workdir / "ca.esl"))
        theirs.nb.enroll(MAC, ROLE, hostname="sb-enroll")
        vm3 = theirs.vm("sb-enroll-3", MAC, "uefi-http", ca_esl=theirs.lab.workdir / "ca.esl",
                        sb_vars=enrolled).start()
        try:
            why = wait_refused(vm3, timeout=120)
        finally:
            vm3.stop()
        assert any("served UKI" in ln and " signed" in ln
                   for ln in theirs.nb.log_lines_about(MAC))
        print(f"\nforeign-signed UKI under the .auth-enrolled keys: {why}")
