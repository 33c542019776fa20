"""What only the benchmarks need: `tool()` (a bench module run inside a namespace), test data,
statistics, machine info.

Namespaces, processes and a run's `Env` come from testbed (testbed.netns, testbed.procs), with
the benchmarks' own prefix: everything a benchmark creates is named
`nbdbench-<pid>-<starttime>-<n>-<what>` after the process that made it, so a later run can tell a
killed run's leftovers (owner gone) from a parallel run's (owner alive) and remove them
(`testbed.netns.cleanup_stale(PREFIX)`). Every child is started with PR_SET_PDEATHSIG, and
processes are only ever stopped by their PID: the ones this run spawned, and (at cleanup)
whatever is still running inside this run's own namespaces. Nothing is created in the root
network namespace. Only the standard library.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from testbed import REPO
from testbed.procs import HarnessError, logger, popen

PREFIX = "nbdbench"  # testbed.netns names: nbdbench-<pid>-<starttime>-<n>-<what>
log = logger("bench")


class BenchError(HarnessError):
    """A benchmark broke (no replies, a download mismatch, a server that would not start)."""


def tool(ns: str, module: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run `python -m bench.<module> args` inside namespace `ns`; its last stdout line is JSON."""
    argv = [sys.executable, "-m", f"bench.{module}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = popen(
        argv, ns=ns, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
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
