"""`netbootd reprovision --reboot` through a real IPMI BMC ends with the VM's `provisioned`
report, and the VM network-boots because netbootd's boot-once PXE told the BMC so (issue 16).

The BMC is OpenIPMI's ipmi_sim in the lab's LAN namespace, its RMCP+ port on an address of the
lab's bridge (192.168.77.9:623), so netbootd's CLI in the server's namespace reaches it across
the LAN the way a real BMC network would be reached. Its chassis is the VM, through a
chassis-control program (testbed.ipmi_chassis: OpenIPMI 2.0.33 stores a boot device only
through one, lanserv/bmc_chassis.c set_system_boot_options): "power on" starts QEMU (a tap on
the bridge, a blank virtio disk, QEMU's ipmi-bmc-extern + isa-ipmi-kcs on ipmi_sim's VM
chardev) with the boot order the BMC's boot device says -- the NIC has no boot ROM and comes
last unless that device is PXE -- so only a boot-once PXE that reached the BMC makes this VM
boot from the network.

1. The VM is off (`power status`: off); ipmitool reads the boot device: the disk.
2. `reprovision --reboot` arms the flag, sets the next boot to PXE once (ipmitool reads Force
   PXE back) and power cycles -- a chassis that is off is powered on, network first.
3. The VM network-boots, gets the flagged script, lays out its disk, reports `provisioned` with
   that boot's token, and powers itself off (`power status`: off again); netbootd's events show
   the power actions and provision-offered -> provisioned for one boot; the BMC's boot device
   is the disk again (once).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.bmc import IpmiSim
from testbed.lab import NET, ROLE, Site
from testbed.netns import ip
from testbed.procs import HarnessError, tail, wait_for
from testbed.skips import unavailable
from testbed.vm import QEMU
from tests.e2e.test_e2e_provision import DISK_BYTES, FLAG, provision_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:16:01"
NAME = "e2e-power"
BMC_IP = f"{NET}.9"
PASSWORD = "e2e-Pw-41c7"


@pytest.fixture(scope="module")
def power_site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Site]:
    for tool, pkg in (("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")):
        if shutil.which(tool) is None:
            unavailable(f"no {tool} (Debian {pkg})")
    work = tmp_path_factory.mktemp("power")
    with Site.start(work, provision_image(work)) as site:
        yield site


def _events(site: Site) -> list[dict[str, object]]:
    return list(json.loads(site.nb.cli("events", NAME, "--json")))


def _bootparam(sim: IpmiSim, ns: str) -> str:
    """The BMC's boot device as ipmitool (not netbootd) reads it: Get System Boot Options 5."""
    r = subprocess.run(["ip", "netns", "exec", ns, "ipmitool", "-I", "lanplus", "-H", BMC_IP,
                        "-U", "admin", "-E", "chassis", "bootparam", "get", "5"],
                       env={**os.environ, "IPMI_PASSWORD": PASSWORD}, capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return next(line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                if "Boot Device Selector" in line)


def test_reprovision_reboot_ends_with_provisioned(power_site: Site, tmp_path: Path) -> None:
    site, nb, lab = power_site, power_site.nb, power_site.lab
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    serial = tmp_path / "serial.log"
    tap = lab.add_tap()

    def qemu(device: str) -> list[str]:
        # the BMC's boot device decides: PXE puts the NIC (with its iPXE ROM) first; otherwise
        # the disk (blank: nothing to boot) is first and the NIC has no ROM to boot with
        nic = ("bootindex=1" if device == "pxe" else 'romfile=')
        return [QEMU, "-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-nodefaults",
                "-serial", f"file:{serial}", "-monitor", "none", "-no-reboot",
                "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={MAC},{nic}",
                "-drive", f"file={disk},if=none,id=disk0,format=raw,cache=unsafe",
                "-device", "virtio-blk-pci,drive=disk0,bootindex=2"]
    ip("addr", "add", f"{BMC_IP}/24", "dev", "br0", ns=lab.ns_lan)  # the BMC's LAN address
    sim = IpmiSim(tmp_path / "ipmi", [], PASSWORD, lan_addr=BMC_IP, lan_port=623,
                  ns=lab.ns_lan, startnow=False, boot_argv=qemu).start()
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
        assert _bootparam(sim, lab.ns_lan) == "Force Boot from default Hard-Drive"

        since = time.time()
        out = nb.cli("reprovision", "--reboot", NAME, "--ttl", "1h", ns=lab.ns_srv)
        assert f"re-provision armed: `{FLAG}`" in out, out
        assert "next boot PXE, power cycled" in out and "warning" not in out, out
        sim.wait_qemu(True, 20)  # the BMC powered the chassis on: its program ran QEMU
        assert sim.chassis is not None and "bootindex=1" in " ".join(sim.chassis.started[-1])
        assert _bootparam(sim, lab.ns_lan) == "Force Boot from default Hard-Drive"  # once

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
        assert power == [("boot-once-pxe", "ok"), ("cycle", "ok")], power
        assert "set boot pxe" in sim.chassis.log_path.read_text().splitlines()
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
