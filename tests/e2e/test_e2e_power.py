"""`netbootd reprovision --reboot` through a real IPMI BMC ends with the VM's `provisioned`
report (issue 16).

The BMC is OpenIPMI's ipmi_sim in the lab's LAN namespace, its RMCP+ port on an address of the
lab's bridge (192.168.77.9:623), so netbootd's CLI in the server's namespace reaches it across
the LAN the way a real BMC network would be reached. Its chassis is the VM: ipmi_sim starts
QEMU (its `startcmd`, a tap on the bridge, a blank virtio disk, QEMU's ipmi-bmc-extern +
isa-ipmi-kcs on the chardev) on "power on" and powers it off over that chardev.

1. The VM is off (`power status`: off).
2. `reprovision --reboot` arms the flag, asks for a PXE boot once (ipmi_sim has no boot-options
   handler without a chassis program: the warning), and power cycles -- a chassis that is off
   is powered on.
3. The VM network-boots, gets the flagged script, lays out its disk, reports `provisioned` with
   that boot's token, and powers itself off (`power status`: off again); netbootd's events show
   the power actions and provision-offered -> provisioned for one boot.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.bmc import IpmiSim
from testbed.lab import NET, ROLE, Site, build_image
from testbed.lab import Missing as LabMissing
from testbed.netns import ip
from testbed.procs import HarnessError, tail, wait_for
from testbed.skips import unavailable
from testbed.vm import QEMU
from tests.e2e.test_e2e_provision import DISK_BYTES, FLAG, OVERLAY_BUILDER

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:16:01"
NAME = "e2e-power"
BMC_IP = f"{NET}.9"
PASSWORD = "e2e-Pw-41c7"


@pytest.fixture(scope="module")
def power_site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Site]:
    for tool, pkg in (("ipmi_sim", "openipmi"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            unavailable(f"no {tool} (Debian {pkg})")
    work = tmp_path_factory.mktemp("power")
    mods = [a for m in ("virtio_blk", "ext4", "crc32c_generic") for a in ("--module", m)]
    try:
        image = build_image(work / "image", *mods, overlay=(OVERLAY_BUILDER, ["--flag", FLAG]))
    except LabMissing as e:
        unavailable(str(e))
    with Site.start(work, image) as site:
        yield site


def _events(site: Site) -> list[dict[str, object]]:
    return list(json.loads(site.nb.cli("events", NAME, "--json")))


def test_reprovision_reboot_ends_with_provisioned(power_site: Site, tmp_path: Path) -> None:
    site, nb, lab = power_site, power_site.nb, power_site.lab
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    serial = tmp_path / "serial.log"
    tap = lab.add_tap()
    qemu = [QEMU, "-accel", "tcg", "-boot", "n", "-m", "512", "-smp", "1", "-nographic",
            "-nodefaults", "-serial", f"file:{serial}", "-monitor", "none", "-no-reboot",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1",
            "-drive", f"file={disk},if=none,id=disk0,format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=disk0"]
    ip("addr", "add", f"{BMC_IP}/24", "dev", "br0", ns=lab.ns_lan)  # the BMC's LAN address
    sim = IpmiSim(tmp_path / "ipmi", qemu, PASSWORD, lan_addr=BMC_IP, lan_port=623,
                  ns=lab.ns_lan, startnow=False).start()
    try:
        nb.enroll(MAC, ROLE, hostname=NAME)
        nb.cli("role", "set", ROLE, "--provision-flag", FLAG)
        pw = tmp_path / "bmc.pw"
        pw.write_text(PASSWORD)
        nb.cli("bmc", "set", NAME, "--ipmi", f"{BMC_IP}:623", "--user", "admin",
               "--password-file", str(pw))
        time.sleep(0.5)  # ipmi_sim binds its LAN port after reading its config
        assert "power is off" in nb.cli("power", "status", NAME, ns=lab.ns_srv)
        assert sim.qemu_pid() is None

        since = time.time()
        out = nb.cli("reprovision", "--reboot", NAME, "--ttl", "1h", ns=lab.ns_srv)
        assert f"re-provision armed: `{FLAG}`" in out, out
        assert "warning: boot-once PXE refused" in out and "power cycled" in out, out
        sim.wait_qemu(True, 20)  # the BMC powered the chassis on: ipmi_sim ran QEMU

        def provisioned() -> bool:
            return any(e["event"] == "provisioned" for e in _events(site))
        try:
            wait_for(provisioned, 300, "the VM's provisioned report", interval=2.0)
        except HarnessError as e:
            pytest.fail(f"{e}\n---- serial\n{tail(serial, 40)}\n---- ipmi_sim\n"
                        f"{sim.log_tail()}\n---- netbootd\n{nb.log_tail()}", pytrace=False)
        events = _events(site)
        flagged = [e for e in events if e["event"] in ("provision-offered", "provisioned")]
        assert [e["event"] for e in flagged] == ["provision-offered", "provisioned"], flagged
        assert flagged[0]["boot"] == flagged[1]["boot"] is not None
        power = [(e["detail"]["action"], e["detail"]["result"])  # type: ignore[index]
                 for e in events if e["event"] == "power"]
        assert power == [("boot-once-pxe", "error"), ("cycle", "ok")], power
        (host,) = [h for h in nb.hosts() if h["hostname"] == NAME]
        assert host["state"] == "ok" and host["last_provisioned"] and host["provision"] is None
        # the guest powers itself off after its hooks: QEMU exits, the BMC says off
        sim.wait_qemu(False, 120)
        assert "power is off" in nb.cli("power", "status", NAME, ns=lab.ns_srv)
        assert PASSWORD not in nb.log_tail(10_000)
        assert time.time() - since < 400
    finally:
        sim.stop()
        assert sim.qemu_pid() is None
