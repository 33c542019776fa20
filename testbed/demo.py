"""`python -m testbed`: the e2e lab from the command line (root).

    python -m testbed demo [--fw bios|uefi|uefi-pxe]   # what `make demo` runs: watch a VM boot
    python -m testbed boot [--fw ...] [--json]        # one boot, exit 0 if it booted
    python -m testbed cleanup                         # remove leftovers of killed runs

`demo` streams the VM's serial console (and netbootd's log) to the terminal; Ctrl-C (or SIGTERM,
SIGHUP) stops everything and removes the namespaces. `boot --json` tells a parent (the killed-run
test) what it started before the boot ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from testbed.lab import PREFIX, ROLE, Site, build_image, log
from testbed.netns import cleanup_stale, owned_dir
from testbed.procs import HarnessError
from testbed.skips import missing_prerequisites
from testbed.vm import CLIENTS, BootFailed, diagnostics, wait_booted


class DemoPrinter:
    """Interleaves the VM's serial console and netbootd's log on the terminal, with timestamps.

    Escape sequences that move the cursor or reset/clear the screen (SeaBIOS, OVMF) are dropped;
    colours are kept."""

    _MOVES = re.compile(rb"\x1bc|\x1b\[[0-9;?=]*[A-Za-ln-z]")

    def __init__(self) -> None:
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.at_line_start = True
        self.carry = b""
        self.stop = threading.Event()

    def _stamp(self) -> bytes:
        return f"\x1b[2m{time.time() - self.t0:6.2f}s\x1b[0m ".encode()

    def console(self, chunk: bytes) -> None:
        data = self.carry + chunk
        esc = data.rfind(b"\x1b")  # an escape sequence split across chunks waits for its end
        whole = re.match(rb"\x1b(c|\[[0-9;?=]*[A-Za-z])", data[esc:])
        if esc != -1 and len(data) - esc < 16 and not whole:
            data, self.carry = data[:esc], data[esc:]
        else:
            self.carry = b""
        text = self._MOVES.sub(b"", data).replace(b"\r\n", b"\n").replace(b"\r", b"")
        out = bytearray()
        for line in text.splitlines(keepends=True):
            if self.at_line_start:
                out += self._stamp() + b"vm       | "
            out += line
            self.at_line_start = line.endswith(b"\n")
        with self.lock:
            sys.stdout.buffer.write(out)
            sys.stdout.flush()

    def server_line(self, line: str) -> None:
        # "2026-11-22 02:16:13,255 INFO netbootd.dhcp: msg" -> "INFO netbootd.dhcp: msg"
        line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line.rstrip("\n"))
        with self.lock:
            pre = b"" if self.at_line_start else b"\n"
            self.at_line_start = True
            out = pre + self._stamp() + f"\x1b[36mnetbootd | {line}\x1b[0m\n".encode()
            sys.stdout.buffer.write(out)
            sys.stdout.flush()

    def follow(self, path: Path) -> None:
        """Print lines appended to `path` (netbootd's log) until stop is set."""

        def run_() -> None:
            with open(path, errors="replace") as f:
                f.seek(0, os.SEEK_END)
                while not self.stop.is_set():
                    line = f.readline()
                    if line:
                        self.server_line(line)
                    else:
                        time.sleep(0.1)

        threading.Thread(target=run_, name="follow-netbootd", daemon=True).start()


def _cmd_boot(args: argparse.Namespace, demo: bool) -> int:
    removed = cleanup_stale(PREFIX, log)
    work = owned_dir(PREFIX)
    result: dict[str, Any] = {"stale_removed": removed, "ok": False}
    site = None
    try:
        why = missing_prerequisites(uefi=CLIENTS[args.fw][0] == "uefi")
        if why:
            print("cannot run: " + "; ".join(why), file=sys.stderr)
            return 2
        image = build_image(work / "image")
        site = Site.start(work, image, pdeathsig=not args.no_pdeathsig)
        result.update(namespaces=list(site.lab.namespaces), workdir=str(work))
        site.nb.enroll(args.mac, ROLE, hostname="demo" if demo else "e2e-run")
        printer = DemoPrinter() if demo else None
        if printer and site.nb.proc and site.nb.proc.log_path:
            printer.follow(site.nb.proc.log_path)
            log(f"netbootd is serving; enrolled {args.mac} -> role {ROLE}. Booting a {args.fw} VM "
                "(QEMU under TCG); Ctrl-C stops and cleans up.")
        vm = site.vm(args.fw, args.mac, args.fw,
                     on_output=printer.console if printer else None).start()
        pids = {p.name: p.pid for p in site.lab.procs}
        result.update(pids=pids)
        if args.json:  # tells a parent (the killed-run test) what to look for, before the boot ends
            print("E2E-STARTED " + json.dumps(result), flush=True)
        try:
            r = wait_booted(site.nb, vm, timeout=args.timeout)
        except BootFailed as e:
            print(f"\n{e}\n{diagnostics(site.lab, site.nb, vm)}", file=sys.stderr)
            return 1
        result.update(ok=True, boot_seconds=round(r.seconds, 2), host=r.host)
        if printer:
            vm.wait_exit(10)
            time.sleep(0.3)
            printer.stop.set()
            print(f"\x1b[0m\x1b[?7h\n*** {args.mac} network-booted from netbootd in "
                  f"{r.seconds:.1f}s "
                  f"(QEMU start -> booted event). `netbootd hosts --json` says:\n"
                  f"{json.dumps(r.host, indent=2)}", flush=True)
        else:
            vm.stop(grace=3)
        if args.json:
            print("E2E-RESULT " + json.dumps(result), flush=True)
        elif not demo:
            log(f"booted in {r.seconds:.1f}s")
        return 0
    except HarnessError as e:
        print(f"e2e: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if demo:
            sys.stdout.write("\x1b[0m\x1b[?7h")  # the guest may have left colours or no-wrap set
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        if site:
            site.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed",
                                 description="netbootd end-to-end harness (needs root)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("demo", "boot a VM from netbootd and stream its serial console"),
                        ("boot", "boot one VM from netbootd; exit 0 when it booted")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--fw", choices=sorted(CLIENTS), default="bios",
                       help="bios: SeaBIOS+iPXE ROM; uefi: OVMF+EFI iPXE ROM; "
                            "uefi-pxe: OVMF native PXE")
        p.add_argument("--mac", default="52:54:00:12:34:56")
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--json", action="store_true", help="machine-readable progress on stdout")
        p.add_argument("--no-ra", action="store_true",
                       help="site DHCP sends no IPv6 router advertisements "
                            "(shows iPXE's IPv6 wait)")
        p.add_argument("--no-pdeathsig", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("cleanup", help="remove namespaces and processes left by killed runs")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the e2e harness needs root (network namespaces, taps, ports 67/69)", file=sys.stderr)
        return 2
    # SIGTERM/SIGHUP clean up like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.cmd == "cleanup":
        removed = cleanup_stale(PREFIX, log)
        print(f"removed {len(removed)} stale namespace(s)")
        return 0
    if args.no_ra:
        os.environ["NETBOOTD_E2E_NO_RA"] = "1"
    return _cmd_boot(args, demo=args.cmd == "demo")

