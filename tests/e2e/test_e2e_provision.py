"""A real VM with a blank virtual disk is re-provisioned once, and only once.

The guest image is the test initramfs plus the provision overlay (images/test-initramfs/
provision_overlay.py): when its role's flag (here `homelab.provision_disks=true`, set with
`netbootd role set --provision-flag`) is on the kernel command line, its hook partitions
/dev/vda with sfdisk, makes an ext4 file system, writes a marker naming the boot and reports
`provisioned` with the boot's token; on every boot it reports the marker it finds.

`netbootd reprovision`, then two boots of the same VM with the same disk:
1. the served script carries the flag; the disk gets a partition table, a file system and the
   marker; netbootd records provision-offered / provision-started / provisioned for that boot,
   clears the flag and sets last_provisioned;
2. the served script (read back from the bridge capture) carries no flag, and the marker the
   first boot wrote is still there: the disk was not wiped again.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from testbed import REPO
from testbed.lab import HTTP_PORT, ROLE, SRV_IP, Lab, Missing, Site, build_image
from testbed.procs import run
from testbed.skips import unavailable
from testbed.vm import VM, BootResult, booted_or_fail, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:6d:01"
NAME = "e2e-provision"
FLAG = "homelab.provision_disks=true"
DISK_BYTES = 64 << 20
OVERLAY_BUILDER = REPO / "images" / "test-initramfs" / "provision_overlay.py"


def provision_image(work: Path) -> dict[str, str]:
    """The test image with the provision overlay (answering FLAG) and its disk modules (also
    test_e2e_power's)."""
    mods = [a for m in ("virtio_blk", "ext4", "crc32c_generic") for a in ("--module", m)]
    try:
        return build_image(work / "image", *mods, overlay=(OVERLAY_BUILDER, ["--flag", FLAG]))
    except Missing as e:
        unavailable(str(e))


@pytest.fixture(scope="module")
def provision_site(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("provision")
    with Site.start(work, provision_image(work)) as site:
        yield site


def _boot(site: Site, name: str, disk: Path, since: float | None) -> tuple[VM, BootResult]:
    vm = site.vm(name, MAC, "bios", disks=[disk]).start()
    # the guest powers off after its hooks
    result = booted_or_fail(site.lab, site.nb, vm, timeout=240, since=since, grace=20)
    return vm, result


def _served_scripts(lab: Lab) -> list[str]:
    """The iPXE scripts netbootd served on the wire (the bridge capture), in order: the `kernel`
    line of each HTTP response from port 8080."""
    r = run(
        [
            "tcpdump",
            "-r",
            str(lab.pcap),
            "-n",
            "-A",
            f"tcp and src host {SRV_IP} and src port {HTTP_PORT}",
        ],
        check=False,
        timeout=60,
    )
    return re.findall(r"^kernel (http://\S+ .*?) \|\| goto failed$", r.stdout, re.MULTILINE)


def _boot_id(script: str) -> str:
    token = re.search(r" netbootd\.boot=(\S+)", script)
    assert token is not None, script
    return hashlib.sha256(token.group(1).encode()).hexdigest()[:12]


def _disk_report(disk: Path) -> tuple[int, bytes]:
    """(first partition's start LBA, the ext4 superblock magic there) from the raw image."""
    with disk.open("rb") as f:
        mbr = f.read(512)
        assert mbr[510:512] == b"\x55\xaa", "no MBR partition table"
        ptype, start = mbr[446 + 4], struct.unpack_from("<I", mbr, 446 + 8)[0]
        assert ptype == 0x83 and start > 0, (ptype, start)
        f.seek(start * 512 + 1024 + 56)
        return start, f.read(2)


def test_reprovision_once_then_never_again(
    provision_site: Site, boot_timer, tmp_path: Path
) -> None:
    site = provision_site
    nb = site.nb
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)  # blank: all zeroes, no partition table
    site.nb.enroll(MAC, ROLE, hostname=NAME)
    out = nb.cli("role", "set", ROLE, "--provision-flag", FLAG)
    assert FLAG in out
    out = nb.cli("reprovision", NAME, "--ttl", "1h")
    assert f"re-provision armed: `{FLAG}`" in out
    (host,) = [x for x in nb.hosts() if x["hostname"] == NAME]
    assert host["state"] == "armed" and host["last_provisioned"] is None

    # -- boot 1: the flag is on; the guest lays out the disk and reports provisioned
    vm1, r1 = _boot(site, f"{NAME}-1", disk, None)
    evidence = diagnostics(site.lab, nb, vm1)
    assert vm1.first_line_with("NETBOOTD-TEST: PROVISION-FAILED") is None, evidence
    assert vm1.marker("PROVISION-FLAG") == f"present ({FLAG})", evidence
    boot1 = vm1.marker("PROVISION-BOOT")
    assert re.fullmatch(r"[0-9a-f]{12}", boot1), boot1
    assert vm1.marker("PROVISION-DONE") == f"/dev/vda1 ext4, marker {boot1}", evidence
    assert vm1.first_line_with("NETBOOTD-TEST: PROVISIONED-EVENT-SENT") is not None, evidence
    assert vm1.marker("PROVISION-MARKER") == boot1
    scripts = _served_scripts(site.lab)
    assert len(scripts) == 1, scripts
    assert f" {FLAG}" in scripts[0] and _boot_id(scripts[0]) == boot1
    # the disk image, read on the host: an MBR with one Linux partition holding ext4 and the marker
    _, magic = _disk_report(disk)
    assert magic == b"\x53\xef", "no ext4 superblock in the first partition"
    assert (boot1 + "\n").encode() in disk.read_bytes()
    # netbootd: the flag was offered to that boot, it started, it reported, the flag is cleared
    events = json.loads(nb.cli("events", NAME, "--json"))
    mine = [(e["event"], e["boot"]) for e in events if e["boot"] is not None]
    # (enroll armed the host's identity: its token was issued with the same script, same boot)
    assert mine == [
        ("provision-offered", boot1),
        ("identity-issued", boot1),
        ("provision-started", boot1),
        ("provisioned", boot1),
        ("booted", boot1),
    ], mine
    ip1 = r1.host["last_boot_ip"]
    assert all(
        e["source_ip"] == ip1
        for e in events
        if e["event"] in ("provision-started", "provisioned", "booted")
    ), events
    provisioned = next(e for e in events if e["event"] == "provisioned")
    assert provisioned["detail"] == {"marker": boot1, "boot_number": 1}
    (host,) = [x for x in nb.hosts() if x["hostname"] == NAME]
    assert host["state"] == "ok" and host["provision"] is None and host["last_provisioned"]
    boot_timer(r1.seconds, "[bios, sfdisk + mkfs.ext4 + provisioned]")

    # -- boot 2: same VM, same disk; no flag, and the first boot's marker is still there
    since = time.time()
    vm2, r2 = _boot(site, f"{NAME}-2", disk, since)
    evidence = diagnostics(site.lab, nb, vm2)
    boot2 = vm2.marker("PROVISION-BOOT")
    assert boot2 != boot1
    assert vm2.marker("PROVISION-FLAG") == f"absent ({FLAG})", evidence
    assert vm2.first_line_with("NETBOOTD-TEST: PROVISION-DONE") is None, evidence
    assert vm2.marker("PROVISION-MARKER") == boot1, "the disk was wiped again"
    scripts = _served_scripts(site.lab)
    assert len(scripts) == 2, scripts
    assert _boot_id(scripts[1]) == boot2 and FLAG not in scripts[1], scripts[1]
    assert "provision_disks" not in scripts[1]
    events = json.loads(nb.cli("events", NAME, "--json"))
    later = [
        (e["event"], e["boot"]) for e in events if e["boot"] == boot2 or _ts(e["time"]) >= since
    ]
    assert later == [("identity-issued", boot2), ("booted", boot2)], later
    # (the test initramfs reports the Secure Boot state it saw: SeaBIOS has none)
    assert events[-1]["detail"] == {"marker": boot1, "secureboot": "unknown"}
    (host,) = [x for x in nb.hosts() if x["hostname"] == NAME]
    assert host["state"] == "ok" and host["last_provisioned"] == provisioned["time"][:19] + "+00:00"
    boot_timer(r2.seconds, "[bios, second boot: no flag, marker kept]")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
