"""netbootd-built iPXE for the tests and benchmarks: `netbootd ipxe build` from the vendored
iPXE snapshot (../shared/vendor/ipxe-0ab2277c.tar.xz, read in place, never copied into the
repository), compiled in tests/e2e/.cache/ipxe-work (gitignored).

The work directory is keyed by the source's digest (netbootd/ipxe/build.py keeps one unpacked,
compiled tree per digest), so only a run's first build compiles iPXE (minutes on 2 cores);
every later one -- a fresh state directory, so a new CA -- recompiles the trust anchor and the
embedded script and links (seconds).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed import REPO
from testbed.nixos import VENDOR

if TYPE_CHECKING:
    from testbed.lab import Netbootd

TARBALL = Path(os.environ.get("NETBOOTD_IPXE_SOURCE", VENDOR / "ipxe-0ab2277c.tar.xz"))
WORK = REPO / "tests" / "e2e" / ".cache" / "ipxe-work"
BUILD_TIMEOUT = 3600.0  # a first build of all three targets: ~10 min on this 2-core machine
CROSS_GCC = "aarch64-linux-gnu-gcc"


def missing(arm64: bool = False) -> list[str]:
    """Why `netbootd ipxe build` cannot run here (empty: it can)."""
    why = [f"{t} not found (Debian package {p})" for t, p in
           (("make", "make"), ("gcc", "gcc"), ("perl", "perl"), ("objcopy", "binutils"))
           if shutil.which(t) is None]
    if not Path("/usr/include/lzma.h").is_file():
        why.append("lzma.h missing (Debian package liblzma-dev)")
    if not TARBALL.is_file():
        why.append(f"no iPXE source snapshot at {TARBALL} (NETBOOTD_IPXE_SOURCE)")
    if arm64 and shutil.which(CROSS_GCC) is None:
        why.append(f"{CROSS_GCC} not found (Debian package gcc-aarch64-linux-gnu)")
    return why


def build(nb: Netbootd, address: str, *targets: str, https_port: int = 443) -> dict[str, Any]:
    """`netbootd ipxe build` for `nb`'s state (its CA), chaining to `address`; the manifest."""
    WORK.mkdir(parents=True, exist_ok=True)
    args = ["ipxe", "build", "--source", str(TARBALL), "--address", address,
            "--https-port", str(https_port), "--work-dir", str(WORK), "--json"]
    for t in targets:
        args += ["--target", t]
    out = nb.cli(*args, timeout=BUILD_TIMEOUT)
    manifest: dict[str, Any] = json.loads(out)
    return manifest
