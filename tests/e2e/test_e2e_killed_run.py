"""A harness run killed with SIGKILL mid-boot leaves nothing that breaks the next run.

The victim is a real harness run in a child process (`python -m testbed boot`): namespaces, site
DHCP, `netbootd serve`, a booting QEMU. It runs with PDEATHSIG off, so its processes outlive it
exactly as they would if the kernel's parent-death signal were not there. Then a new run must
remove the leftovers (processes by PID, namespaces by name) and boot a VM fine.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testbed import REPO
from testbed.lab import mac_colon
from testbed.netns import list_netns
from testbed.procs import owner_alive, proc_starttime, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAC_VICTIM = "52:54:00:e2:00:1a"
MAC_NEXT = "52:54:00:e2:00:1b"
HARNESS = [sys.executable, "-m", "testbed"]  # run from REPO


def read_tagged_line(proc: subprocess.Popen[str], tag: str, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(tag + " "):
                return dict(json.loads(line[len(tag) + 1 :]))
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no {tag} line from the harness run (exit {proc.poll()})")


def test_killed_run_is_cleaned_up_by_the_next(
    e2e_env: dict[str, str], tmp_path: Path, boot_timer: Any
) -> None:
    # 1. a harness run, SIGKILLed while its VM is in the middle of PXE-booting
    victim_log = tmp_path / "victim.stderr"
    with open(victim_log, "w") as err:
        victim = subprocess.Popen(
            [*HARNESS, "boot", "--json", "--no-pdeathsig", "--mac", MAC_VICTIM],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
        )
    try:
        info = read_tagged_line(victim, "E2E-STARTED", timeout=120)
        serial = Path(info["workdir"]) / "lab" / "bios.serial.log"
        wait_for(
            lambda: serial.exists() and b"iPXE" in serial.read_bytes(),
            30,
            "iPXE on the victim's console",
        )
    except BaseException:
        victim.kill()
        victim.wait()
        print(victim_log.read_text())
        raise
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    # 2. what SIGKILL leaves behind: its namespaces, and processes still running in them
    ours = set(info["namespaces"])
    assert ours and ours <= set(list_netns()), "the killed run's namespaces should still be there"
    left: dict[str, tuple[int, int]] = {}
    for name, pid in info["pids"].items():
        start = proc_starttime(pid)
        if start is not None:
            left[name] = (pid, start)
    assert "netbootd" in left and "site-dnsmasq" in left, f"expected leftovers, found {left}"
    print(f"\nleft by the killed run: namespaces {sorted(ours)}, processes {left}")

    # 3. the next run removes them and boots fine
    r = subprocess.run(
        [*HARNESS, "boot", "--json", "--mac", MAC_NEXT],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    result_line = [line for line in r.stdout.splitlines() if line.startswith("E2E-RESULT ")]
    assert r.returncode == 0 and result_line, (
        f"the next run failed ({r.returncode}):\n{r.stderr[-4000:]}"
    )
    result = json.loads(result_line[0].removeprefix("E2E-RESULT "))
    assert ours <= set(result["stale_removed"]), (result["stale_removed"], r.stderr[-2000:])
    assert not ours & set(list_netns()), "stale namespaces are still there"
    survivors = {n: pid for n, (pid, start) in left.items() if owner_alive(pid, start)}
    assert not survivors, f"the killed run's processes survived the next run: {survivors}"
    assert mac_colon(result["host"]["mac"]) == MAC_NEXT and result["host"]["last_boot"]
    boot_timer(result["boot_seconds"], "[bios, run after a SIGKILLed run]")
