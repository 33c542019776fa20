"""A tgtd (Linux SCSI target daemon) of a test's own: its own control port, stopped the one way
it stops.

tgtd's control socket path (/var/run/tgtd/socket.N) is shared across network namespaces, so
every tgtd gets a control port no other tgtd uses (`tgtd -C N`). It is started with
PR_SET_PDEATHSIG (in a lab's namespace through its Env, or where the test runs). tgtd ignores
SIGTERM: `stop` takes its targets offline and deletes them, then `tgtadm --op delete --mode
system` makes it exit; only then is its PID killed if it is still there.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from testbed.netns import Env
from testbed.procs import popen, reap, run, wait_for


def control_port() -> int:
    """A tgtd control port (tgtd takes -C 0..32767) whose socket does not exist yet."""
    for _ in range(100):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 12000
        if not Path(f"/var/run/tgtd/socket.{port}").exists():
            return port
    raise AssertionError("no free tgtd control port")


class Tgtd:
    def __init__(self, portal: str, port: int | None = None, env: Env | None = None,
                 ns: str | None = None) -> None:
        self.portal = portal
        self.port = control_port() if port is None else port
        self.env, self.ns = env, ns
        self.proc: subprocess.Popen[Any] | None = None

    def tgtadm(self, *args: str, check: bool = True) -> str:
        return run(["tgtadm", "-C", str(self.port), *args], check=check, timeout=30).stdout

    def start(self) -> Tgtd:
        argv = ["tgtd", "-f", "-C", str(self.port), "--iscsi", f"portal={self.portal}"]
        if self.env is not None:
            self.proc = self.env.spawn("tgtd", argv, ns=self.ns).popen
        else:
            self.proc = popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "tgtd exited"
            return run(["tgtadm", "-C", str(self.port), "--op", "show", "--mode", "sys"],
                       check=False).returncode == 0

        wait_for(answers, 10, "tgtd to answer")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def show(self) -> str:
        return self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "show")

    def kill(self) -> None:
        """SIGKILL, like a crash: its targets are gone with it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        """Targets offline and deleted, then `--op delete --mode system` (tgtd ignores SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for tid in re.findall(r"^Target (\d+):", self.show(), re.MULTILINE):
            self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "update", "--tid", tid,
                        "--name", "state", "--value", "offline", check=False)
            self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                        "--tid", tid, check=False)
        self.tgtadm("--op", "delete", "--mode", "system", check=False)
        reap(self.proc, 5)
