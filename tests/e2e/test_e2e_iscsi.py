"""A real VM sanboots its own copy-on-write clone of a gold image from tgtd, under netbootd's
control.

The gold image (testbed/sanboot_disk.py) is a 16 MiB disk whose MBR counts its own boots: it
reads LBA 1 through int 13h (iPXE serves it from the iSCSI LUN), adds one to the counter there,
prints `NBD-SANBOOT: boot count N` and writes the sector back (an iSCSI WRITE to the host's clone).

The iSCSI directory is on an XFS file system with reflink=1 (a loop device), so the clones are
reflinks. tgtd runs in the server namespace with its own control port; `netbootd serve` runs its
periodic reconcile every second (config via NETBOOTD_CONFIG).

1. `iscsi reconcile` clones two hosts A and B from the gold image and puts their targets in tgtd;
2. VM A PXE-boots: netbootd's script sets A's initiator IQN and sanboots A's LUN 1; the console
   says `boot count 1`; while the guest sits there tgtd shows A's initiator logged in, and
   `iscsi destroy` refuses;
3. on disk: A's clone has the write (1), B's clone and the gold image do not (0); the gold image
   is byte-for-byte unchanged;
4. tgtd is killed (SIGKILL) and started again, empty: `serve`'s reconcile puts both targets back;
5. VM A boots again and says `boot count 2`: the same clone, through the restored target.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import REPO, sanboot_disk
from testbed.lab import ROLE_CMDLINE, SRV_IP, Site, netbootd_cli
from testbed.procs import HarnessError, environ, run, wait_for
from testbed.skips import missing_tools, require, unavailable
from testbed.tgtd import Tgtd, control_port
from testbed.vm import VM, clean_console, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

A, B = "52:54:00:e2:5c:0a", "52:54:00:e2:5c:0b"
ROLE = "e2e-san"
BASE = "iqn.2025-01.org.netbootd"
PORTAL = f"{SRV_IP}:3260"


def hyphen(mac: str) -> str:
    return mac.replace(":", "-")


@dataclass
class SanSite:
    site: Site
    work: Path
    iscsi: Path
    tgtd: Tgtd  # in the server namespace

    def show(self) -> str:
        return self.tgtd.show()

    def luns(self) -> list[dict[str, Any]]:
        return list(json.loads(self.site.nb.cli("iscsi", "list", "--json"))["luns"])

    def root(self, mac: str) -> Path:
        return self.iscsi / "hosts" / hyphen(mac) / "root.img"


@pytest.fixture(scope="module")
def san(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SanSite]:
    require(missing_tools({"tgtd": "tgt", "tgtadm": "tgt", "mkfs.xfs": "xfsprogs"}))
    work = tmp_path_factory.mktemp("iscsi")
    xfs = work / "xfs"
    img = work / "xfs.img"
    with open(img, "wb") as f:
        f.truncate(320 << 20)  # mkfs.xfs wants > 300 MB; sparse
    run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)])
    xfs.mkdir()
    # Mounted before the namespaces exist, so netbootd's and tgtd's `ip netns exec` see it.
    r = run(["mount", "-o", "loop", str(img), str(xfs)], check=False)
    if r.returncode != 0:
        unavailable(f"cannot loop-mount XFS: {r.stderr.strip()}")
    control = control_port()
    cfg = work / "netbootd.toml"
    cfg.write_text(
        f'[iscsi]\ndir = "{xfs}/iscsi"\ntgtd_control_port = {control}\n'
        f'portal = "{PORTAL}"\nclone = "reflink"\ndata_size = "8M"\n'
        "reconcile_interval = 1\n"
    )
    try:
        # the CLI and `serve` the harness runs read NETBOOTD_CONFIG
        with environ({"NETBOOTD_CONFIG": str(cfg)}), Site.start(work, e2e_env) as site:
            tgtd = Tgtd(PORTAL, control, site.lab, site.lab.ns_srv).start()
            try:
                yield SanSite(site, work, xfs / "iscsi", tgtd)
            finally:
                tgtd.stop()
    finally:
        run(["umount", "-l", str(xfs)], check=False)


def _sanboot(s: SanSite, name: str, mac: str, count: int) -> tuple[VM, float]:
    """Boot `mac`; return once its MBR has written the counter back (the VM is left running)."""
    vm = s.site.vm(name, mac, "bios").start()
    try:
        wait_for(
            lambda: (
                vm.first_line_with(sanboot_disk.WROTE) is not None
                or vm.first_line_with(sanboot_disk.FAILED) is not None
                or vm.exited()
            ),
            90,
            f"{name}'s boot sector to write its counter",
            interval=0.2,
        )
    except HarnessError as e:
        vm.stop()
        pytest.fail(f"{e}\n{diagnostics(s.site.lab, s.site.nb, vm)}", pytrace=False)
    evidence = diagnostics(s.site.lab, s.site.nb, vm)
    done = vm.first_line_with(sanboot_disk.WROTE)
    assert done is not None, evidence
    assert vm.first_line_with(sanboot_disk.BANNER) is not None, evidence
    counted = vm.first_line_with(sanboot_disk.COUNT)
    assert counted is not None, evidence
    assert clean_console(counted[1]).strip().endswith(f"{sanboot_disk.COUNT}{count}"), evidence
    return vm, done[0]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_vm_sanboots_its_own_clone_and_tgtd_restart_is_reconciled(san: SanSite, boot_timer) -> None:
    s, nb = san, san.site.nb
    sanboot_disk.write_disk(s.work / "gold.img")
    nb.cli("iscsi", "gold", "import", "g1", str(s.work / "gold.img"))
    gold = s.iscsi / "gold" / "g1" / "1.img"
    gold_sha = _sha(gold)
    nb.role_add(
        ROLE, Path(s.site.image["vmlinuz"]), [Path(s.site.image["initramfs"])], ROLE_CMDLINE
    )
    nb.cli("role", "mode", ROLE, "iscsi", "--gold", "g1")
    nb.cli("enroll", A, ROLE, "--hostname", "san-a", "--no-identity")
    nb.cli("enroll", B, ROLE, "--hostname", "san-b", "--no-identity")
    out = nb.cli("iscsi", "reconcile")
    assert "2 target(s) wanted: 0 unchanged, 10 change(s)" in out, out
    luns = s.luns()
    assert [(r["host"], r["method"], r["state"]) for r in luns] == [
        ("san-a", "reflink", "served"),
        ("san-b", "reflink", "served"),
    ]

    # 1. A boots its own clone, as its own initiator
    vm, secs = _sanboot(s, "san-a", A, 1)
    try:
        show = s.show()
        nexus = re.search(
            rf"Target (\d+): {BASE}:{hyphen(A)}\n(?:(?!Target ).*\n)*?"
            r"\s+Initiator: (\S+)",
            show,
        )
        assert nexus and nexus.group(2) == f"{BASE}:host.{hyphen(A)}", show
        (a_row,) = [r for r in s.luns() if r["host"] == "san-a"]
        assert a_row["connected"] == [f"{BASE}:host.{hyphen(A)}"]
        r = run(
            [*netbootd_cli(), "--state-dir", str(nb.state_dir), "iscsi", "destroy", "san-a"],
            check=False,
            cwd=REPO,
        )
        assert r.returncode == 2 and "an initiator is logged in to its target now" in r.stderr
    finally:
        vm.stop()
    served = [line for line in nb.log_lines_about(A) if "served script" in line]
    assert served and f"role={ROLE}" in served[-1] and "mode=iscsi" in served[-1]
    boot_timer(secs, "[bios; sanboot of its reflink clone over iSCSI, MBR wrote back]")

    # 2. the write landed on A's clone only; B's clone and the gold image are untouched
    assert sanboot_disk.boot_count(s.root(A)) == 1
    assert sanboot_disk.boot_count(s.root(B)) == 0
    assert sanboot_disk.boot_count(gold) == 0 and _sha(gold) == gold_sha

    # 3. tgtd dies (targets live only in its memory) and comes back empty; `serve` restores them
    before = {t: s.show().count(t) for t in (f"{BASE}:{hyphen(A)}", f"{BASE}:{hyphen(B)}")}
    s.tgtd.kill()
    t0 = time.monotonic()
    s.tgtd.start()
    wait_for(
        lambda: all(s.show().count(t) == n for t, n in before.items()),
        20,
        "netbootd serve to put the targets back into the restarted tgtd",
        interval=0.3,
    )
    restored_after = time.monotonic() - t0
    assert [(r["host"], r["state"]) for r in s.luns()] == [("san-a", "served"), ("san-b", "served")]
    assert nb.proc is not None and nb.proc.log_path is not None
    log = nb.proc.log_path.read_text()
    assert "iSCSI reconcile: 2 target(s) wanted: 0 unchanged, 10 change(s)" in log, log[-3000:]
    print(f"\ntargets restored {restored_after:.1f}s after tgtd was started again")

    # 4. A boots again from the restored target: its own clone, with its first boot's write
    vm, secs = _sanboot(s, "san-a-again", A, 2)
    vm.stop()
    assert sanboot_disk.boot_count(s.root(A)) == 2 and sanboot_disk.boot_count(s.root(B)) == 0
    assert _sha(gold) == gold_sha
    boot_timer(secs, "[bios; sanboot after a tgtd restart, targets restored by serve]")
