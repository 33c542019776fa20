"""Discovery (issue 16): an unknown machine PXE-boots the discovery image, is listed with exactly
its disks and NICs, is enrolled (by an operator, or by a discovery rule) and then boots its role.

netbootd serves with `dhcp.unknown_policy = "discover"`; role `discovery` is the discovery image
(images/discovery/build.py: the test initramfs + udev + python3 + pyudev + the inventory agent,
built once per input digest into tests/e2e/.cache/discovery-<digest>/), role `e2e` the plain test
initramfs with the same kernel. Each VM has two NICs (the second on its own tap, no boot ROM) and
two disks with set serial numbers: one virtio-blk, one scsi-hd on virtio-scsi.

1. VM A (MAC not enrolled) boots the discovery image, which reports and powers off;
   `netbootd discovered` lists it with exactly its two disks (serials, sizes) and NICs (MACs);
   `netbootd enroll` takes it (it leaves the list; its report is the host's first inventory);
   its next boot boots role e2e and reports `booted`.
2. A discovery rule (`--disk-serial 'NBR-*'`) enrolls VM B at its discovery report, no operator
   step, into role `inv`: the discovery image with `netbootd.inventory=1`, so the enrolled boot
   reports its inventory too and goes on. Its next boot (the SCSI disk replaced by another) boots
   that role (`booted`) and its report is the host's second inventory, with what changed (the
   old disk removed, the new one added; an `inventory-changed` event). `hosts hardware --nix` of
   it parses with `nix-instantiate --parse` and names its disks by-id and virtio_blk/virtio_net.
   Its PCI devices carry udev's hwdb names (the image ships the PCI hwdb): each virtio device's
   vendor and model are what the build machine's `udevadm hwdb --test` says for its IDs.
3. A UEFI VM (OVMF + EFI iPXE) with a TPM (swtpm, manufactured with an EK certificate) reports
   firmware uefi, its Secure Boot state (disabled), a TPM 2.0 and its EK public key, which is
   the key inside the EK certificate (read on the host with cryptography).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import REPO
from testbed.lab import ROLE, Missing, Site, mac_colon
from testbed.procs import HarnessError, environ, wait_for
from testbed.skips import missing_files, missing_tools, require, unavailable
from testbed.vm import VM, BootFailed, BootResult, diagnostics, wait_booted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DISCOVERY_BUILDER = REPO / "images" / "discovery" / "build.py"
CACHE = Path(os.environ.get("NETBOOTD_E2E_CACHE") or REPO / "tests" / "e2e" / ".cache")
# What the discovery image is made of: a change to any of these is another image.
IMAGE_INPUTS = (REPO / "images" / "discovery", REPO / "images" / "test-initramfs",
                REPO / "netbootd" / "__init__.py", REPO / "netbootd" / "inventory" / "__init__.py",
                REPO / "netbootd" / "inventory" / "agent.py")
HOST_INPUTS = (Path("/usr/lib/systemd/systemd-udevd"), Path("/usr/bin/udevadm"),
               Path("/usr/lib/udev/scsi_id"),
               Path("/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb"),
               Path("/usr/lib/udev/hwdb.d/20-pci-classes.hwdb"))
OPTIONAL_INPUTS = (Path("/usr/bin/tpm2"),)  # tpm2-tools: the image reads the EK when it has it
MEMORY_MB = 384  # the discovery image unpacks to ~100 MB; TCG is slow either way

MAC_A, MAC_A2 = "52:54:00:e2:d1:0a", "52:54:00:e2:d1:1a"
MAC_B, MAC_B2 = "52:54:00:e2:d1:0b", "52:54:00:e2:d1:1b"
A_DISKS = (("NBD-7A01", 64 << 20, "virtio"), ("NBD-7A02", 96 << 20, "scsi"))
B_DISKS = (("NBR-7B01", 80 << 20, "virtio"), ("NBR-7B02", 48 << 20, "scsi"))
B_DISKS_LATER = (("NBR-7B01", 80 << 20, "virtio"), ("NBR-7B03", 40 << 20, "scsi"))  # sda swapped
MAC_C, MAC_C2 = "52:54:00:e2:d1:0c", "52:54:00:e2:d1:1c"
C_DISKS = (("NBU-7C01", 32 << 20, "virtio"), ("NBU-7C02", 32 << 20, "scsi"))
INV_ROLE = "inv"  # the discovery image as an enrolled role: it reports at every boot


def _digest(paths: tuple[Path, ...], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for top in paths:
        files = sorted(p for p in (top.rglob("*") if top.is_dir() else [top])
                       if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def discovery_image(kernel_version: str) -> Path:
    """The discovery image's directory (vmlinuz, initramfs.img), built unless the cache has
    one for the same inputs (the repository's image sources, this python, the host's udev)."""
    why = missing_files({p: "udev" for p in HOST_INPUTS})
    if why:
        unavailable("; ".join(why))
    try:
        import pyudev  # the image takes the build's own pyudev
    except ImportError:
        unavailable("pyudev is not installed (pip install -e '.[test]')")
    extra = f"{sys.version}|{pyudev.__version__}|{kernel_version}"
    optional = tuple(p for p in OPTIONAL_INPUTS if p.exists())
    out = CACHE / f"discovery-{_digest((*IMAGE_INPUTS, *HOST_INPUTS, *optional), extra)}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".discovery.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs share the cache
        if (out / "initramfs.img").is_file():
            os.utime(out)  # in use
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".discovery-", dir=CACHE))
        tmp.chmod(0o755)  # like the kernel's cache: readable by whoever runs the lab
        try:
            r = subprocess.run([sys.executable, str(DISCOVERY_BUILDER), str(tmp)], check=False,
                               capture_output=True, text=True, timeout=600)
            if r.returncode == 2:
                raise Missing(r.stderr.strip().splitlines()[-1])
            if r.returncode != 0:
                raise HarnessError(f"building the discovery image failed:\n{r.stderr.strip()}")
            # ~40 MB each: images of other inputs go once unused for a day (a parallel run of
            # another checkout sharing NETBOOTD_E2E_CACHE may be booting one right now)
            for old in CACHE.glob("discovery-*"):
                if time.time() - old.stat().st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class DiscoverySite:
    site: Site
    work: Path

    def vm(self, name: str, macs: tuple[str, str],
           disks: tuple[tuple[str, int, str], ...], client: str = "bios",
           tpm: bool = False) -> VM:
        """A VM with two NICs and the two disks (serial, size, bus); the disk images stay the
        same across the VM's boots (made once per name)."""
        virtio: list[Path] = []
        serials: list[str] = []
        scsi: list[tuple[Path, str]] = []
        for serial, size, bus in disks:
            img = self.work / f"{serial}.img"
            if not img.exists():
                with img.open("wb") as f:
                    f.truncate(size)
            if bus == "virtio":
                virtio.append(img)
                serials.append(serial)
            else:
                scsi.append((img, serial))
        return self.site.vm(name, macs[0], client, memory_mb=MEMORY_MB, disks=virtio,
                            disk_serials=serials, scsi_disks=scsi, extra_macs=[macs[1]],
                            tpm_dir=self.work / f"{name}.tpm" if tpm else None)


@pytest.fixture(scope="module")
def dsite(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[DiscoverySite]:
    require(missing_tools({"nix-instantiate": "nix-bin"}))
    work = tmp_path_factory.mktemp("discovery")
    try:
        image = discovery_image(e2e_env["kernel_version"])
    except Missing as e:
        unavailable(f"no discovery image: {e}")
    cfg = work / "netbootd.toml"
    cfg.write_text('[dhcp]\nunknown_policy = "discover"\n\n[discovery]\naction = "poweroff"\n')
    # the CLI and `serve` the harness runs read NETBOOTD_CONFIG
    with environ({"NETBOOTD_CONFIG": str(cfg)}), Site.start(work, e2e_env) as site:
        # one kernel for both roles (the same Debian kernel: one artifact)
        site.nb.role_add("discovery", Path(e2e_env["vmlinuz"]), [image / "initramfs.img"],
                         "console=ttyS0 quiet")
        site.nb.role_add(INV_ROLE, Path(e2e_env["vmlinuz"]), [image / "initramfs.img"],
                         "console=ttyS0 quiet netbootd.inventory=1")
        yield DiscoverySite(site, work)


def _fail(ds: DiscoverySite, vm: VM, why: str) -> None:
    vm.stop()
    pytest.fail(f"{why}\n{diagnostics(ds.site.lab, ds.site.nb, vm)}", pytrace=False)


def discovery_boot(ds: DiscoverySite, vm: VM) -> None:
    """Boot `vm` (not enrolled) into the discovery image; return once it has reported and
    powered off (discovery.action = poweroff)."""
    vm.start()
    try:
        wait_for(lambda: vm.first_line_with("NETBOOTD-TEST: DISCOVERY-") is not None
                 or vm.exited(), 300, f"{vm.name}'s discovery report", interval=0.5)
    except HarnessError as e:
        _fail(ds, vm, str(e))
    if vm.first_line_with("NETBOOTD-TEST: DISCOVERY-REPORT-SENT") is None:
        _fail(ds, vm, f"{vm.name} did not report its inventory")
    if not vm.wait_exit(60):
        _fail(ds, vm, f"{vm.name} did not power off after its report")
    vm.stop()


def role_boot(ds: DiscoverySite, vm: VM) -> BootResult:
    """Boot `vm` (enrolled); its boot once netbootd shows its `booted` (result.host: its row)."""
    vm.start()
    try:
        result = wait_booted(ds.site.nb, vm, timeout=240)
    except BootFailed as e:
        _fail(ds, vm, str(e))
    vm.stop(grace=20)
    assert vm.first_line_with("NETBOOTD-TEST: DISCOVERY-POWEROFF") is None, "a discovery boot"
    return result


def discovered(ds: DiscoverySite) -> dict[str, dict[str, Any]]:
    rows = json.loads(ds.site.nb.cli("discovered", "--json", timeout=30))
    return {mac_colon(r["mac"]): r for r in rows}


def assert_exactly(row: dict[str, Any], macs: tuple[str, str],
                   disks: tuple[tuple[str, int, str], ...]) -> None:
    assert sorted((d["serial"], d["size_bytes"]) for d in row["disks"]) == sorted(
        (s, n) for s, n, _ in disks), row["disks"]
    assert sorted(mac_colon(n["mac"]) for n in row["nics"]) == sorted(macs), row["nics"]
    assert {n["driver"] for n in row["nics"]} == {"virtio_net"}, row["nics"]


def hwdb_names(vendor_id: str, device_id: str) -> dict[str, str]:
    """What the build machine's real udev hwdb says for a PCI vendor:device (the names the
    image's compiled copy must give): ID_VENDOR_FROM_DATABASE / ID_MODEL_FROM_DATABASE."""
    query = f"pci:v0000{vendor_id[2:].upper()}d0000{device_id[2:].upper()}*"
    r = subprocess.run(["udevadm", "hwdb", f"--test={query}"], check=True, capture_output=True,
                       text=True, timeout=30)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def assert_pci_names(pci: list[dict[str, Any]]) -> None:
    """An inventory's PCI devices: every virtio one (vendor 0x1af4) is named as the host's hwdb
    names it: "Red Hat, Inc." and the model of its device ID; there is at least a network, a
    block and a SCSI one."""
    virtio = [p for p in pci if p["vendor_id"] == "0x1af4"]
    assert {p["device_id"] for p in virtio} >= {"0x1000", "0x1001", "0x1004"}, pci
    for p in virtio:
        names = hwdb_names(p["vendor_id"], p["device_id"])
        assert names["ID_VENDOR_FROM_DATABASE"] == "Red Hat, Inc.", names
        assert (p["vendor"], p["model"]) == (names["ID_VENDOR_FROM_DATABASE"],
                                             names["ID_MODEL_FROM_DATABASE"]), (p, names)
    assert all(p["vendor"] for p in pci), pci  # the Intel chipset's too


def test_unknown_vm_is_discovered_enrolled_and_boots_its_role(dsite: DiscoverySite,
                                                             boot_timer: Any) -> None:
    ds, nb = dsite, dsite.site.nb
    assert nb.host(MAC_A) is None and discovered(ds) == {}
    vm = ds.vm("disc-a1", (MAC_A, MAC_A2), A_DISKS)
    discovery_boot(ds, vm)
    found = discovered(ds)
    assert set(found) == {MAC_A}, found
    row = found[MAC_A]
    assert_exactly(row, (MAC_A, MAC_A2), A_DISKS)
    assert row["vendor"] == "QEMU" and row["firmware"] == "bios" and row["reports"] == 1, row
    assert row["tpm"] is False, row  # no TPM device (test C has one)
    assert row["source_ip"] and row["source_ip"].startswith("192.168.77."), row
    assert row["memory_bytes"] > (MEMORY_MB - 64) << 20, row
    text = nb.cli("discovered")
    assert MAC_A in text and "NBD-7A01" in text and "NBD-7A02" in text, text
    assert nb.host(MAC_A) is None, "discovery must not enroll without a rule"

    nb.enroll(MAC_A, ROLE, hostname="disc-a")
    assert MAC_A not in discovered(ds)
    shown = json.loads(nb.cli("hosts", "show", "disc-a", "--json"))
    inv = shown["inventory"]["inventory"]
    assert sorted(d["serial"] for d in inv["disks"]) == ["NBD-7A01", "NBD-7A02"], inv["disks"]
    scsi = next(d for d in inv["disks"] if d["serial"] == "NBD-7A02")
    assert scsi["transport"] == "scsi" and scsi["driver"] == "virtio_scsi", scsi
    assert "scsi-0QEMU_QEMU_HARDDISK_NBD-7A02" in scsi["by_id"], scsi
    assert_pci_names(inv["pci"])
    text = nb.cli("hosts", "show", "disc-a")
    assert "TPM no" in text and "tpm ek" not in text, text

    vm2 = ds.vm("disc-a2", (MAC_A, MAC_A2), A_DISKS)
    result = role_boot(ds, vm2)
    assert result.host["hostname"] == "disc-a" and result.host["role"] == ROLE, result.host
    boot_timer(result.seconds, "[bios, enrolled after discovery]")


def test_discovery_rule_enrolls_by_disk_serial(dsite: DiscoverySite, tmp_path: Path) -> None:
    ds, nb = dsite, dsite.site.nb
    nb.cli("discover", "rule", "add", "rack", "--role", INV_ROLE, "--disk-serial", "NBR-*",
           "--hostname", "rack-{n}")
    assert nb.host(MAC_B) is None
    discovery_boot(ds, ds.vm("disc-b1", (MAC_B, MAC_B2), B_DISKS))
    host = nb.host(MAC_B)
    assert host is not None, "the rule did not enroll the machine"
    assert host["hostname"] == "rack-1" and host["role"] == INV_ROLE, host
    assert MAC_B not in discovered(ds), "an enrolled machine is no longer 'discovered'"
    events = json.loads(nb.cli("events", "rack-1", "--json"))
    assert [e["detail"] for e in events if e["event"] == "enrolled-by-rule"] == [
        {"rule": "rack", "role": INV_ROLE}], events
    rules = json.loads(nb.cli("discover", "rule", "list", "--json"))
    assert [(r["name"], r["enrolled"]) for r in rules] == [("rack", 1)], rules

    vm = ds.vm("disc-b2", (MAC_B, MAC_B2), B_DISKS_LATER)
    host = role_boot(ds, vm).host
    assert host["hostname"] == "rack-1" and host["role"] == INV_ROLE, host
    assert vm.first_line_with("NETBOOTD-TEST: DISCOVERY-REPORT-SENT") is not None, \
        "the enrolled boot (netbootd.inventory=1) did not report its inventory"
    shown = json.loads(nb.cli("hosts", "show", "rack-1", "--json"))
    assert len(shown["history"]) == 2, shown["history"]  # the adopted discovery + this boot
    assert shown["history"][0]["changes"] == [
        f"disk removed: sda serial NBR-7B02 ({48 << 20} bytes)",
        f"disk added: sda serial NBR-7B03 ({40 << 20} bytes)"], shown["history"][0]
    assert shown["history"][1]["changes"] == ["first inventory (from its discovery)"], \
        shown["history"][1]
    events = json.loads(nb.cli("events", "rack-1", "--json"))
    changed = [e for e in events if e["event"] == "inventory-changed"]
    assert len(changed) == 1 and changed[0]["detail"]["changes"] == \
        shown["history"][0]["changes"], events
    booted = [e for e in events if e["event"] == "booted"]
    assert changed[0]["boot"] == booted[-1]["boot"] is not None, events  # one boot's reports

    nix = nb.cli("hosts", "hardware", "rack-1", "--nix")
    f = tmp_path / "hardware.nix"
    f.write_text(nix)
    r = subprocess.run(["nix-instantiate", "--parse", str(f)], check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"{r.stderr}\n{nix}"
    assert '"/dev/disk/by-id/virtio-NBR-7B01"' in nix, nix
    assert '"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_NBR-7B03"' in nix, nix  # the latest
    for mod in ("virtio_blk", "virtio_net", "virtio_scsi", "sd_mod"):
        assert f'"{mod}"' in nix, (mod, nix)
    assert 'networking.hostName = lib.mkDefault "rack-1";' in nix, nix
    # both NICs by their predictable names (udev's ID_NET_NAME_PATH in the image)
    for mac in (MAC_B, MAC_B2):
        assert re.search(rf'"enp0s\d+" = {{ macAddress = "{mac}"; driver = "virtio_net"; }};',
                         nix), (mac, nix)


def test_uefi_machine_with_a_tpm_reports_uefi_secure_boot_tpm_and_its_ek(
        dsite: DiscoverySite) -> None:
    """OVMF (no keys enrolled) + the NIC's EFI iPXE and a TPM 2.0 (swtpm, tpm-tis): the same
    discovery image boots, mounts efivarfs and reports firmware uefi with Secure Boot disabled
    (the SecureBoot variable) and a TPM 2.0 (VM A, without one, reports none).

    The EK is checked against an EK certificate, not against tpm2-tools on the host: the TPM is
    manufactured first (`swtpm_setup --tpm2 --create-ek-cert` with swtpm's local CA,
    swtpm_localca: the RSA 2048 EK at 0x81010001 and its certificate in NV index 0x1c00002), and
    the public key netbootd recorded (`tpm.ek_public`, read in the VM by the image's tpm2-tools
    through /dev/tpmrm0) must equal the public key inside that certificate, parsed on the host
    with cryptography, whose signature verifies against the local CA; `tpm.ek_sha256` is the
    SHA-256 of that key's DER, and `hosts show` prints it."""
    require(missing_tools({"swtpm": "swtpm", "swtpm_setup": "swtpm-tools",
                           "swtpm_localca": "swtpm-tools", "tpm2": "tpm2-tools"}))
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from testbed.vm import swtpm_manufacture

    ds = dsite
    ek_cert, ca_cert = swtpm_manufacture(ds.work / "disc-c1.tpm", ds.work / "disc-c1.mfg")
    cert = x509.load_der_x509_certificate(ek_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert.read_bytes()))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    want_pem = cert.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
    want_sha = hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, spki)).hexdigest()

    discovery_boot(ds, ds.vm("disc-c1", (MAC_C, MAC_C2), C_DISKS, client="uefi", tpm=True))
    row = discovered(ds)[MAC_C]
    assert_exactly(row, (MAC_C, MAC_C2), C_DISKS)
    assert (row["firmware"], row["secure_boot"], row["tpm"]) == ("uefi", "disabled", True), row
    assert row["tpm_ek_sha256"] == want_sha, row
    ds.site.nb.enroll(MAC_C, ROLE, hostname="disc-c")  # the whole document: `hosts show`
    inv = json.loads(ds.site.nb.cli("hosts", "show", "disc-c", "--json"))["inventory"]
    tpm = inv["inventory"]["tpm"]
    assert (tpm["present"], tpm["version"]) == (True, "2.0"), tpm
    got = serialization.load_pem_public_key(tpm["ek_public"].encode())
    assert got.public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki), (tpm, want_pem)
    assert tpm["ek_public"] == want_pem and tpm["ek_sha256"] == want_sha, tpm
    assert inv["inventory"]["firmware"] == {"mode": "uefi", "secure_boot": "disabled"}, inv
    text = ds.site.nb.cli("hosts", "show", "disc-c")
    assert "TPM 2.0" in text and f"sha256 {want_sha}" in text, text
