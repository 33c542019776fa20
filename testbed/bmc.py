"""BMCs for the power tests: OpenIPMI's `ipmi_sim` driving a QEMU VM through QEMU's
`ipmi-bmc-extern` (its "VM" serial protocol), and sushy-tools' Redfish emulator with its fake
system driver. Also the two BMCs that never answer: a UDP port nobody reads and a TCP listener
that accepts and never replies.

`IpmiSim` writes ipmi_sim's lan.conf and emulator command file into a work directory. ipmi_sim
powers the VM on by running `startcmd` (QEMU, through `setpriv --pdeathsig KILL` so QEMU dies
with ipmi_sim even if the harness is SIGKILLed), powers it off by asking QEMU over the chardev
(QEMU exits), and a cycle is off, then on after 1 s. QEMU writes its PID to `qemu.pid`; stop()
stops ipmi_sim by its PID and then that QEMU by its PID (checked against its command line, so a
reused PID is never signalled).

With `boot_argv` (a function of the boot device: "pxe", "default", ...) ipmi_sim gets a
chassis-control program instead (testbed.ipmi_chassis): OpenIPMI's simulator stores a boot
device only through one, and then sends power to it too, so the harness's `Chassis` starts and
stops QEMU itself (from `boot_argv(device)`: the boot device decides the VM's boot order) and
records every command ipmi_sim gave it.

Everything listens on loopback or inside the network namespace the caller names.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import socket
import ssl
import sys
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.ipmi_chassis import Chassis
from testbed.procs import HarnessError, Proc, popen, proc_starttime, stop_pid, tail, wait_for

IPMI_USER = "admin"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class IpmiSim:
    """ipmi_sim with one BMC (channel 1: RMCP+ on `lan_addr`:`lan_port`) whose chassis is a
    QEMU VM started from `qemu_argv` (plus the IPMI chardev and devices added here)."""

    workdir: Path
    qemu_argv: list[str]
    password: str
    lan_addr: str = "127.0.0.1"
    lan_port: int = 0
    serial_port: int = 0
    ns: str | None = None
    startnow: bool = True
    proc: Proc | None = None
    # set: a chassis-control program (testbed.ipmi_chassis) owns power and the boot device
    boot_argv: Callable[[str], list[str]] | None = None
    chassis: Chassis | None = None
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lan_port = self.lan_port or free_port(socket.SOCK_DGRAM)
        self.serial_port = self.serial_port or free_port()
        self._log = self.workdir / "ipmi_sim.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    def _bmc_devices(self) -> list[str]:
        """QEMU's side of the BMC: the KCS interface whose BMC is ipmi_sim's VM channel."""
        return ["-pidfile", str(self.pidfile),
                "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={self.serial_port},"
                "reconnect=1",
                "-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
                "-device", "isa-ipmi-kcs,bmc=bmc0"]

    def _startcmd(self) -> str:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *self.qemu_argv, *self._bmc_devices()]
        cmd = shlex.join(argv)
        if '"' in cmd:
            raise HarnessError("ipmi_sim's startcmd cannot hold a double quote")
        return cmd

    def _power_conf(self) -> str:
        if self.boot_argv is None:
            return (f'  startcmd "{self._startcmd()}"\n'
                    f'  startnow {"true" if self.startnow else "false"}\n'
                    "  poweroff_wait 10\n  kill_wait 5")
        boot_argv = self.boot_argv
        self.chassis = Chassis(self.workdir, lambda dev: [*boot_argv(dev), *self._bmc_devices()],
                               ns=self.ns).start()
        if self.startnow:
            self.chassis.answer(["set", "power", "1"])
        program = self.chassis.program()
        if '"' in program:
            raise HarnessError("ipmi_sim's chassis_control cannot hold a double quote")
        return f'  chassis_control "{program}"'

    def start(self) -> IpmiSim:
        conf = self.workdir / "lan.conf"
        conf.write_text(f"""name "nbdpower"
set_working_mc 0x20
  startlan 1
    addr {self.lan_addr} {self.lan_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {self.serial_port} codec VM
{self._power_conf()}
  user 2 true "{IPMI_USER}" "{self.password}" admin 10 none md2 md5 straight
""")
        emu = self.workdir / "sim.emu"
        emu.write_text("mc_setbmc 0x20\n"
                       "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
                       "sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n")
        state = self.workdir / "state"
        state.mkdir(exist_ok=True)
        with open(self._log, "ab") as logf:
            p = popen(["ipmi_sim", "-c", str(conf), "-f", str(emu), "-s", str(state), "-n"],
                      ns=self.ns, stdout=logf, stderr=logf)
        self.proc = Proc("ipmi_sim", p, self._log)
        return self

    def qemu_pid(self) -> int | None:
        """The PID of the VM's QEMU while it runs (None when powered off)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.pidfile).encode() in cmdline else None

    def wait_qemu(self, running: bool, timeout: float, not_pid: int | None = None) -> int | None:
        def ok() -> bool:
            pid = self.qemu_pid()
            return (pid is not None and pid != not_pid) if running else pid is None
        wait_for(ok, timeout, f"QEMU {'running' if running else 'gone'}", interval=0.1)
        return self.qemu_pid()

    def stop(self) -> None:
        qemu = self.qemu_pid()
        if self.proc is not None:
            self.proc.stop(3)
        if self.chassis is not None:
            self.chassis.stop()  # its QEMU with it
        if qemu is not None and proc_starttime(qemu) is not None:
            stop_pid(qemu, 3)

    def log_tail(self) -> str:
        return tail(self._log)


def tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA and a certificate it signed for 127.0.0.1, for a BMC
    served over HTTPS."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbd test BMC CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class SushyEmulator:
    """sushy-tools' Redfish emulator, fake system driver, on 127.0.0.1:`port`: HTTP, or HTTPS
    with `tls` = (ca.pem, cert.pem, key.pem) from tls_files()."""

    workdir: Path
    port: int = 0
    proc: Proc | None = None
    tls: tuple[Path, Path, Path] | None = None
    auth: tuple[str, str] | None = None  # (user, password): HTTP basic auth on every request

    def start(self, timeout: float = 30) -> SushyEmulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log = self.workdir / "sushy-emulator.log"
        conf = self.workdir / "emulator.conf"  # the fake systems' state: this run's, not /tmp's
        lines = [f"SUSHY_EMULATOR_STATE_DIR = {str(self.workdir / 'state')!r}"]
        if self.auth:
            import bcrypt  # sushy-tools' own dependency: its htpasswd takes bcrypt only

            htpasswd = self.workdir / "htpasswd"
            digest = bcrypt.hashpw(self.auth[1].encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd.write_text(f"{self.auth[0]}:{digest}\n")
            lines.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}")
        conf.write_text("\n".join(lines) + "\n")
        with open(log, "ab") as logf:
            tls = (["--ssl-certificate", str(self.tls[1]), "--ssl-key", str(self.tls[2])]
                   if self.tls else [])
            p = popen([sys.executable, "-m", "sushy_tools.emulator.main", "--fake",
                       "--config", str(conf), "-i", "127.0.0.1", "-p", str(self.port), *tls],
                      stdout=logf, stderr=logf)
        self.proc = Proc("sushy-emulator", p, log)

        def up() -> bool:
            if not self.proc or not self.proc.alive():
                raise HarnessError(f"sushy-emulator exited:\n{tail(log)}")
            try:
                self.get("/redfish/v1/Systems")
                return True
            except OSError:
                return False
        wait_for(up, timeout, "sushy-emulator to answer", interval=0.2)
        return self

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        ctx = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        req = urllib.request.Request(self.base + path)
        if self.auth:
            import base64

            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return json.loads(r.read())

    def system_path(self) -> str:
        return str(self.get("/redfish/v1/Systems")["Members"][0]["@odata.id"])

    def system(self) -> dict[str, Any]:
        return dict(self.get(self.system_path()))

    def wait_power(self, state: str, timeout: float) -> None:
        """Until the system's PowerState is `state` (the fake driver applies a change 1..11 s
        after it is asked, like hardware)."""
        wait_for(lambda: self.system()["PowerState"] == state, timeout,
                 f"Redfish PowerState {state}", interval=0.25)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(3)


class MuteTcp:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.2)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.accepted.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


def silent_udp_port() -> tuple[socket.socket, int]:
    """A UDP socket bound on 127.0.0.1 that nobody reads: datagrams to it get no answer (and no
    ICMP port unreachable, which a closed port would send). Close the socket when done."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, int(s.getsockname()[1])


class RecordingProxy:
    """An HTTP reverse proxy on 127.0.0.1 in front of a Redfish service (`upstream`, http://):
    every request is forwarded as sent and recorded -- (method, path, body, upstream's status)
    -- so a test sees on the wire what a client asked for even where the service does not
    keep it (sushy-tools' fake driver drops BootSourceOverrideEnabled)."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import urllib.parse

        self.requests: list[tuple[str, str, Any, int]] = []
        up = urllib.parse.urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=10)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body or None, headers)
                r = conn.getresponse()
                data = r.read()
                try:
                    doc: Any = json.loads(body) if body else None
                except ValueError:
                    doc = body
                proxy.requests.append((self.command, self.path, doc, r.status))
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:  # quiet: the record is the log
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._t.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._t.join(5)
