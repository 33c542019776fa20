"""iSCSI stem-cell hosts against a real tgtd (on loopback), through the real CLI.

- reconcile is idempotent: a second run changes nothing (tgtadm's whole `show` output compared);
- a killed and restarted tgtd (empty) gets every target back, from the CLI and from `serve`'s
  periodic reconcile;
- clones are independent (a write on A's root LUN is not on B's, the gold image is unchanged),
  with qcow2 overlays served through FUSE (this machine's ext4) and with reflinks (XFS on a loop
  device); `reclone` resets the root and keeps the data disk;
- `destroy` refuses a host that booted recently, `--force` overrides, a host that never booted
  goes without it;
- `iscsi export-conf` applied by tgt's own `tgt-admin` to a second tgtd gives the same targets.

Needs root and tgt (Debian: tgt); SKIPs otherwise (FAILs with NETBOOTD_REQUIRE_E2E=1). Every tgtd
(testbed.tgtd) gets its own control port (`tgtd -C N`: the control socket path is shared across
namespaces) and dies with the test process (PR_SET_PDEATHSIG); targets are deleted before it is
stopped (`tgtadm --op delete --mode system`: tgtd ignores SIGTERM). qcow2 exports
(qemu-storage-daemon) are stopped by PID; leftovers of killed runs (work dirs
`nbdsc-<pid>-<starttime>-*`, that process gone: the daemons naming them, their mounts, the
dirs) are removed first (testbed.netns.cleanup_stale).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netbootd.model import MacAddress
from netbootd.stemcell import clone
from netbootd.store import Store
from testbed import sanboot_disk
from testbed.netns import cleanup_stale, owned_dir
from testbed.skips import missing_tools, not_root, require, unavailable
from testbed.tgtd import Tgtd
from tests.conftest import Cli, free_port, start_daemon, stop_daemon

PREFIX = "nbdsc"
BASE = "iqn.2025-01.org.netbootd"
A, B = "52:54:00:5c:00:0a", "52:54:00:5c:00:0b"


@pytest.fixture
def work() -> Iterator[Path]:
    require(not_root("tgtd, FUSE, loop devices") or missing_tools({"tgtd": "tgt", "tgtadm": "tgt"}))
    cleanup_stale(PREFIX)
    d = owned_dir(PREFIX)
    try:
        yield d
    finally:
        _stop_exports(d)
        subprocess.run(["umount", "-l", str(d / "xfs")], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def _stop_exports(root: Path) -> None:
    for pidfile in root.rglob("root.qsd.pid"):
        clone.QcowExport(pidfile.parent / "root.qcow2", pidfile.parent / "root.raw", pidfile).stop()


@pytest.fixture
def tgtd() -> Iterator[Tgtd]:
    t = Tgtd(f"127.0.0.1:{free_port()}").start()
    try:
        yield t
    finally:
        t.stop()


@dataclass
class Lab:
    cli: Cli
    config: Path
    work: Path
    tgtd: Tgtd

    def nb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli.run("--config", str(self.config), *args, check=check)

    def host_dir(self, mac: str) -> Path:
        return self.iscsi_dir / "hosts" / MacAddress.parse(mac).hyphen

    @property
    def iscsi_dir(self) -> Path:
        m = re.search(r'dir = "([^"]+)"', self.config.read_text())
        return Path(m.group(1)) if m else self.cli.state_dir / "iscsi"

    def root_file(self, mac: str) -> Path:
        """What tgtd serves as the host's LUN 1 (an initiator would read and write this)."""
        d = self.host_dir(mac)
        return d / "root.raw" if (d / "root.qcow2").exists() else d / "root.img"


def make_lab(work: Path, tgtd: Tgtd, extra: str = "", hosts: tuple[str, ...] = (A, B)) -> Lab:
    cfg = work / "netbootd.toml"
    cfg.write_text(f'[iscsi]\ntgtd_control_port = {tgtd.port}\nportal = "{tgtd.portal}"\n'
                   f'data_size = "8M"\nreconcile_interval = 0.5\n{extra}')
    lab = Lab(Cli(work / "state"), cfg, work, tgtd)
    k, i = work / "vmlinuz", work / "initrd"
    k.write_bytes(os.urandom(4096))
    i.write_bytes(os.urandom(4096))
    sanboot_disk.write_disk(work / "gold.img")
    lab.nb("role", "add", "san", "--kernel", str(k), "--initrd", str(i))
    lab.nb("iscsi", "gold", "import", "deb12", str(work / "gold.img"))
    lab.nb("role", "mode", "san", "iscsi", "--gold", "deb12")
    for n, mac in enumerate(hosts):
        lab.nb("enroll", mac, "san", "--hostname", f"san{n}", "--no-identity")
    return lab


def test_reconcile_is_idempotent_and_survives_a_tgtd_restart(work: Path, tgtd: Tgtd) -> None:
    lab = make_lab(work, tgtd)
    assert tgtd.show() == ""
    out = lab.nb("iscsi", "reconcile").stdout
    assert "2 target(s) wanted: 0 unchanged, 10 change(s)" in out
    first = tgtd.show()
    assert first.count("Target ") == 2
    for n, mac in enumerate((A, B), start=1):
        hy = MacAddress.parse(mac).hyphen
        assert f"Target {n}: {BASE}:{hy}\n" in first
        assert f"Backing store path: {lab.root_file(mac)}\n" in first
        assert f"Backing store path: {lab.host_dir(mac) / 'data.img'}\n" in first
        assert f"    ACL information:\n        ALL\n        {BASE}:host.{hy}\n" in first

    # twice: nothing changes, down to every line tgtadm prints
    again = lab.nb("iscsi", "reconcile").stdout
    assert "2 target(s) wanted: 2 unchanged, 0 change(s)" in again and "tid " not in again
    assert tgtd.show() == first
    dry = lab.nb("iscsi", "reconcile", "--dry-run").stdout
    assert "0 change(s) to tgtd, 0 LUN(s) to make" in dry
    listed = lab.cli.json("--config", str(lab.config), "iscsi", "list")["luns"]
    assert [r["state"] for r in listed] == ["served", "served"]

    # a crashed tgtd comes back empty; reconcile restores exactly what was there
    tgtd.kill()
    tgtd.start()
    assert tgtd.show() == ""
    listed = lab.cli.json("--config", str(lab.config), "iscsi", "list")["luns"]
    assert [r["state"] for r in listed] == ["not in tgtd", "not in tgtd"]
    assert "0 unchanged, 10 change(s)" in lab.nb("iscsi", "reconcile").stdout
    assert tgtd.show() == first


def test_serve_reapplies_targets_after_tgtd_restart(work: Path, tgtd: Tgtd) -> None:
    lab = make_lab(work, tgtd)
    lab.nb("iscsi", "reconcile")
    first = tgtd.show()
    tgtd.kill()
    tgtd.start()
    daemon = start_daemon(lab.cli, work / "serve.log", config=lab.config)
    try:
        end = time.monotonic() + 15
        while tgtd.show() != first:
            assert time.monotonic() < end, f"serve did not restore the targets:\n{tgtd.show()}"
            time.sleep(0.2)
        time.sleep(1.5)  # a few more rounds: nothing more to do
        assert tgtd.show() == first
    finally:
        stop_daemon(daemon)
    log = (work / "serve.log").read_text()
    assert log.count("iSCSI reconcile: 2 target(s) wanted: 0 unchanged, 10 change(s)") == 1, log
    assert "tid 1: new-target" in log and "error" not in log.lower()


def _byte(path: Path, offset: int = sanboot_disk.COUNTER_OFFSET) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)[0]


def _poke(path: Path, value: int, offset: int = sanboot_disk.COUNTER_OFFSET) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))
        f.flush()
        os.fsync(f.fileno())


def _independent_writes(lab: Lab, method: str) -> None:
    lab.nb("iscsi", "reconcile")
    luns = {r["mac"]: r for r in lab.cli.json("--config", str(lab.config), "iscsi", "list")["luns"]}
    assert {r["method"] for r in luns.values()} == {method}
    gold = next((lab.iscsi_dir / "gold" / "deb12").glob("*.img"))
    gold_before = gold.read_bytes()
    a, b = lab.root_file(A), lab.root_file(B)
    assert a.read_bytes()[:512] == b.read_bytes()[:512] == gold_before[:512]  # the gold MBR
    _poke(a, 7)  # what the guest's int13 write does through iSCSI
    _poke(lab.host_dir(A) / "data.img", 9, 0)
    assert (_byte(a), _byte(b), _byte(gold)) == (7, 0, 0)
    assert gold.read_bytes() == gold_before
    # reclone: A's root is the gold image again, its data disk is kept, B is untouched
    out = lab.nb("iscsi", "reclone", "san0").stdout
    assert "root LUN re-cloned from deb12 v1" in out and "data LUN kept" in out
    assert (_byte(lab.root_file(A)), _byte(b), _byte(gold)) == (0, 0, 0)
    assert _byte(lab.host_dir(A) / "data.img", 0) == 9
    assert gold.read_bytes() == gold_before
    assert "2 unchanged, 0 change(s)" in lab.nb("iscsi", "reconcile").stdout


def test_qcow2_clones_are_independent(work: Path, tgtd: Tgtd) -> None:
    why = clone.qcow2_available()
    if why:
        unavailable(f"qcow2 clones cannot be served here: {why}")
    lab = make_lab(work, tgtd, 'clone = "qcow2"\n')
    _independent_writes(lab, "qcow2")
    # what tgtd serves is the overlay's FUSE export (qemu-storage-daemon), backed by the gold image
    fstype = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(lab.root_file(A))],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert fstype == "fuse", fstype


def test_reflink_clones_are_independent(work: Path, tgtd: Tgtd) -> None:
    if shutil.which("mkfs.xfs") is None:
        unavailable("mkfs.xfs not found (Debian: xfsprogs)")
    img, mnt = work / "xfs.img", work / "xfs"
    with open(img, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        unavailable(f"cannot loop-mount XFS here: {r.stderr.strip()}")
    lab = make_lab(work, tgtd, f'dir = "{mnt}/iscsi"\nclone = "reflink"\n')
    _independent_writes(lab, "reflink")
    lab.nb("iscsi", "destroy", "san0")
    lab.nb("iscsi", "destroy", "san1")


def test_destroy_refuses_a_recently_booted_host(work: Path, tgtd: Tgtd) -> None:
    lab = make_lab(work, tgtd)
    lab.nb("iscsi", "reconcile")
    store = Store(lab.cli.state_dir)
    store.record_event(MacAddress.parse(A), "booted", "127.0.0.1", {})  # what POST /events does
    store.close()
    before = tgtd.show()
    p = lab.nb("iscsi", "destroy", "san0", check=False)
    assert p.returncode == 2
    assert re.search(
        r"refusing to destroy the disks of san0: it booted \d+s ago .* within "
        r"iscsi.destroy_guard \(86400s\) \(--force destroys them anyway\)",
        p.stderr,
    )
    assert tgtd.show() == before and lab.root_file(A).exists()  # nothing touched

    # B never booted: no --force needed
    out = lab.nb("iscsi", "destroy", "san1").stdout
    assert f"target {BASE}:{MacAddress.parse(B).hyphen} removed" in out
    assert "Target 2:" not in tgtd.show() and not lab.host_dir(B).exists()

    lab.nb("iscsi", "destroy", "san0", "--force")
    assert tgtd.show() == "" and not lab.host_dir(A).exists()
    assert "no LUN yet" in lab.nb("iscsi", "list").stdout  # still enrolled: reconcile remakes
    assert not list(work.rglob("root.qsd.pid"))  # its qcow2 export (if any) was stopped


def test_targets_conf_gives_tgt_admin_the_same_targets(work: Path, tgtd: Tgtd) -> None:
    if shutil.which("tgt-admin") is None:
        unavailable("tgt-admin not found (Debian: tgt)")
    lab = make_lab(work, tgtd)
    lab.nb("iscsi", "reconcile")
    conf = work / "targets.conf"
    lab.nb("iscsi", "export-conf", "-o", str(conf))
    ours = tgtd.show()
    tgtd.stop()  # tgt-admin skips backing stores another process has open (lsof)
    other = Tgtd(f"127.0.0.1:{free_port()}").start()
    try:
        r = subprocess.run(
            ["tgt-admin", "-C", str(other.port), "--update", "ALL", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr + r.stdout
        theirs = other.show()
        assert theirs == ours, "\n".join(
            difflib.unified_diff(
                ours.splitlines(), theirs.splitlines(), "reconcile", "tgt-admin", lineterm=""
            )
        )
    finally:
        other.stop()
