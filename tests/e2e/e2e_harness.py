#!/usr/bin/env python3
"""End-to-end harness: real QEMU PXE clients booting from netbootd inside network namespaces.

    ns LAN   br0 ── tapN ── QEMU (SeaBIOS | OVMF, NIC's iPXE ROM or firmware's own PXE)
              ├── vsrv  ══ ns SRV   eth0 192.168.77.1   netbootd serve (proxyDHCP 67/4011, TFTP 69, HTTP 8080)
              └── vdhcp ══ ns DHCP  eth0 192.168.77.2   dnsmasq: the "site" DHCP server (addresses + an
                                                        IPv6 RA, no boot options: a home router)
    tcpdump on br0 writes lan.pcap for every run.

Nothing is created in the root network namespace. Every namespace is named
`nbde2e-<pid>-<starttime>-<n>-{lan,srv,dhcp}` after the process that made it, so a later run can
tell a killed run's leftovers (owner gone) from a parallel run's (owner alive) and remove them,
processes inside first (`cleanup_stale`). Processes are only ever stopped by their PID.

Used by tests/e2e/conftest.py, and runnable on its own:

    python tests/e2e/e2e_harness.py demo [--fw bios|uefi|uefi-pxe]   # what `make demo` runs
    python tests/e2e/e2e_harness.py boot [--fw ...] [--json]        # one boot, exit 0 if it booted
    python tests/e2e/e2e_harness.py cleanup                         # remove stale namespaces

Only the standard library (and the netbootd CLI as a subprocess), so it is independent of
netbootd's internals: it speaks to netbootd the way an operator does.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGE_BUILDER = REPO / "images" / "test-initramfs" / "build.py"

PREFIX = "nbde2e"
NET = "192.168.77"
SRV_IP = f"{NET}.1"
DHCP_IP = f"{NET}.2"
HTTP_PORT = 8080
TFTP_PORT = 69
ROLE = "e2e"
ROLE_CMDLINE = "console=ttyS0 quiet"
# What the guest's /init prints (images/test-initramfs/rootfs/etc/netbootd/hooks.d/90-booted.sh)
MARK_BOOTED = "NETBOOTD-TEST: BOOTED-EVENT-SENT"
MARK_BOOT_FAILED = "NETBOOTD-TEST: BOOTED-EVENT-FAILED"
# What iPXE / SeaBIOS print once PXE has given up on every network device
GAVE_UP = ("No more network devices", "No bootable device", "Nothing to boot")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"

# Firmware x NIC-ROM combinations the tests name. rom=None keeps QEMU's default ROM for the NIC
# (Debian's ipxe-qemu: legacy + EFI iPXE); rom="" removes it (SeaBIOS: no PXE; OVMF: native PXE).
CLIENTS: dict[str, tuple[str, str | None]] = {
    "bios": ("bios", None),  # SeaBIOS + the NIC's iPXE ROM
    "uefi": ("uefi", None),  # OVMF + the NIC's EFI iPXE ROM
    "uefi-pxe": ("uefi", ""),  # OVMF's own PXE -> TFTP ipxe.efi -> iPXE
}


class E2EError(Exception):
    """A harness step failed; the message says which and why."""


class BootFailed(E2EError):
    pass


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- processes


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if PID is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


OWNER = f"{os.getpid()}-{proc_starttime(os.getpid())}"
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-")
_counter = itertools.count(1)


def owner_alive(pid: int, start: int) -> bool:
    return proc_starttime(pid) == start


_LIBC = ctypes.CDLL(None, use_errno=True)


def _set_pdeathsig() -> None:
    # Runs in the forked child before exec: one syscall, no allocation, no Python locks.
    # The child gets SIGKILL when the harness dies, even by SIGKILL. Survives `ip netns exec`'s exec.
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(argv: Sequence[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise E2EError(f"`{shlex.join(argv)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r


def stop_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the PID is gone (or not ours to wait)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if proc_starttime(pid) is None:
                return
            time.sleep(0.05)


@dataclass
class Proc:
    """A process the harness started (possibly inside a namespace), stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def log_tail(self, n: int = 30) -> str:
        return tail(self.log_path, n) if self.log_path else ""


def tail(path: Path | None, n: int = 30) -> str:
    if path is None or not path.exists():
        return f"({path}: none)"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[c78]|\x1b\][^\x07]*\x07")


def clean_console(text: str) -> str:
    """Serial console text without escape sequences, \\r-rewritten progress lines split out."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line for line in text.split("\n") if line.strip())


# ---------------------------------------------------------------------------------- namespaces


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split()]


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn() in a short-lived thread that has joined network namespace `ns`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _LIBC.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET; only this thread moves
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            finally:
                os.close(fd)
            box["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(ns: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET url from inside namespace ns (never through an http_proxy from the environment)."""

    def get() -> tuple[int, bytes]:
        try:
            with _NO_PROXY.open(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return in_netns(ns, get)


def cleanup_stale(log_fn: Callable[[str], None] = log) -> list[str]:
    """Remove namespaces (and the processes in them) and work dirs left by killed runs.

    Only names with our prefix whose owner process is gone are touched; a parallel run's
    namespaces (owner alive) are left alone."""
    removed: list[str] = []
    for ns in list_netns():
        m = _NS_RE.match(ns)
        if not m or owner_alive(int(m.group(1)), int(m.group(2))):
            continue
        pids = netns_pids(ns)
        for pid in pids:
            stop_pid(pid, timeout=1.0)
        r = run(["ip", "netns", "del", ns], check=False)
        if r.returncode == 0:
            removed.append(ns)
            log_fn(f"removed stale namespace {ns}" + (f" (stopped PIDs {pids})" if pids else ""))
        else:
            log_fn(f"could not remove stale namespace {ns}: {r.stderr.strip()}")
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        m = _NS_RE.match(d.name + "-")
        if m and d.is_dir() and not owner_alive(int(m.group(1)), int(m.group(2))):
            shutil.rmtree(d, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------- prerequisites


def missing_prerequisites(uefi: bool = True) -> list[str]:
    """Why the e2e tests cannot run here (empty list: they can)."""
    why: list[str] = []
    if os.geteuid() != 0:
        return ["not root (network namespaces, taps and ports 67/69 need root)"]
    for tool, pkg in (("ip", "iproute2"), (QEMU, "qemu-system-x86"), ("dnsmasq", "dnsmasq-base"),
                      ("tcpdump", "tcpdump"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            why.append(f"{tool} not found (Debian package {pkg})")
    for f, pkg in ((Path("/usr/lib/ipxe/ipxe.efi"), "ipxe"), (Path("/usr/lib/ipxe/undionly.kpxe"), "ipxe"),
                   (Path("/usr/lib/ipxe/qemu/efi-virtio.rom"), "ipxe-qemu")):
        if not f.exists():
            why.append(f"{f} missing (Debian package {pkg})")
    if uefi:
        for f in (OVMF_CODE, OVMF_VARS):
            if not f.exists():
                why.append(f"{f} missing (Debian package ovmf)")
    if why:
        return why
    probe = f"{PREFIX}-{OWNER}-0-probe"
    r = run(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        return [f"cannot create a network namespace: {r.stderr.strip()}"]
    run(["ip", "netns", "del", probe], check=False)
    return []


def build_image(outdir: Path) -> dict[str, str]:
    """images/test-initramfs/build.py -> {vmlinuz, initramfs, kernel_version, ...}.

    Raises E2EError("missing: ...") when the kernel cannot be had (build exit status 2)."""
    r = subprocess.run([sys.executable, str(IMAGE_BUILDER), str(outdir)],
                       check=False, capture_output=True, text=True, timeout=600)
    if r.returncode == 2:
        why = [ln for ln in r.stderr.splitlines() if ln.startswith("test-initramfs:")]
        raise E2EError(f"missing: {why[-1].split(':', 1)[1].strip() if why else r.stderr.strip()}")
    if r.returncode != 0:
        raise E2EError(f"building the test image failed:\n{r.stderr.strip()}")
    return dict(json.loads((outdir / "build.json").read_text()))


# ---------------------------------------------------------------------------------- the lab


class Lab:
    """The namespaces, bridge, site DHCP server and packet capture of one run."""

    def __init__(self, workdir: Path | None = None, pdeathsig: bool = True) -> None:
        self.id = f"{PREFIX}-{OWNER}-{next(_counter)}"
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.own_workdir = workdir is None
        self.ns_lan, self.ns_srv, self.ns_dhcp = (f"{self.id}-{x}" for x in ("lan", "srv", "dhcp"))
        self.pdeathsig = pdeathsig
        self.procs: list[Proc] = []
        self.namespaces: list[str] = []
        self.taps = itertools.count(0)
        self.pcap = self.workdir / "lan.pcap"
        self.dnsmasq_log = self.workdir / "site-dnsmasq.log"
        self.closed = False
        _LIVE.add(self)

    # -- building blocks
    def spawn(self, name: str, argv: Sequence[str], ns: str | None = None, log_name: str | None = None,
              stdout: int | None = None) -> Proc:
        full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        log_path = self.workdir / (log_name or f"{name}.log")
        with open(log_path, "ab") as logf:
            p = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else logf,
                stderr=logf,
                # PR_SET_PDEATHSIG has no Popen equivalent; _set_pdeathsig is one async-safe syscall
                preexec_fn=_set_pdeathsig if self.pdeathsig else None,  # noqa: PLW1509
            )
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def ip(self, *args: str, ns: str | None = None) -> None:
        run(["ip", *(["-n", ns] if ns else []), *args])

    def sysctl0(self, ns: str, *keys: str) -> None:
        cmd = "; ".join(f"echo 0 > /proc/sys/{k.replace('.', '/')}" for k in keys)
        run(["ip", "netns", "exec", ns, "sh", "-c", cmd])

    def _add_ns(self, ns: str) -> None:
        self.ip("netns", "add", ns)
        self.namespaces.append(ns)
        self.ip("link", "set", "lo", "up", ns=ns)

    def _add_server_ns(self, ns: str, veth: str, addr: str) -> None:
        self._add_ns(ns)
        self.sysctl0(ns, "net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad")
        self.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.ns_lan)
        self.ip("link", "set", veth, "master", "br0", "up", ns=self.ns_lan)
        self.ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
        self.ip("link", "set", "eth0", "up", ns=ns)

    # -- lifecycle
    def up(self) -> Self:
        t0 = time.monotonic()
        self._add_ns(self.ns_lan)
        self.ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", ns=self.ns_lan)
        self.ip("link", "set", "br0", "up", ns=self.ns_lan)
        self._add_server_ns(self.ns_srv, "vsrv", SRV_IP)
        self._add_server_ns(self.ns_dhcp, "vdhcp", DHCP_IP)
        self.ip("addr", "add", "fd77::2/64", "dev", "eth0", "nodad", ns=self.ns_dhcp)
        cap = self.spawn("tcpdump", ["tcpdump", "-i", "br0", "-n", "-U", "--immediate-mode", "-w", str(self.pcap)],
                         ns=self.ns_lan)
        self._start_site_dhcp()
        wait_for(lambda: "listening on" in tail(cap.log_path, 5), 5, "tcpdump to start on br0")
        log(f"lab {self.id} up in {time.monotonic() - t0:.1f}s (work dir {self.workdir})")
        return self

    def _start_site_dhcp(self) -> None:
        conf = self.workdir / "site-dnsmasq.conf"
        # A plain home-router DHCP server: addresses and an IPv6 RA, no boot options at all.
        # The RA (no M/O flags, ra-only) matters: without any RA on the link, iPXE waits ~16 s.
        conf.write_text(
            "port=0\ninterface=eth0\nbind-interfaces\nuser=root\nlog-dhcp\nno-ping\n"
            f"dhcp-range={NET}.100,{NET}.199,255.255.255.0,10m\n"
            f"dhcp-leasefile={self.workdir}/site-dnsmasq.leases\n"
            f"log-facility={self.dnsmasq_log}\n"
            + ("" if os.environ.get("NETBOOTD_E2E_NO_RA") else "enable-ra\ndhcp-range=fd77::,ra-only,64\n")
        )
        p = self.spawn("site-dnsmasq", ["dnsmasq", "-C", str(conf), "-k",
                                         f"--pid-file={self.workdir}/site-dnsmasq.pid"], ns=self.ns_dhcp)
        wait_for(lambda: "DHCP, IP range" in tail(self.dnsmasq_log, 20) or not p.alive(), 5,
                 "the site DHCP server (dnsmasq) to start")
        if not p.alive():
            raise E2EError(f"site dnsmasq exited:\n{p.log_tail()}\n{tail(self.dnsmasq_log)}")

    def add_tap(self) -> str:
        tap = f"tap{next(self.taps)}"
        self.ip("tuntap", "add", "dev", tap, "mode", "tap", ns=self.ns_lan)
        self.ip("link", "set", tap, "master", "br0", "up", ns=self.ns_lan)
        return tap

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                log(f"stopping {p.name} (pid {p.pid}): {e}")
        for ns in reversed(self.namespaces):
            left = netns_pids(ns)
            for pid in left:  # started by our children inside our namespace
                stop_pid(pid, 1.0)
            run(["ip", "netns", "del", ns], check=False)
        if self.own_workdir and not os.environ.get("NETBOOTD_E2E_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- evidence
    def pcap_count(self, bpf: str) -> int:
        r = run(["tcpdump", "-r", str(self.pcap), "-n", bpf], check=False)
        return len([line for line in r.stdout.splitlines() if line.strip()])

    def pcap_summary(self, n: int = 40, bpf: str = "") -> str:
        r = run(["tcpdump", "-r", str(self.pcap), "-n", "-e", *([bpf] if bpf else [])], check=False)
        return "\n".join(r.stdout.splitlines()[-n:])


_LIVE: set[Lab] = set()


@atexit.register
def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise E2EError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------- netbootd


def netbootd_cli() -> list[str]:
    override = os.environ.get("NETBOOTD_E2E_CLI")
    return shlex.split(override) if override else [sys.executable, "-m", "netbootd"]


def mac_colon(mac: str) -> str:
    return mac.lower().replace("-", ":")


class Netbootd:
    """netbootd driven through its real CLI, with a state dir of its own."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None

    def cli(self, *args: str, ns: str | None = None, timeout: float = 120) -> str:
        argv = [*netbootd_cli(), "--state-dir", str(self.state_dir), *args]
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        r = run(argv, check=False, timeout=timeout, cwd=REPO)
        if r.returncode != 0:
            raise E2EError(f"`netbootd {shlex.join(args)}` failed ({r.returncode}):\n{r.stderr.strip()}")
        return r.stdout

    def role_add(self, name: str, kernel: Path, initrds: Iterable[Path], cmdline: str) -> None:
        args = ["role", "add", name, "--kernel", str(kernel)]
        for i in initrds:
            args += ["--initrd", str(i)]
        self.cli(*args, "--cmdline", cmdline)

    def enroll(self, mac: str, role: str, hostname: str | None = None) -> None:
        self.cli("enroll", mac, role, *(["--hostname", hostname] if hostname else []))

    def hosts(self) -> list[dict[str, Any]]:
        out = self.cli("hosts", "--json", timeout=30)
        try:
            data = json.loads(out)
        except json.JSONDecodeError as e:
            raise E2EError(f"`netbootd hosts --json` printed no JSON ({e}): {out[:300]!r}") from None
        if not isinstance(data, list):
            raise E2EError(f"`netbootd hosts --json` is not a list: {out[:300]!r}")
        return data

    def host(self, mac: str) -> dict[str, Any] | None:
        want = mac_colon(mac)
        return next((h for h in self.hosts() if mac_colon(str(h.get("mac", ""))) == want), None)

    def serve(self, lab: Lab, timeout: float = 30) -> Proc:
        argv = [*netbootd_cli(), "--state-dir", str(self.state_dir), "serve", "--interface", "eth0",
                "--advertise-address", SRV_IP, "--http-port", str(HTTP_PORT), "--tftp-port", str(TFTP_PORT)]
        self.proc = lab.spawn("netbootd", argv, ns=lab.ns_srv)
        url = f"http://{SRV_IP}:{HTTP_PORT}/healthz"
        t0 = time.monotonic()

        def healthy() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise E2EError(f"netbootd serve exited ({self.proc.popen.returncode}):\n{self.proc.log_tail()}")
            try:
                return http_get(lab.ns_srv, url, timeout=1.0)[0] == 200
            except OSError:
                return False

        try:
            wait_for(healthy, timeout, f"netbootd /healthz at {url}", interval=0.1)
        except E2EError as e:
            raise E2EError(f"{e}\n---- netbootd log\n{self.proc.log_tail()}") from None
        log(f"netbootd serving in {lab.ns_srv} (pid {self.proc.pid}, healthy after {time.monotonic() - t0:.1f}s)")
        return self.proc

    def log_tail(self, n: int = 30) -> str:
        return self.proc.log_tail(n) if self.proc else "(netbootd not started)"

    def log_lines_about(self, mac: str) -> list[str]:
        if not self.proc or not self.proc.log_path:
            return []
        forms = {mac_colon(mac), mac_colon(mac).replace(":", "-")}
        text = self.proc.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if any(f in line.lower() for f in forms)]


# ---------------------------------------------------------------------------------- the VM


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
        if fw == "uefi":
            vars_fd = self.lab.workdir / f"{self.name}.OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_fd)
            fw_args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                       "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]
        else:
            fw_args = ["-boot", "n"]
        romopt = "" if rom is None else f",romfile={rom}"
        argv = [
            QEMU, "-accel", "tcg", *fw_args, "-m", str(self.memory_mb), "-smp", "1",
            # -nographic (not -display none): SeaBIOS and iPXE only print on the serial port then
            "-nographic", "-nodefaults", "-serial", "stdio", "-monitor", "none", "-no-reboot",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"{self.nic},netdev=n0,mac={self.mac},bootindex=1{romopt}",
        ]
        for i, disk in enumerate(self.disks):
            argv += ["-drive", f"file={disk},if=none,id=disk{i},format=raw,cache=unsafe",
                     "-device", f"virtio-blk-pci,drive=disk{i}"]
        self.t_start = time.time()
        self.proc = self.lab.spawn(f"qemu-{self.name}", argv, ns=self.lab.ns_lan,
                                   log_name=f"{self.name}.qemu.log", stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, name=f"serial-{self.name}", daemon=True)
        self._reader.start()
        log(f"QEMU {self.name} started: client={self.client} mac={self.mac} pid={self.proc.pid}")
        return self

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
        except E2EError:
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
            timed = [f"{t:7.2f} {c}" for t, line in self.lines for c in clean_console(line).split("\n") if c]
        (self.lab.workdir / f"{self.name}.console.txt").write_text("\n".join(timed) + "\n")

    def console_tail(self, n: int = 30) -> str:
        lines = clean_console(self.console()).splitlines()
        return "\n".join(lines[-n:])


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


def wait_booted(nb: Netbootd, vm: VM, timeout: float = 90, since: float | None = None) -> BootResult:
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
            raise BootFailed(f"the guest booted but could not POST its booted event: {failed[1].strip()}")
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


# ---------------------------------------------------------------------------------- one whole run


@dataclass
class Site:
    """A lab with netbootd serving in it and the test role added."""

    lab: Lab
    nb: Netbootd
    image: dict[str, str]

    @classmethod
    def start(cls, workdir: Path, image: dict[str, str], pdeathsig: bool = True) -> Site:
        lab = Lab(workdir / "lab", pdeathsig=pdeathsig)
        try:
            lab.up()
            nb = Netbootd(workdir / "state")
            nb.role_add(ROLE, Path(image["vmlinuz"]), [Path(image["initramfs"])], ROLE_CMDLINE)
            nb.serve(lab)
        except BaseException:
            lab.close()
            raise
        return cls(lab, nb, image)

    def vm(self, name: str, mac: str, client: str = "bios", **kw: Any) -> VM:
        return VM(self.lab, name, mac, client, **kw)

    def close(self) -> None:
        self.lab.close()


class DemoPrinter:
    """Interleaves the VM's serial console and netbootd's log on the terminal, with timestamps.

    Escape sequences that move the cursor or reset/clear the screen (SeaBIOS, OVMF) are dropped;
    colours are kept."""

    _MOVES = re.compile(rb"\x1bc|\x1b\[[0-9;?=]*[A-Za-ln-z]")

    def __init__(self) -> None:
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.at_line_start = True
        self.carry = b""
        self.stop = threading.Event()

    def _stamp(self) -> bytes:
        return f"\x1b[2m{time.time() - self.t0:6.2f}s\x1b[0m ".encode()

    def console(self, chunk: bytes) -> None:
        data = self.carry + chunk
        esc = data.rfind(b"\x1b")  # an escape sequence split across chunks waits for its end
        if esc != -1 and len(data) - esc < 16 and not re.match(rb"\x1b(c|\[[0-9;?=]*[A-Za-z])", data[esc:]):
            data, self.carry = data[:esc], data[esc:]
        else:
            self.carry = b""
        text = self._MOVES.sub(b"", data).replace(b"\r\n", b"\n").replace(b"\r", b"")
        out = bytearray()
        for line in text.splitlines(keepends=True):
            if self.at_line_start:
                out += self._stamp() + b"vm       | "
            out += line
            self.at_line_start = line.endswith(b"\n")
        with self.lock:
            sys.stdout.buffer.write(out)
            sys.stdout.flush()

    def server_line(self, line: str) -> None:
        # "2026-11-22 02:16:13,255 INFO netbootd.dhcp: msg" -> "INFO netbootd.dhcp: msg"
        line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line.rstrip("\n"))
        with self.lock:
            pre = b"" if self.at_line_start else b"\n"
            self.at_line_start = True
            sys.stdout.buffer.write(pre + self._stamp() + f"\x1b[36mnetbootd | {line}\x1b[0m\n".encode())
            sys.stdout.flush()

    def follow(self, path: Path) -> None:
        """Print lines appended to `path` (netbootd's log) until stop is set."""

        def run_() -> None:
            with open(path, errors="replace") as f:
                f.seek(0, os.SEEK_END)
                while not self.stop.is_set():
                    line = f.readline()
                    if line:
                        self.server_line(line)
                    else:
                        time.sleep(0.1)

        threading.Thread(target=run_, name="follow-netbootd", daemon=True).start()


def _cmd_boot(args: argparse.Namespace, demo: bool) -> int:
    removed = cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{OWNER}-"))
    result: dict[str, Any] = {"stale_removed": removed, "ok": False}
    site = None
    try:
        why = missing_prerequisites(uefi=CLIENTS[args.fw][0] == "uefi")
        if why:
            print("cannot run: " + "; ".join(why), file=sys.stderr)
            return 2
        image = build_image(work / "image")
        site = Site.start(work, image, pdeathsig=not args.no_pdeathsig)
        result.update(namespaces=list(site.lab.namespaces), workdir=str(work))
        site.nb.enroll(args.mac, ROLE, hostname="demo" if demo else "e2e-run")
        printer = DemoPrinter() if demo else None
        if printer and site.nb.proc and site.nb.proc.log_path:
            printer.follow(site.nb.proc.log_path)
            log(f"netbootd is serving; enrolled {args.mac} -> role {ROLE}. Booting a {args.fw} VM "
                "(QEMU under TCG); Ctrl-C stops and cleans up.")
        vm = site.vm(args.fw, args.mac, args.fw, on_output=printer.console if printer else None).start()
        pids = {p.name: p.pid for p in site.lab.procs}
        result.update(pids=pids)
        if args.json:  # tells a parent (the killed-run test) what to look for, before the boot ends
            print("E2E-STARTED " + json.dumps(result), flush=True)
        try:
            r = wait_booted(site.nb, vm, timeout=args.timeout)
        except BootFailed as e:
            print(f"\n{e}\n{diagnostics(site.lab, site.nb, vm)}", file=sys.stderr)
            return 1
        result.update(ok=True, boot_seconds=round(r.seconds, 2), host=r.host)
        if printer:
            vm.wait_exit(10)
            time.sleep(0.3)
            printer.stop.set()
            print(f"\x1b[0m\x1b[?7h\n*** {args.mac} network-booted from netbootd in {r.seconds:.1f}s "
                  f"(QEMU start -> booted event). `netbootd hosts --json` says:\n"
                  f"{json.dumps(r.host, indent=2)}", flush=True)
        else:
            vm.stop(grace=3)
        if args.json:
            print("E2E-RESULT " + json.dumps(result), flush=True)
        elif not demo:
            log(f"booted in {r.seconds:.1f}s")
        return 0
    except E2EError as e:
        print(f"e2e: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if demo:
            sys.stdout.write("\x1b[0m\x1b[?7h")  # the guest may have left colours or no-wrap set
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        if site:
            site.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="netbootd end-to-end harness (needs root)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("demo", "boot a VM from netbootd and stream its serial console"),
                        ("boot", "boot one VM from netbootd; exit 0 when it booted")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--fw", choices=sorted(CLIENTS), default="bios",
                       help="bios: SeaBIOS+iPXE ROM; uefi: OVMF+EFI iPXE ROM; uefi-pxe: OVMF native PXE")
        p.add_argument("--mac", default="52:54:00:12:34:56")
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--json", action="store_true", help="machine-readable progress on stdout")
        p.add_argument("--no-ra", action="store_true",
                       help="site DHCP sends no IPv6 router advertisements (shows iPXE's IPv6 wait)")
        p.add_argument("--no-pdeathsig", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("cleanup", help="remove namespaces and processes left by killed runs")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the e2e harness needs root (network namespaces, taps, ports 67/69)", file=sys.stderr)
        return 2
    # SIGTERM/SIGHUP clean up like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.cmd == "cleanup":
        removed = cleanup_stale()
        print(f"removed {len(removed)} stale namespace(s)")
        return 0
    if args.no_ra:
        os.environ["NETBOOTD_E2E_NO_RA"] = "1"
    return _cmd_boot(args, demo=args.cmd == "demo")


if __name__ == "__main__":
    sys.exit(main())
