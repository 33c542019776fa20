"""What a test needs from the machine, and what happens when it is missing.

A test that cannot run here (not root, no `ip netns`, no QEMU, no tgt, no kernel to boot...)
SKIPs with the reason; with NETBOOTD_REQUIRE_E2E=1 (CI: the machine is meant to have it all) the
same reason FAILs it instead, so a broken CI machine cannot pass by skipping. `unavailable` is the
one place that decides; the checks below only say why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

from testbed.netns import owned_name
from testbed.procs import run
from testbed.vm import OVMF_CODE, OVMF_VARS, QEMU

REQUIRE = os.environ.get("NETBOOTD_REQUIRE_E2E") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it when NETBOOTD_REQUIRE_E2E=1."""
    import pytest  # only here: the lab and the benchmarks run without pytest

    if REQUIRE:
        pytest.fail(f"prerequisite missing and NETBOOTD_REQUIRE_E2E=1: {reason}", pytrace=False)
    pytest.skip(reason)


def require(reasons: list[str]) -> None:
    """unavailable() with every reason, if there are any."""
    if reasons:
        unavailable("; ".join(reasons))


def not_root(purpose: str) -> list[str]:
    return [] if os.geteuid() == 0 else [f"not root ({purpose} need root)"]


def missing_tools(tools: dict[str, str]) -> list[str]:
    """{tool: Debian package} -> why for each tool not on PATH."""
    return [f"{t} not found (Debian package {pkg})" for t, pkg in tools.items()
            if shutil.which(t) is None]


def missing_files(files: dict[Path, str]) -> list[str]:
    """{file: Debian package} -> why for each file that does not exist."""
    return [f"{f} missing (Debian package {pkg})" for f, pkg in files.items() if not f.exists()]


def no_netns(prefix: str) -> list[str]:
    """Why no network namespace can be made here (a probe named like the caller's), or []."""
    probe = f"{owned_name(prefix)}-probe"
    r = run(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        return [f"cannot create a network namespace: {r.stderr.strip()}"]
    run(["ip", "netns", "del", probe], check=False)
    return []


def netns_lab(prefix: str, tools: dict[str, str] | None = None) -> list[str]:
    """Why namespace tests cannot run here: root, iproute2 (+ `tools`), a probe namespace."""
    why = not_root("network namespaces") or missing_tools({"ip": "iproute2", **(tools or {})})
    return why or no_netns(prefix)


def missing_prerequisites(uefi: bool = True, prefix: str = "nbde2e") -> list[str]:
    """Why the e2e lab (QEMU clients in namespaces) cannot run here (empty list: it can)."""
    if os.geteuid() != 0:
        return ["not root (network namespaces, taps and ports 67/69 need root)"]
    why = missing_tools({"ip": "iproute2", QEMU: "qemu-system-x86", "dnsmasq": "dnsmasq-base",
                         "tcpdump": "tcpdump", "dpkg-deb": "dpkg"})
    why += missing_files({Path("/usr/lib/ipxe/ipxe.efi"): "ipxe",
                          Path("/usr/lib/ipxe/undionly.kpxe"): "ipxe",
                          Path("/usr/lib/ipxe/qemu/efi-virtio.rom"): "ipxe-qemu"})
    if uefi:
        why += missing_files({OVMF_CODE: "ovmf", OVMF_VARS: "ovmf"})
    return why or no_netns(prefix)
