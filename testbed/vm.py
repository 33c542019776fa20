"""A QEMU PXE client on the lab's bridge, its serial console, and how a boot is judged.

QEMU runs under TCG (`-accel tcg`), inside the lab's LAN namespace on a tap of the bridge, started
by the lab (PR_SET_PDEATHSIG, stopped by its PID). Its serial console is read as it arrives, with
arrival times, so tests can say where a boot spent its time. A boot succeeds when netbootd's own
state (`netbootd hosts --json`) shows last_boot for the VM's MAC; the guest's serial marker only
tells the harness when to look.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.procs import HarnessError, Proc, logger, tail, wait_for

if TYPE_CHECKING:
    from testbed.lab import Lab, Netbootd

log = logger("e2e")

# What the guest's /init prints (images/test-initramfs/rootfs/etc/netbootd/hooks.d/90-booted.sh)
MARK_BOOTED = "NETBOOTD-TEST: BOOTED-EVENT-SENT"
MARK_BOOT_FAILED = "NETBOOTD-TEST: BOOTED-EVENT-FAILED"
# What iPXE / SeaBIOS print once PXE has given up on every network device
GAVE_UP = ("No more network devices", "No bootable device", "Nothing to boot")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
QEMU = "qemu-system-x86_64"
# arm64 guests (AAVMF, `virt` machine, TCG; Debian qemu-system-arm + qemu-efi-aarch64)
QEMU_ARM64 = "qemu-system-aarch64"
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
# OVMF's fw_cfg knobs (measured in ../shared/reference/uefi-https): without PXE options "UEFI
# HTTPv4" is the NIC's first boot option; without IPv6 a failed HTTPv4 boot does not spend ~63 s
# on HTTPv6. etc/edk2/https/cacerts: the EFI signature list of CAs HTTPS boot trusts.
HTTP_BOOT_FW_CFG = ("opt/org.tianocore/IPv4PXESupport", "opt/org.tianocore/IPv6PXESupport",
                    "opt/org.tianocore/IPv6Support")
HTTPS_CACERTS = "etc/edk2/https/cacerts"

# Firmware x NIC-ROM combinations the tests name. rom=None keeps QEMU's default ROM for the NIC
# (Debian's ipxe-qemu: legacy + EFI iPXE); rom="" removes it (SeaBIOS: no PXE; OVMF: native PXE).
CLIENTS: dict[str, tuple[str, str | None]] = {
    "bios": ("bios", None),  # SeaBIOS + the NIC's iPXE ROM
    "uefi": ("uefi", None),  # OVMF + the NIC's EFI iPXE ROM
    "uefi-pxe": ("uefi", ""),  # OVMF's own PXE -> TFTP ipxe.efi -> iPXE
    "uefi-http": ("uefi", ""),  # OVMF's own HTTP(S) boot (PXE options off) -> the offered URL
    "arm64-pxe": ("aavmf", ""),  # AAVMF's own PXE (arch 11) -> TFTP arm64 iPXE
    "arm64-http": ("aavmf", ""),  # AAVMF's own HTTP(S) boot (arch 19) -> the offered URL
}
HTTP_CLIENTS = frozenset({"uefi-http", "arm64-http"})


class BootFailed(HarnessError):
    pass


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[c78]|\x1b\][^\x07]*\x07")


def clean_console(text: str) -> str:
    """Serial console text without escape sequences, \\r-rewritten progress lines split out."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line for line in text.split("\n") if line.strip())



@dataclass
class VM:
    lab: Lab
    name: str
    mac: str
    client: str = "bios"  # a key of CLIENTS
    nic: str = "virtio-net-pci"
    memory_mb: int = 512
    on_output: Callable[[bytes], None] | None = None
    # Raw disk images attached as virtio disks (/dev/vda, vdb, ... in the guest), after the NIC
    # in the boot order: the firmware still network-boots first.
    disks: list[Path] = field(default_factory=list)
    # serial numbers of `disks` (virtio-blk serial=), in order; shorter: the rest have none
    disk_serials: list[str] = field(default_factory=list)
    # (raw image, serial) attached as scsi-hd disks on one virtio-scsi controller (/dev/sda, ...)
    scsi_disks: list[tuple[Path, str]] = field(default_factory=list)
    # more NICs (virtio-net, no boot ROM), each on its own tap of the bridge
    extra_macs: list[str] = field(default_factory=list)
    # a TPM 2.0 (tpm-tis): swtpm started by the lab beside QEMU, its state in this directory
    tpm_dir: Path | None = None
    # OVMF HTTPS boot's trusted CAs: an EFI signature list passed as fw_cfg etc/edk2/https/cacerts
    ca_esl: Path | None = None
    # Secure Boot: a vars file with PK/KEK/db enrolled (virt-fw-vars); OVMF's secboot build, q35+SMM
    sb_vars: Path | None = None
    proc: Proc | None = None
    t_start: float = 0.0  # time.time() when QEMU was started
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, text)
    _raw: bytearray = field(default_factory=bytearray)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: threading.Thread | None = None

    @property
    def serial_path(self) -> Path:
        return self.lab.workdir / f"{self.name}.serial.log"

    def start(self) -> VM:
        fw, rom = CLIENTS[self.client]
        tap = self.lab.add_tap()
        qemu = QEMU
        if fw == "aavmf":
            qemu = QEMU_ARM64
            vars_fd = self.lab.workdir / f"{self.name}.AAVMF_VARS.fd"
            shutil.copyfile(AAVMF_VARS, vars_fd)
            fw_args = ["-machine", "virt", "-cpu", "cortex-a57",
                       "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
                       "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]
            if self.client in HTTP_CLIENTS:
                for name in HTTP_BOOT_FW_CFG:
                    fw_args += ["-fw_cfg", f"name={name},string=no"]
            if self.ca_esl is not None:
                fw_args += ["-fw_cfg", f"name={HTTPS_CACERTS},file={self.ca_esl}"]
        elif fw == "uefi":
            vars_fd = self.lab.workdir / f"{self.name}.OVMF_VARS.fd"
            shutil.copyfile(self.sb_vars or OVMF_VARS, vars_fd)
            code = OVMF_CODE_SECBOOT if self.sb_vars else OVMF_CODE
            fw_args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                       "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]
            if self.sb_vars:
                fw_args += ["-machine", "q35,smm=on",
                            "-global", "driver=cfi.pflash01,property=secure,value=on"]
            if self.client in HTTP_CLIENTS:
                for name in HTTP_BOOT_FW_CFG:
                    fw_args += ["-fw_cfg", f"name={name},string=no"]
            if self.ca_esl is not None:
                fw_args += ["-fw_cfg", f"name={HTTPS_CACERTS},file={self.ca_esl}"]
        else:
            fw_args = ["-boot", "n"]
        romopt = "" if rom is None else f",romfile={rom}"
        argv = [
            qemu, "-accel", "tcg", *fw_args, "-m", str(self.memory_mb), "-smp", "1",
            # -nographic (not -display none): SeaBIOS and iPXE only print on the serial port then
            "-nographic", "-nodefaults", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"{self.nic},netdev=n0,mac={self.mac},bootindex=1{romopt}",
        ]
        for j, extra in enumerate(self.extra_macs, 1):
            argv += ["-netdev", f"tap,id=n{j},ifname={self.lab.add_tap()},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=n{j},mac={extra},romfile="]
        for i, disk in enumerate(self.disks):
            serial = f",serial={self.disk_serials[i]}" if i < len(self.disk_serials) else ""
            argv += ["-drive", f"file={disk},if=none,id=disk{i},format=raw,cache=unsafe",
                     "-device", f"virtio-blk-pci,drive=disk{i}{serial}"]
        if self.tpm_dir is not None:
            argv += self._tpm()
        if self.scsi_disks:
            argv += ["-device", "virtio-scsi-pci,id=scsi0"]
        for i, (disk, serial) in enumerate(self.scsi_disks):
            argv += ["-drive", f"file={disk},if=none,id=sdisk{i},format=raw,cache=unsafe",
                     "-device", f"scsi-hd,drive=sdisk{i},bus=scsi0.0,serial={serial}"]
        self.t_start = time.time()
        self.proc = self.lab.spawn(f"qemu-{self.name}", argv, ns=self.lab.ns_lan,
                                   log_name=f"{self.name}.qemu.log", stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, name=f"serial-{self.name}", daemon=True)
        self._reader.start()
        log(f"QEMU {self.name} started: client={self.client} mac={self.mac} pid={self.proc.pid}")
        return self

    def _tpm(self) -> list[str]:
        """swtpm (TPM 2.0) on a unix socket in tpm_dir, started by the lab (stopped by its PID;
        --terminate: it also ends when QEMU closes the socket); QEMU's arguments for it."""
        assert self.tpm_dir is not None
        self.tpm_dir.mkdir(parents=True, exist_ok=True)
        sock = self.tpm_dir / "swtpm.sock"
        sock.unlink(missing_ok=True)
        p = self.lab.spawn(f"swtpm-{self.name}", [
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_dir}",
            "--ctrl", f"type=unixio,path={sock}", "--terminate"], ns=self.lab.ns_lan)
        wait_for(lambda: sock.exists() or not p.alive(), 10, "swtpm's socket")
        if not p.alive():
            raise HarnessError(f"swtpm exited:\n{p.log_tail()}")
        return ["-chardev", f"socket,id=chrtpm,path={sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.popen.stdout is not None
        out = self.proc.popen.stdout
        partial = b""
        with open(self.serial_path, "ab") as f:
            while True:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    break
                now = time.time() - self.t_start
                if self.on_output:
                    self.on_output(chunk)
                f.write(chunk)
                f.flush()
                with self._lock:
                    self._raw += chunk
                    partial += chunk
                    *done, partial = partial.split(b"\n")
                    for line in done:
                        self.lines.append((now, line.decode(errors="replace")))
        if partial:
            self.lines.append((time.time() - self.t_start, partial.decode(errors="replace")))

    def console(self) -> str:
        with self._lock:
            return self._raw.decode(errors="replace")

    def first_line_with(self, text: str) -> tuple[float, str] | None:
        with self._lock:
            return next(((t, line) for t, line in self.lines if text in line), None)

    def exited(self) -> bool:
        return self.proc is not None and not self.proc.alive()

    def wait_exit(self, timeout: float) -> bool:
        try:
            wait_for(self.exited, timeout, f"QEMU {self.name} to exit", interval=0.1)
            return True
        except HarnessError:
            return False

    def stop(self, grace: float = 0.0) -> None:
        if self.proc is None:
            return
        if grace:
            self.wait_exit(grace)
        self.proc.stop(timeout=2)
        if self._reader:
            self._reader.join(2)
        with self._lock:  # the console with arrival times, for reading where a boot spent its time
            timed = [f"{t:7.2f} {c}" for t, line in self.lines
                     for c in clean_console(line).split("\n") if c]
        (self.lab.workdir / f"{self.name}.console.txt").write_text("\n".join(timed) + "\n")

    def console_tail(self, n: int = 30) -> str:
        lines = clean_console(self.console()).splitlines()
        return "\n".join(lines[-n:])

    def marker(self, name: str) -> str:
        """What the guest printed after `NETBOOTD-TEST: <name> ` (AssertionError if nothing)."""
        hit = self.first_line_with(f"NETBOOTD-TEST: {name} ")
        if hit is None:
            raise AssertionError(f"the guest printed no {name} line")
        return clean_console(hit[1]).split(f"NETBOOTD-TEST: {name} ", 1)[1].strip()


@dataclass
class BootResult:
    seconds: float  # QEMU start -> the guest's booted event acknowledged by netbootd (serial time)
    confirmed_after: float  # QEMU start -> the harness read last_boot from `netbootd hosts --json`
    host: dict[str, Any]


def parse_time(value: Any) -> float | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def wait_booted(nb: Netbootd, vm: VM, timeout: float = 90,
                since: float | None = None) -> BootResult:
    """Until netbootd's own state shows last_boot for vm.mac (with `since`: a last_boot at or after
    that time.time(), for a host that booted before). The guest's serial marker only tells the
    harness when to look; success is what `netbootd hosts --json` says."""

    def booted(host: dict[str, Any] | None) -> bool:
        t = parse_time(host.get("last_boot")) if host else None
        return t is not None and (since is None or t >= since)

    end = time.monotonic() + timeout
    # Each `netbootd hosts --json` costs ~0.25 s of CPU that the TCG guest would otherwise use,
    # so poll rarely until the guest's marker says the event was posted.
    next_check = time.monotonic() + 10.0
    marker_seen_at: float | None = None
    while True:
        now = time.monotonic()
        marker = vm.first_line_with(MARK_BOOTED)
        if marker and marker_seen_at is None:
            marker_seen_at = now
            next_check = now
        if now >= next_check:
            host = nb.host(vm.mac)
            if booted(host):
                assert host is not None
                confirmed = time.time() - vm.t_start
                seconds = marker[0] if marker else confirmed
                return BootResult(seconds, confirmed, host)
            next_check = now + (1.0 if marker_seen_at is not None else 5.0)
            if marker_seen_at is not None and now - marker_seen_at > 5:
                raise BootFailed(f"the guest says it posted its booted event, but `netbootd hosts "
                                 f"--json` shows no last_boot for {vm.mac}: {host}")
        failed = vm.first_line_with(MARK_BOOT_FAILED)
        if failed:
            raise BootFailed(f"the guest booted but could not POST its booted event: "
                             f"{failed[1].strip()}")
        if vm.exited() and marker is None:
            vm.stop()
            host = nb.host(vm.mac)
            if booted(host):
                assert host is not None
                return BootResult(time.time() - vm.t_start, time.time() - vm.t_start, host)
            raise BootFailed(f"QEMU exited ({vm.proc.popen.returncode if vm.proc else '?'}) "
                             f"before the host booted")
        if now > end:
            raise BootFailed(f"no booted event from {vm.mac} within {timeout:.0f}s of QEMU start")
        time.sleep(0.1)


def booted_or_fail(lab: Lab, nb: Netbootd, vm: VM, timeout: float = 150,
                   since: float | None = None, grace: float = 3.0) -> BootResult:
    """wait_booted, then the VM stopped (given `grace` seconds to power off by itself); a boot
    that fails fails the test with the lab's diagnostics. (pytest is imported only here: the
    lab and the benchmarks run without it.)"""
    try:
        return wait_booted(nb, vm, timeout=timeout, since=since)
    except BootFailed as e:
        vm.stop()
        import pytest
        pytest.fail(f"{e}\n{diagnostics(lab, nb, vm)}", pytrace=False)
    finally:
        vm.stop(grace=grace)


# what OVMF prints when it refuses an image under Secure Boot, or gives up an HTTPS boot
FIRMWARE_REFUSED = ("Access Denied", "Security Violation", "Could not retrieve NBP")
MARK_INIT = "NETBOOTD-TEST: init started"


def wait_refused(vm: VM, markers: tuple[str, ...] = FIRMWARE_REFUSED,
                 timeout: float = 90) -> str:
    """Until the console shows one of `markers` (the firmware's or iPXE's refusal): that
    marker. AssertionError when the guest's kernel starts instead, or nothing within
    `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not vm.exited():
        console = vm.console()
        hit = next((m for m in markers if m in console), None)
        if hit:
            return hit
        if MARK_INIT in console:
            raise AssertionError(f"the kernel started: not refused\n{vm.console_tail(20)}")
        time.sleep(0.2)
    raise AssertionError(f"not refused within {timeout:.0f}s\n{vm.console_tail(30)}")


def diagnostics(lab: Lab, nb: Netbootd | None, vm: VM | None) -> str:
    parts = []
    if vm is not None:
        parts += [f"---- serial console of {vm.name} (tail, {vm.serial_path})", vm.console_tail(30)]
        if vm.proc and vm.proc.log_path:
            parts += ["---- qemu stderr", tail(vm.proc.log_path, 8)]
    if nb is not None:
        parts += ["---- netbootd log (tail)", nb.log_tail(30)]
    parts += ["---- site DHCP dnsmasq log (tail)", tail(lab.dnsmasq_log, 15)]
    parts += [f"---- br0 capture (tail, {lab.pcap})", lab.pcap_summary(30)]
    return "\n".join(parts)



def swtpm_manufacture(state_dir: Path, work: Path) -> tuple[Path, Path]:
    """Make a TPM 2.0 the way a vendor does, in swtpm's state directory `state_dir` (before the
    VM's swtpm starts on it): `swtpm_setup --create-ek-cert` with swtpm's own local CA
    (swtpm_localca, its CA in `work`/ca) creates the RSA 2048 EK at 0x81010001 and an EK
    certificate in the TPM's NV index 0x1c00002, and writes a copy of that certificate for the
    host side. Returns (the EK certificate, DER; the local CA's issuer certificate, PEM)."""
    ca, certs = work / "ca", work / "ek-certs"
    ca.mkdir(parents=True, exist_ok=True)
    certs.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    localca, options, setup = work / "localca.conf", work / "localca.options", work / "setup.conf"
    localca.write_text(f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
                       f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n")
    options.write_text("--platform-manufacturer netbootd-test\n--platform-version 2.1\n"
                       "--platform-model QEMU\n")
    setup.write_text("create_certs_tool = /usr/bin/swtpm_localca\n"
                     f"create_certs_tool_config = {localca}\n"
                     f"create_certs_tool_options = {options}\n")
    r = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state_dir),
                        "--create-ek-cert", "--overwrite", "--config", str(setup),
                        "--write-ek-cert-files", str(certs)],
                       capture_output=True, text=True, timeout=120, check=False)
    cert = certs / "ek-rsa2048.crt"
    if r.returncode != 0 or not cert.exists():
        raise HarnessError(f"swtpm_setup failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return cert, ca / "issuercert.pem"
