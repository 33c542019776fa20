"""Processes: who owns what (pid + start time), children that die with the harness
(PR_SET_PDEATHSIG), and stopping processes only by their PID.

A pid names a process only while it lives; pid + start time (field 22 of /proc/PID/stat, clock
ticks since boot) names one process for the machine's uptime. `OWNER` is this process's, and
names everything the harness creates (testbed.netns), so a later run can tell whether the owner
of a leftover is still alive.

Every child is started with PR_SET_PDEATHSIG=SIGKILL (`popen`): the kernel kills it when the
harness dies, even by SIGKILL, which no finalizer, atexit or signal handler can catch. The flag
survives `ip netns exec`'s exec of the real server.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIBC = ctypes.CDLL(None, use_errno=True)


class HarnessError(Exception):
    """A harness step failed (a command, a wait, a server that would not start); the message says
    which and why."""


def logger(tag: str) -> Callable[[str], None]:
    """log(msg): `[tag HH:MM:SS] msg` on stderr."""

    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


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


def owner_alive(pid: int, start: int) -> bool:
    return proc_starttime(pid) == start


OWNER = f"{os.getpid()}-{proc_starttime(os.getpid())}"


def set_pdeathsig() -> None:
    # Runs in the forked child before exec: one syscall, no allocation, no Python locks.
    # The child gets SIGKILL when the harness dies, even by SIGKILL; survives `ip netns exec`'s
    # exec.
    LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def netns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv run inside network namespace ns (`ip netns exec`), or as is."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def popen(argv: Sequence[str], ns: str | None = None, pdeathsig: bool = True,
          **kw: Any) -> subprocess.Popen[Any]:
    """Start argv (inside namespace ns), stdin from /dev/null, with PR_SET_PDEATHSIG unless told
    otherwise (the killed-run test's victim). Other keywords go to subprocess.Popen."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    # PR_SET_PDEATHSIG has no Popen equivalent; set_pdeathsig is one async-safe syscall
    return subprocess.Popen(netns_argv(ns, argv), preexec_fn=set_pdeathsig if pdeathsig else None,  # noqa: PLW1509
                            **kw)


def run(argv: Sequence[str], check: bool = True, timeout: float = 60,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run argv to completion, output captured as text; HarnessError if it fails and `check`."""
    r = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout,
                       **kw)
    if check and r.returncode != 0:
        why = (r.stderr or r.stdout).strip()[-2000:]
        raise HarnessError(f"`{shlex.join(argv)}` failed ({r.returncode}): {why}")
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
            time.sleep(0.02)


def reap(p: subprocess.Popen[Any], timeout: float) -> None:
    """Wait up to `timeout` for our child p to exit, then SIGKILL it (by its PID) and wait."""
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def stop_popen(p: subprocess.Popen[Any], timeout: float = 3.0) -> None:
    """Our child p: SIGTERM, SIGKILL after `timeout`, reaped."""
    if p.poll() is None:
        p.terminate()
        reap(p, timeout)


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
        stop_popen(self.popen, timeout)

    def log_tail(self, n: int = 30) -> str:
        return tail(self.log_path, n)


def tail(path: Path | None, n: int = 30) -> str:
    if path is None or not path.exists():
        return f"({path}: none)"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


@contextmanager
def environ(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """os.environ with `values` set (the subprocesses the harness starts inherit them) for the
    duration; the previous values are restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Until cond() is true; HarnessError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
