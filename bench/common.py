"""Shared plumbing for the benchmarks: namespaces, processes, statistics, machine info.

Everything a benchmark creates is named `nbdbench-<pid>-<starttime>-<what>` after the process
that made it, so a later run can tell a killed run's leftovers (owner gone) from a parallel run's
(owner alive) and remove them (`cleanup_stale`). Processes are only ever stopped by their PID:
the ones this run spawned, and (at cleanup) whatever is still running inside this run's own
namespaces. Only the standard library.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PREFIX = "nbdbench"


class BenchError(Exception):
    """A benchmark broke (no replies, a download mismatch, a server that would not start)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- processes


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if the PID is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


OWNER = f"{os.getpid()}-{proc_starttime(os.getpid())}"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-")


def _pdeathsig() -> None:
    # SIGKILL the child if the benchmark dies (even by SIGKILL); survives `ip netns exec`'s exec.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the PID is gone."""
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


def run(
    argv: Sequence[str], check: bool = True, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and r.returncode != 0:
        raise BenchError(
            f"`{shlex.join(argv)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}"
        )
    return r


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------- namespaces


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split()]


def cleanup_stale() -> list[str]:
    """Remove namespaces (processes inside first) and work dirs left by killed benchmark runs."""
    removed = []
    for ns in list_netns():
        m = _NAME_RE.match(ns)
        if not m or proc_starttime(int(m.group(1))) == int(m.group(2)):
            continue
        for pid in netns_pids(ns):
            stop_pid(pid, 1.0)
        if run(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(ns)
            log(f"removed stale namespace {ns}")
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        m = _NAME_RE.match(d.name + "-")
        if m and d.is_dir() and proc_starttime(int(m.group(1))) != int(m.group(2)):
            shutil.rmtree(d, ignore_errors=True)
    return removed


_counter = itertools.count(1)


@dataclass
class Env:
    """One run's namespaces, processes and work directory; `close()` removes all of them."""

    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{OWNER}-"))
    )
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    keep: bool = False

    def netns(self, what: str) -> str:
        ns = f"{PREFIX}-{OWNER}-{next(_counter)}{what}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def veth(self, ns_a: str, ns_b: str, addr_a: str, addr_b: str) -> None:
        """eth0 in ns_a <-> eth0 in ns_b, with the given address/prefix on each side."""
        run(
            [
                "ip",
                "-n",
                ns_a,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns_b,
            ]
        )
        for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
            run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        ns: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as f:
            p = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig,  # noqa: PLW1509 (no threads in this process)
                env=env,
                cwd=cwd,
            )
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def drop_namespaces(self, keep: int = 0) -> None:
        """Remove the namespaces created after the first `keep` (processes inside first)."""
        while len(self.namespaces) > keep:
            ns = self.namespaces.pop()
            for pid in netns_pids(ns):
                stop_pid(pid, 1.0)
            run(["ip", "netns", "del", ns], check=False)

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 (keep cleaning up)
                log(f"stopping {p.name} (pid {p.pid}): {e}")
        self.procs.clear()
        self.drop_namespaces()  # also stops what our children started inside (nginx workers)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def tool(ns: str, module: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run `python -m bench.<module> args` inside namespace `ns`; its last stdout line is JSON."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", f"bench.{module}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        preexec_fn=_pdeathsig,  # noqa: PLW1509 (no threads in this process)
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise BenchError(
            f"bench.{module} did not finish within {timeout:.0f}s: {err.strip()[-1500:]}"
        ) from None
    except BaseException:
        p.kill()
        p.wait()
        raise
    if p.returncode != 0:
        raise BenchError(
            f"bench.{module} {' '.join(args)} failed ({p.returncode}): {err.strip()[-1500:]}"
        )
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"bench.{module} printed nothing: {err.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def wait_for(cond: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------- test data


def mac_for(i: int) -> str:
    """The i-th benchmark MAC (locally administered, 02:4e:42:xx:xx:xx)."""
    return f"02:4e:42:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


def random_file(path: Path, size: int) -> Path:
    """A file of `size` pseudo-random bytes (incompressible, fast: a repeated 1 MiB urandom block
    with a per-MiB counter, so no two MiB are identical)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        full, rest = divmod(size, 1 << 20)
        f.writelines(i.to_bytes(8, "big") + block[8:] for i in range(full))
        if rest:
            f.write(block[:rest])
    return path


# ---------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


# ---------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def version(argv: list[str], pattern: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "?"

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "os": _os_release(),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "dnsmasq": version(["dnsmasq", "--version"], r"version (\S+)"),
        "tftpd-hpa": _dpkg_version("tftpd-hpa"),
        "qemu": version(["qemu-system-x86_64", "--version"], r"version (\S+)"),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "?"


def _dpkg_version(pkg: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() or "absent"


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """utime+stime (seconds) of the given live PIDs and their reaped children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / tick


def tree_pids(root: int) -> list[int]:
    """root and its descendants (via /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out
