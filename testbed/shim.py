"""Debian's Microsoft-signed shim for the Secure Boot e2e tests, never installed.

`shim-signed`'s maintainer scripts run grub-install and touch this machine's boot setup, so the
package is `apt-get download`ed and unpacked with `dpkg-deb -x` into the e2e cache, through the
same private apt state images/test-initramfs/build.py uses for its arm64 packages
(`deb_package`: its own lists under the cache, the machine's left alone).
"""

from __future__ import annotations

import fcntl
import importlib.util
from pathlib import Path
from types import ModuleType

from testbed import REPO
from testbed.procs import HarnessError

BUILDER = REPO / "images" / "test-initramfs" / "build.py"
SHIM = Path("usr/lib/shim/shimx64.efi.signed")  # in shim-signed (amd64)


class ShimMissing(HarnessError):
    """shim-signed cannot be had here (no apt-get, no mirror, no dpkg-deb)."""


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nb_test_build_debs", BUILDER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def debian_shim(cache: Path | None = None) -> Path:
    """The path of shimx64.efi.signed out of Debian's shim-signed (downloaded once)."""
    b = _builder()
    cache = cache or b.DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock-amd64", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # parallel runs share the cache
        try:
            root = b.deb_package(cache, "shim-signed", "amd64")
        except b.Missing as e:
            raise ShimMissing(str(e)) from None
    shim = Path(root) / SHIM
    if not shim.is_file():
        raise ShimMissing(f"shim-signed has no {SHIM} ({(root / '.complete').read_text().strip()})")
    return shim
