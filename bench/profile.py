"""py-spy profiles of netbootd during a benchmark (`make bench PROFILE=1`, or --profile).

`Recorder` runs `py-spy record --format raw` against netbootd's PID for the length of one
measurement; `summarize` turns the collapsed stacks into "% of busy samples" per function
(inclusive) and per area of the code (scapy, SQLite, logging, ...), which is what the results
file prints when a goal is missed.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Areas of each hot path: (label, substrings of a stack's frames "fn (file:line)"); a sample
# counts for an area when any pattern matches its stack (inclusive time); "a&&b" needs both.
AREAS_DHCP: list[tuple[str, tuple[str, ...]]] = [
    ("scapy, all uses", ("(scapy/",)),
    ("codec.build_reply (scapy BOOTP/DHCP build)", ("build_reply (netbootd/codec/dhcp.py",)),
    ("codec.parse (own TLV walk + scapy BOOTP header)", ("parse (netbootd/codec/dhcp.py",)),
    ("  of which scapy BOOTP() header dissect", ("_parse (netbootd/codec/dhcp.py&&(scapy/",)),
    ("store.host (SQLite query + model)", ("Store.host (netbootd/store",)),
    ("logging (one INFO line per reply)", ("(logging/",)),
    ("policy.dhcp_boot", ("dhcp_boot (netbootd/policy.py",)),
    ("ipaddress objects", ("(ipaddress.py",)),
    ("send (sendmsg)", ("DhcpServer._send (",)),
]
AREAS_TFTP: list[tuple[str, tuple[str, ...]]] = [
    ("tftpy, all uses", ("(tftpy/",)),
    ("tftpy packet decode (factory.parse)", ("TftpPacketFactory.parse (",)),
    ("tftpy state machine (ACK handling)", ("TftpStateExpectACK.handle (",)),
    ("tftpy sendDAT (read + encode + sendto)", ("TftpState.sendDAT (",)),
    ("selector wait/dispatch", ("selectors.py",)),
    ("logging", ("(logging/",)),
]
AREAS_HTTP: list[tuple[str, tuple[str, ...]]] = [
    ("aiohttp request handling", ("(aiohttp/",)),
    ("script: store.host + store.image (SQLite)", ("Store.host (", "Store.image (")),
    ("script: jinja2 render", ("host_script (netbootd/codec/ipxe.py",)),
    ("script: policy.boot_plan", ("boot_plan (netbootd/policy.py",)),
    ("logging", ("(logging/",)),
    ("sendfile", ("sendfile",)),
]


def py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


class Recorder:
    def __init__(self, pid: int, out: Path, rate: int = 200, threads: bool = True) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy not found (pip install py-spy into the venv)")
        self.out = out
        argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ]
        if threads:
            argv.append("--threads")
        self.rate = rate
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _norm(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in f:
            f = f.split(marker, 1)[1]
    return f"{f}:{m.group('fn')}"


def summarize(
    raw: Path, areas: list[tuple[str, tuple[str, ...]]], top: int = 12
) -> dict[str, object]:
    """{'samples': N, 'functions': [(name, pct)], 'areas': [(area, pct)]} over busy samples."""
    total = 0
    incl: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    areas_def = areas
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "functions": [], "areas": []}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        names = {_norm(f) for f in frames if not f.startswith(("thread (", "process "))}
        for name in names:
            incl[name] += n
        for area, pats in areas_def:
            if any(all(q in stack for q in p.split("&&")) for p in pats):
                hits[area] += n
    if not total:
        return {"samples": 0, "functions": [], "areas": []}
    skip = (
        "runners.py:",
        "base_events.py:",
        "events.py:Handle._run",
        "runpy",
        "netbootd/__main__.py",
        "cli.py:main",
        "cli.py:cmd_serve",
        "app.py:Netbootd.run",
        "threading.py:",
        "concurrent/futures/",
    )
    funcs = [(k, 100.0 * v / total) for k, v in incl.most_common() if not any(s in k for s in skip)]
    return {
        "samples": total,
        "functions": [(k, round(p, 1)) for k, p in funcs[:top]],
        "areas": [(k, round(100.0 * hits[k] / total, 1)) for k, _ in areas_def],
    }
