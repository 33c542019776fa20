"""ipmi_sim's chassis-control program for the power tests: the chassis whose boot device IPMI
sets, and whose power is a QEMU VM.

Why a program at all: OpenIPMI 2.0.33's lanserv answers Set System Boot Options parameter 5
(boot flags) only through a chassis-control program (`chassis_control "prog"` in lan.conf) or a
loaded module's chassis functions; without either, lanserv/bmc_chassis.c's
`set_system_boot_options` answers 0xcc "Invalid data field in request" (what netbootd's
boot-once got from the lab's ipmi_sim before). With a program, the same file sends *power* to
it too (`set_power` asks the program before the startcmd's channel), so the program also owns
the VM: this module does what ipmi_sim's `startcmd` did (QEMU on power on, gone on power off).

The program's protocol is lanserv/extcmd.c's: ipmi_sim runs `<prog> get power`, `<prog> set
power "1"`, `<prog> set boot "pxe"`, `<prog> get boot` through popen(3) and reads `name:value`
lines back. ipmi_sim hands over only the boot device selector (bits 5:2 of the boot flags'
second byte; none, pxe, default, cdrom, bios), not the valid or persistent bits, so "once" is
this chassis's behaviour, as it is a BIOS's: the next power on boots that device and the
setting goes back to "default".

The program ipmi_sim runs is `python -m testbed.ipmi_chassis SOCKET ARGS...`, a client of the
`Chassis` server running in the harness: QEMU is started by the harness (testbed.procs.popen,
PR_SET_PDEATHSIG) from the server's one thread, so it dies with the harness like every other
child, which a program that exits after each command could not arrange. Every command is
appended to `chassis.log` (the test reads it as the BMC's own record).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

BOOT_DEVICES = ("none", "pxe", "default", "cdrom", "bios")  # lanserv/bmc_chassis.c boot_map


class Chassis:
    """The server end: `argv_for(boot)` is the QEMU command line for a power on that boots
    `boot` (the test decides what "pxe" and "default" mean for its VM)."""

    def __init__(self, workdir: Path, argv_for: Callable[[str], list[str]],
                 ns: str | None = None) -> None:
        self.workdir = workdir
        self.argv_for = argv_for
        self.ns = ns
        self.boot = "default"
        self.sock_path = workdir / "chassis.sock"
        self.log_path = workdir / "chassis.log"
        self.qemu_log = workdir / "qemu.log"
        self.started: list[list[str]] = []  # the argv of every power on, in order
        self._qemu: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def program(self) -> str:
        """What lan.conf's `chassis_control` names (no double quotes: lan.conf's delimiter)."""
        return (f"env PYTHONPATH={Path(__file__).resolve().parent.parent} {sys.executable} -m "
                f"testbed.ipmi_chassis {self.sock_path}")

    def start(self) -> Chassis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sock_path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(self.sock_path))
        s.listen(8)
        s.settimeout(0.2)
        self._sock = s
        # one thread starts every QEMU: PR_SET_PDEATHSIG follows the thread that forked
        self._thread = threading.Thread(target=self._serve, name="ipmi-chassis", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(30)
                try:
                    data = b""
                    while len(data) < 4096 and (chunk := conn.recv(4096)):
                        data += chunk
                    words = data.decode(errors="replace").split("\0")
                    conn.sendall(self.answer([w for w in words if w]).encode())
                except OSError:
                    continue
        self._power_off()  # stop(): on this thread, whose child QEMU is

    def answer(self, words: list[str]) -> str:
        """One extcmd call: `get NAME...` -> `NAME:VALUE` lines; `set NAME VALUE...` -> ''.
        An unknown name or value is an error line (the client exits 1, ipmi_sim refuses)."""
        with self.log_path.open("a") as f:
            f.write(" ".join(words) + "\n")
        if not words or words[0] not in ("get", "set", "check"):
            return "!unknown command\n"
        op, rest = words[0], words[1:]
        if op == "get":
            values = {"power": "1" if self.qemu_pid() else "0", "boot": self.boot}
            if any(n not in values for n in rest):
                return "!unknown name\n"
            return "".join(f"{n}:{values[n]}\n" for n in rest)
        pairs = list(zip(rest[::2], rest[1::2], strict=False))
        for name, value in pairs:
            if name == "boot" and value in BOOT_DEVICES:
                if op == "set":
                    self.boot = value
            elif name == "power" and value in ("0", "1"):
                if op == "set":
                    self._power_on() if value == "1" else self._power_off()
            elif op == "set" or name not in ("reset", "shutdown", "identify"):
                return f"!cannot {op} {name} {value}\n"
        return ""

    def _power_on(self) -> None:
        if self.qemu_pid():
            return
        from testbed.procs import popen

        argv = self.argv_for(self.boot)
        self.boot = "default"  # a boot device is for the next boot only
        self.started.append(argv)
        with self.qemu_log.open("ab") as logf:
            self._qemu = popen(argv, ns=self.ns, stdout=logf, stderr=logf)

    def _power_off(self) -> None:
        from testbed.procs import stop_popen

        p = self._qemu
        if p is not None:
            stop_popen(p, 5)
            self._qemu = None

    def qemu_pid(self) -> int | None:
        p = self._qemu
        if p is None or p.poll() is not None:
            return None
        return p.pid

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self._sock is not None:
            self._sock.close()
        self.sock_path.unlink(missing_ok=True)


def client(sock_path: str, words: list[str]) -> int:
    """ipmi_sim's side: send the words, print the answer; exit 1 on an error line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sock_path)
        s.sendall("\0".join(words).encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    if text.startswith("!"):
        print(text[1:].strip(), file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(client(sys.argv[1], sys.argv[2:]))
