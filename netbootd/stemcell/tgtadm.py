"""A thin adapter for a running tgtd: `tgtadm` as a subprocess, its output parsed by codec/tgt.

Every call names tgtd's control port (`tgtadm -C N`: tgtd's control socket is
`/var/run/tgtd/socket.N`, shared across network namespaces, so two tgtds on one machine need two
ports). A failure is a TgtError that quotes tgtadm's own message and the command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from netbootd.codec.tgt import Target, parse_show
from netbootd.errors import TgtError

TIMEOUT = 30.0




class Tgtadm:
    def __init__(self, control_port: int = 0, binary: str = "tgtadm") -> None:
        self.control_port = control_port
        self.binary = binary

    def _argv(self, args: Sequence[str]) -> list[str]:
        exe = shutil.which(self.binary)
        if exe is None:
            raise TgtError(f"{self.binary} not found (Debian: apt-get install tgt)")
        return [exe, "-C", str(self.control_port), *args]

    def run(self, *args: str) -> str:
        argv = self._argv(args)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise TgtError(f"`{shlex.join(argv)}` did not answer within {TIMEOUT:.0f}s") from None
        except OSError as e:
            raise TgtError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().removeprefix("tgtadm: ")
            if "can't send the request" in msg or "can't connect" in msg.lower():
                msg += f" (is tgtd running with control port {self.control_port}?)"
            raise TgtError(f"`{shlex.join(argv[1:])}` failed: {msg}")
        return r.stdout

    # -- queries

    def alive(self) -> bool:
        try:
            self.run("--mode", "sys", "--op", "show")
        except TgtError:
            return False
        return True

    def show_text(self) -> str:
        return self.run("--lld", "iscsi", "--mode", "target", "--op", "show")

    def targets(self) -> list[Target]:
        return parse_show(self.show_text())

    # -- changes (each one tgtadm call)

    def new_target(self, tid: int, iqn: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", str(tid), "-T", iqn)

    def delete_target(self, tid: int, force: bool = False) -> None:
        # Offline first: no new logins while it goes away.
        self.run("--lld", "iscsi", "--mode", "target", "--op", "update", "--tid", str(tid),
                 "--name", "state", "--value", "offline")
        self.run("--lld", "iscsi", "--mode", "target", "--op", "delete",
                 *(["--force"] if force else []), "--tid", str(tid))

    def new_lun(self, tid: int, lun: int, path: str) -> None:
        if not os.path.exists(path):  # tgtadm itself only says "invalid request"
            raise TgtError(f"tid {tid} LUN {lun}: backing store {path} does not exist")
        self.run("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", str(tid),
                 "--lun", str(lun), "--backing-store", path, "--bstype", "rdwr")

    def delete_lun(self, tid: int, lun: int) -> None:
        self.run("--lld", "iscsi", "--mode", "logicalunit", "--op", "delete", "--tid", str(tid),
                 "--lun", str(lun))

    def bind_address(self, tid: int, address: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", str(tid),
                 "--initiator-address", address)

    def unbind_address(self, tid: int, address: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "unbind", "--tid", str(tid),
                 "--initiator-address", address)

    def bind_name(self, tid: int, name: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", str(tid),
                 "--initiator-name", name)

    def unbind_name(self, tid: int, name: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "unbind", "--tid", str(tid),
                 "--initiator-name", name)

    def set_state(self, tid: int, state: str) -> None:
        self.run("--lld", "iscsi", "--mode", "target", "--op", "update", "--tid", str(tid),
                 "--name", "state", "--value", state)
