"""Network namespaces named after the process that made them, and one run's `Env`.

Nothing is created in the root network namespace. Every namespace (and work directory) is named
`<prefix>-<pid>-<starttime>-<n>-<what>` after the process that made it (testbed.procs.OWNER), so
a later run can tell a killed run's leftovers (owner gone) from a parallel run's (owner alive)
and remove them, processes inside first (`cleanup_stale`). Each user keeps its own prefix (e2e:
nbde2e, bench: nbdbench, the integration modules nbdtd, nbdid, nbdsc); `cleanup_stale(prefix)`
only ever looks at names with that prefix. Processes are only ever stopped by their PID.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testbed.procs import LIBC, OWNER, Proc, logger, owner_alive, popen, run, stop_pid

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)
_log = logger("testbed")


def owned_name(prefix: str) -> str:
    """A fresh name owned by this process: `<prefix>-<pid>-<starttime>-<n>`."""
    return f"{prefix}-{OWNER}-{next(_counter)}"


def owned_dir(prefix: str) -> Path:
    """A fresh work directory in $TMPDIR owned by this process (cleanup_stale removes it once this
    process is gone)."""
    return Path(tempfile.mkdtemp(prefix=f"{owned_name(prefix)}-"))


def _owner(prefix: str, name: str) -> tuple[int, int] | None:
    m = re.match(rf"^{re.escape(prefix)}-(\d+)-(\d+)-", name + "-")
    return (int(m.group(1)), int(m.group(2))) if m else None


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split()]


def ip(*args: str, ns: str | None = None) -> None:
    """`ip [-n ns] args...`; HarnessError if it fails."""
    run(["ip", *(["-n", ns] if ns else []), *args])


def add_netns(name: str) -> str:
    """A new namespace with its loopback up."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)
    return name


def delete_netns(ns: str) -> list[int]:
    """Stop (by PID) what still runs inside ns, then delete it; returns the PIDs it stopped.
    Raises HarnessError if the namespace could not be deleted."""
    pids = netns_pids(ns)
    for pid in pids:
        stop_pid(pid, timeout=1.0)
    run(["ip", "netns", "del", ns])
    return pids


def veth(ns_a: str, ns_b: str, addr_a: str, addr_b: str) -> None:
    """eth0 in ns_a <-> eth0 in ns_b, with the given address/prefix on each side, both up."""
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns_b, ns=ns_a)
    for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
        ip("addr", "add", addr, "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)


def _users_of(d: Path) -> list[int]:
    """PIDs whose command line names d or a path inside it (a daemon given a file there)."""
    pat = re.compile(re.escape(str(d)).encode() + rb"(/|\x00|$)")
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if pat.search(cmdline):
            pids.append(int(p.name))
    return pids


def _mounts_under(d: Path) -> list[str]:
    """Mount points inside d (deepest first), from this mount namespace's mountinfo."""
    under = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point.startswith(f"{d}/"):
            under.append(point)
    return sorted(under, key=len, reverse=True)


def cleanup_stale(prefix: str, log: Callable[[str], None] = _log) -> list[str]:
    """Remove what killed runs left under `prefix`; returns the namespaces removed.

    Only names `<prefix>-<pid>-<starttime>-...` whose owner process is gone are touched (a
    parallel run's, owner alive, are left alone): namespaces, processes inside first; work
    directories in $TMPDIR, processes whose command line names a path in them first (by PID),
    then mounts inside them (lazily)."""
    removed: list[str] = []
    for ns in list_netns():
        owner = _owner(prefix, ns)
        if owner is None or owner_alive(*owner):
            continue
        pids = netns_pids(ns)
        for pid in pids:
            stop_pid(pid, timeout=1.0)
        r = run(["ip", "netns", "del", ns], check=False)
        if r.returncode == 0:
            removed.append(ns)
            log(f"removed stale namespace {ns}" + (f" (stopped PIDs {pids})" if pids else ""))
        else:
            log(f"could not remove stale namespace {ns}: {r.stderr.strip()}")
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}-*"):
        owner = _owner(prefix, d.name)
        if owner is None or not d.is_dir() or owner_alive(*owner):
            continue
        for pid in _users_of(d):
            stop_pid(pid, timeout=1.0)
        for point in _mounts_under(d):
            run(["umount", "-l", point], check=False)
        shutil.rmtree(d, ignore_errors=True)
        log(f"removed stale work directory {d}")
    return removed


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn() in a short-lived thread that has joined network namespace `ns` (sockets it makes
    stay there); the rest of the process stays where it is."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:  # only this thread moves
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
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


class Env:
    """One run's namespaces, processes and work directory; `close()` removes all of them:
    processes (by PID, newest first), then namespaces (what still runs inside first), then the
    work directory if the Env made it (unless `keep`)."""

    def __init__(self, prefix: str, workdir: Path | None = None, keep: bool = False,
                 pdeathsig: bool = True, stop_timeout: float = 3.0,
                 log: Callable[[str], None] = _log) -> None:
        self.prefix = prefix
        self.id = owned_name(prefix)
        self.own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.pdeathsig = pdeathsig
        self.stop_timeout = stop_timeout
        self.log = log
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []

    def add_netns(self, name: str) -> str:
        """A namespace of this run named `name` (which must carry this process's OWNER)."""
        add_netns(name)
        self.namespaces.append(name)
        return name

    def netns(self, what: str) -> str:
        """A fresh namespace of this run, `<prefix>-<pid>-<starttime>-<n>-<what>`."""
        return self.add_netns(f"{owned_name(self.prefix)}-{what}")

    def spawn(self, name: str, argv: Sequence[str], ns: str | None = None,
              log_name: str | None = None, stdout: int | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        """Start argv (inside ns) with PR_SET_PDEATHSIG, stderr (and stdout, unless given) to
        workdir/<name>.log (or log_name)."""
        log_path = self.workdir / (log_name or f"{name}.log")
        with open(log_path, "ab") as logf:
            p = popen(argv, ns=ns, pdeathsig=self.pdeathsig,
                      stdout=logf if stdout is None else stdout, stderr=logf, env=env, cwd=cwd)
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop(self.stop_timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def drop_namespaces(self, keep: int = 0) -> None:
        """Remove the namespaces created after the first `keep` (processes inside first)."""
        while len(self.namespaces) > keep:
            ns = self.namespaces.pop()
            try:
                delete_netns(ns)
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                self.log(f"removing namespace {ns}: {e}")

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop(self.stop_timeout)
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                self.log(f"stopping {p.name} (pid {p.pid}): {e}")
        self.procs.clear()
        self.drop_namespaces()  # also stops what our children started inside (nginx workers)
        if self.own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
