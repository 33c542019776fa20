"""The end-to-end lab: real QEMU PXE clients booting from netbootd inside network namespaces.

    ns LAN  br0 ── tapN ── QEMU (SeaBIOS | OVMF, NIC's iPXE ROM or firmware's own PXE)
             ├── vsrv  ══ ns SRV   eth0 192.168.77.1  netbootd serve (proxyDHCP 67/4011,
             │                                        TFTP 69, HTTP 8080)
             └── vdhcp ══ ns DHCP  eth0 192.168.77.2  dnsmasq: the "site" DHCP server (addresses
                                                      + an IPv6 RA, no boot options: a home router)
    tcpdump on br0 writes lan.pcap for every run.

Nothing is created in the root network namespace. Every namespace is named
`nbde2e-<pid>-<starttime>-<n>-{lan,srv,dhcp}` after the process that made it, so a later run can
tell a killed run's leftovers (owner gone) from a parallel run's (owner alive) and remove them,
processes inside first (`testbed.netns.cleanup_stale("nbde2e")`). Every process is started with
PR_SET_PDEATHSIG and only ever stopped by its PID (testbed.procs).

Used by tests/e2e (conftest.py's fixtures), bench/vmboot.py and `python -m testbed` (demo.py).
netbootd is driven through its real CLI as a subprocess, the way an operator does: the lab is
independent of netbootd's internals.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from testbed import REPO
from testbed.netns import Env, http_get, ip
from testbed.procs import HarnessError, Proc, logger, netns_argv, run, tail, wait_for
from testbed.vm import VM

log = logger("e2e")

IMAGE_BUILDER = REPO / "images" / "test-initramfs" / "build.py"

PREFIX = "nbde2e"
NET = "192.168.77"
SRV_IP = f"{NET}.1"
DHCP_IP = f"{NET}.2"
HTTP_PORT = 8080
TFTP_PORT = 69
ROLE = "e2e"
ROLE_CMDLINE = "console=ttyS0 quiet"


class Missing(HarnessError):
    """Something the lab needs cannot be had here (a kernel package, an overlay's tools)."""


def _build(argv: Sequence[str], what: str, timeout: float) -> None:
    r = subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode == 2:  # the builders' "cannot be had here"
        why = [ln for ln in r.stderr.splitlines() if ln.startswith("test-initramfs:")]
        raise Missing(why[-1].split(":", 1)[1].strip() if why else r.stderr.strip())
    if r.returncode != 0:
        raise HarnessError(f"building {what} failed:\n{r.stderr.strip()}")


def build_image(outdir: Path, *args: str,
                overlay: tuple[Path, Sequence[str]] | None = None) -> dict[str, str]:
    """images/test-initramfs/build.py outdir [args] -> {vmlinuz, initramfs, kernel_version, ...}.

    With overlay=(builder, its args), that overlay builder (images/test-initramfs/*_overlay.py)
    runs first and its output goes into the image (--overlay). Raises Missing when the kernel or
    the overlay cannot be had here (a builder's exit status 2)."""
    if overlay is not None:
        builder, overlay_args = overlay
        _build([str(builder), str(outdir / "overlay"), *overlay_args], "the image overlay", 120)
        args = ("--overlay", str(outdir / "overlay"), *args)
    _build([str(IMAGE_BUILDER), str(outdir), *args], "the test image", 600)
    return dict(json.loads((outdir / "build.json").read_text()))


class Lab(Env):
    """The namespaces, bridge, site DHCP server and packet capture of one run."""

    def __init__(self, workdir: Path | None = None, pdeathsig: bool = True) -> None:
        super().__init__(PREFIX, workdir, keep=bool(os.environ.get("NETBOOTD_E2E_KEEP")),
                         pdeathsig=pdeathsig, log=log)
        self.ns_lan, self.ns_srv, self.ns_dhcp = (f"{self.id}-{x}" for x in ("lan", "srv", "dhcp"))
        self.taps = itertools.count(0)
        self.pcap = self.workdir / "lan.pcap"
        self.dnsmasq_log = self.workdir / "site-dnsmasq.log"
        self.closed = False
        _LIVE.add(self)

    # -- building blocks
    def sysctl0(self, ns: str, *keys: str) -> None:
        cmd = "; ".join(f"echo 0 > /proc/sys/{k.replace('.', '/')}" for k in keys)
        run(netns_argv(ns, ["sh", "-c", cmd]))

    def _add_server_ns(self, ns: str, veth: str, addr: str) -> None:
        self.add_netns(ns)
        self.sysctl0(ns, "net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad")
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.ns_lan)
        ip("link", "set", veth, "master", "br0", "up", ns=self.ns_lan)
        ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)

    def add_host(self, what: str, address: str, *more: str) -> str:
        """Another machine on the LAN (an attacker, a second server, a second client): a
        namespace of this run with eth0 on the bridge at `address` (no DHCP), and any `more`
        addresses (/24) on the same eth0 -- many sources for one attacker. Returns the
        namespace's name; close() removes it."""
        ns = f"{self.id}-{what}"
        self._add_server_ns(ns, f"v{what}"[:15], address)
        if more:
            batch = "".join(f"addr add {a}/24 dev eth0\n" for a in more)
            run(["ip", "-n", ns, "-batch", "-"], input=batch)
        return ns

    # -- lifecycle
    def up(self, site_dhcp: bool = True, capture: bool = True) -> Self:
        """The bridge and the server's namespace; with `site_dhcp` the site's DHCP server (what
        VMs need), with `capture` tcpdump on the bridge (lan.pcap)."""
        t0 = time.monotonic()
        self.add_netns(self.ns_lan)
        ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
           ns=self.ns_lan)
        ip("link", "set", "br0", "up", ns=self.ns_lan)
        self._add_server_ns(self.ns_srv, "vsrv", SRV_IP)
        if site_dhcp:
            self._add_server_ns(self.ns_dhcp, "vdhcp", DHCP_IP)
            ip("addr", "add", "fd77::2/64", "dev", "eth0", "nodad", ns=self.ns_dhcp)
        cap = None
        if capture:
            cap = self.spawn("tcpdump", ["tcpdump", "-i", "br0", "-n", "-U", "--immediate-mode",
                                         "-w", str(self.pcap)], ns=self.ns_lan)
        if site_dhcp:
            self._start_site_dhcp()
        if cap is not None:
            wait_for(lambda: "listening on" in tail(cap.log_path, 5), 5,
                     "tcpdump to start on br0")
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
            + ("" if os.environ.get("NETBOOTD_E2E_NO_RA")
               else "enable-ra\ndhcp-range=fd77::,ra-only,64\n")
        )
        p = self.spawn("site-dnsmasq", ["dnsmasq", "-C", str(conf), "-k",
                                         f"--pid-file={self.workdir}/site-dnsmasq.pid"],
                       ns=self.ns_dhcp)
        wait_for(lambda: "DHCP, IP range" in tail(self.dnsmasq_log, 20) or not p.alive(), 5,
                 "the site DHCP server (dnsmasq) to start")
        if not p.alive():
            raise HarnessError(f"site dnsmasq exited:\n{p.log_tail()}\n{tail(self.dnsmasq_log)}")

    def add_tap(self) -> str:
        tap = f"tap{next(self.taps)}"
        ip("tuntap", "add", "dev", tap, "mode", "tap", ns=self.ns_lan)
        ip("link", "set", tap, "master", "br0", "up", ns=self.ns_lan)
        return tap

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        super().close()
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- evidence
    def pcap_count(self, bpf: str) -> int:
        r = run(["tcpdump", "-r", str(self.pcap), "-n", bpf], check=False)
        return len([line for line in r.stdout.splitlines() if line.strip()])

    def packets(self, bpf: str = "") -> list[Any]:
        """The capture so far as scapy packets (optionally filtered by tcpdump first)."""
        from scapy.utils import rdpcap  # only here: the lab runs without scapy otherwise

        src = self.pcap
        if bpf:
            src = self.workdir / "filtered.pcap"
            run(["tcpdump", "-r", str(self.pcap), "-w", str(src), bpf], check=False)
        return list(rdpcap(str(src)))

    def http_requests(self, mac: str) -> list[tuple[int, str, str]]:
        """Plain-HTTP request lines the host `mac` sent on the LAN: (dst port, method, path)."""
        from scapy.layers.inet import TCP
        from scapy.packet import Raw

        out = []
        for p in self.packets(f"ether src {mac} and tcp"):
            if TCP in p and Raw in p:
                first = bytes(p[Raw].load).split(b"\r\n", 1)[0].decode("latin-1")
                parts = first.split(" ")
                if len(parts) == 3 and parts[2].startswith("HTTP/") and parts[0].isupper():
                    out.append((int(p[TCP].dport), parts[0], parts[1]))
        return out

    def http_responses(self, src_port: int, mac: str) -> list[bytes]:
        """Plain-HTTP response heads sent from port `src_port` to the host `mac`."""
        from scapy.packet import Raw

        return [bytes(p[Raw].load).split(b"\r\n\r\n", 1)[0]
                for p in self.packets(f"ether dst {mac} and tcp src port {src_port}")
                if Raw in p and bytes(p[Raw].load).startswith(b"HTTP/")]

    def pcap_summary(self, n: int = 40, bpf: str = "") -> str:
        r = run(["tcpdump", "-r", str(self.pcap), "-n", "-e", *([bpf] if bpf else [])], check=False)
        return "\n".join(r.stdout.splitlines()[-n:])


_LIVE: set[Lab] = set()


@atexit.register
def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


def netbootd_cli() -> list[str]:
    """How the harness runs netbootd's CLI: `python -m netbootd` with this interpreter. For
    experiments NETBOOTD_E2E_CLI replaces it with a (shell-quoted) command, and
    NBDBENCH_NETBOOTD_WRAPPER with a script this interpreter runs."""
    if override := os.environ.get("NETBOOTD_E2E_CLI"):
        return shlex.split(override)
    if wrapper := os.environ.get("NBDBENCH_NETBOOTD_WRAPPER"):
        return [sys.executable, wrapper]
    return [sys.executable, "-m", "netbootd"]


def mac_colon(mac: str) -> str:
    return mac.lower().replace("-", ":")


class Netbootd:
    """netbootd driven through its real CLI, with a state dir of its own."""

    def __init__(self, state_dir: Path, command: Sequence[str] | None = None) -> None:
        """`command`: how to run netbootd instead of netbootd_cli() (e.g. another install,
        as another user through setpriv)."""
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.command = list(command) if command is not None else netbootd_cli()

    def cli(self, *args: str, ns: str | None = None, timeout: float = 120) -> str:
        argv = [*self.command, "--state-dir", str(self.state_dir), *args]
        r = run(netns_argv(ns, argv), check=False, timeout=timeout, cwd=REPO)
        if r.returncode != 0:
            raise HarnessError(f"`netbootd {shlex.join(args)}` failed ({r.returncode}):\n"
                               f"{r.stderr.strip()}")
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
            raise HarnessError(
                f"`netbootd hosts --json` printed no JSON ({e}): {out[:300]!r}") from None
        if not isinstance(data, list):
            raise HarnessError(f"`netbootd hosts --json` is not a list: {out[:300]!r}")
        return data

    def host(self, mac: str) -> dict[str, Any] | None:
        want = mac_colon(mac)
        return next((h for h in self.hosts() if mac_colon(str(h.get("mac", ""))) == want), None)

    def serve(self, lab: Lab, timeout: float = 30, config: Path | None = None,
              nofile: tuple[int, int] | None = None) -> Proc:
        """`netbootd serve` in the server's namespace, returned once /healthz answers. `config`:
        a TOML file (--config); `nofile`: the (soft, hard) RLIMIT_NOFILE it starts with, e.g.
        systemd's (1024, 524288)."""
        argv = [*self.command, "--state-dir", str(self.state_dir),
                *(["--config", str(config)] if config else []), "serve", "--interface", "eth0",
                "--advertise-address", SRV_IP, "--http-port", str(HTTP_PORT),
                "--tftp-port", str(TFTP_PORT)]
        if nofile is not None:
            argv = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", *argv]
        self.proc = lab.spawn("netbootd", argv, ns=lab.ns_srv)
        url = f"http://{SRV_IP}:{HTTP_PORT}/healthz"
        t0 = time.monotonic()

        def healthy() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise HarnessError(f"netbootd serve exited ({self.proc.popen.returncode}):\n"
                                   f"{self.proc.log_tail()}")
            try:
                return http_get(lab.ns_srv, url, timeout=1.0)[0] == 200
            except OSError:
                return False

        try:
            wait_for(healthy, timeout, f"netbootd /healthz at {url}", interval=0.1)
        except HarnessError as e:
            raise HarnessError(f"{e}\n---- netbootd log\n{self.proc.log_tail()}") from None
        log(f"netbootd serving in {lab.ns_srv} (pid {self.proc.pid}, "
            f"healthy after {time.monotonic() - t0:.1f}s)")
        return self.proc

    def log_tail(self, n: int = 30) -> str:
        return self.proc.log_tail(n) if self.proc else "(netbootd not started)"

    def log_lines_about(self, mac: str) -> list[str]:
        if not self.proc or not self.proc.log_path:
            return []
        forms = {mac_colon(mac), mac_colon(mac).replace(":", "-")}
        text = self.proc.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if any(f in line.lower() for f in forms)]


@dataclass
class Site:
    """A lab with netbootd serving in it and the test role added."""

    lab: Lab
    nb: Netbootd
    image: dict[str, str]

    @classmethod
    def start(cls, workdir: Path, image: dict[str, str], pdeathsig: bool = True,
              nofile: tuple[int, int] | None = None, config: Path | None = None) -> Site:
        """`config`: a TOML file `serve` reads (--config)."""
        lab = Lab(workdir / "lab", pdeathsig=pdeathsig)
        try:
            lab.up()
            nb = Netbootd(workdir / "state")
            nb.role_add(ROLE, Path(image["vmlinuz"]), [Path(image["initramfs"])], ROLE_CMDLINE)
            nb.serve(lab, nofile=nofile, config=config)
        except BaseException:
            lab.close()
            raise
        return cls(lab, nb, image)

    def vm(self, name: str, mac: str, client: str = "bios", **kw: Any) -> VM:
        return VM(self.lab, name, mac, client, **kw)

    def close(self) -> None:
        self.lab.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
