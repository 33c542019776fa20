"""Which iPXE `serve` hands out: netbootd's current build (`netbootd ipxe build`) while it
trusts the state directory's current CA, else the configured distro binaries.

A build's files are served under PREFIX (`netbootd-ipxe/ipxe.efi`, `netbootd-ipxe/undionly.kpxe`,
`netbootd-ipxe/arm64/ipxe.efi`) over TFTP and at /ipxe/<name> over HTTP, and the proxyDHCP offer
names them instead of boot_files.uefi/bios/arm64 (arm64 clients are answered with a build's
arm64 binary even when boot_files.arm64 is unset). After `tls rotate --ca` the build trusts the
old CA: it is stale, not served (a warning, once), until a new build (`tls rotate --ca` makes
one from the last build's source); so is a build whose embedded script chains to an address or
HTTPS port netbootd no longer serves on. The pointer, the CA certificate and that address are
looked at (stat) at most once a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509

from netbootd.errors import NetbootdError
from netbootd.identity import tls
from netbootd.ipxe.build import (
    BY_NAME,
    RECIPE,
    builds_dir,
    ca_fingerprint,
    current_key,
    current_path,
    read_manifest,
)
from netbootd.model import BootFileNames

log = logging.getLogger("netbootd.ipxe")
PREFIX = "netbootd-ipxe"
# which BootFileNames field a target's binary replaces
FIELDS = {"x86_64-efi": "uefi", "bios": "bios", "arm64-efi": "arm64"}
RECHECK = 1.0  # seconds between looks at the pointer, the CA and where HTTPS is
# where netbootd's HTTPS is now: (the advertised address or None: per request, the HTTPS port
# or 0: HTTPS off); lookup.ipxe_chain_target
Where = Callable[[], tuple[str | None, int | None]]


@dataclass(frozen=True)
class BuildStatus:
    key: str
    directory: Path
    files: dict[str, Path]  # served name -> file in the build directory
    by_target: dict[str, str]  # target name -> served name
    ca_sha256: str
    source_label: str
    address: str
    https_port: int
    stale: str | None  # why it is not served, or None


def served_name(file: str) -> str:
    return f"{PREFIX}/{file}"


def status(state_dir: Path, address: str | None = None,
           https_port: int | None = None) -> BuildStatus | None:
    """The current build and whether it may be served; None: no build. `address`, `https_port`:
    where netbootd's HTTPS is now (None: not known, not checked; port 0: HTTPS is off); a build
    chaining elsewhere is stale (its embedded script would chain to what nothing answers)."""
    key = current_key(state_dir)
    if key is None:
        return None
    directory = builds_dir(state_dir) / key
    m = read_manifest(directory)
    files: dict[str, Path] = {}
    by_target: dict[str, str] = {}
    for name, entry in dict(m.get("targets") or {}).items():
        if name in BY_NAME and isinstance(entry, dict):
            file = BY_NAME[name].file
            files[served_name(file)] = directory / file
            by_target[name] = served_name(file)
    stale = None
    built_for = str(m.get("ca_sha256", ""))
    try:
        ca: x509.Certificate | None = tls.ca_certificate(state_dir)
    except NetbootdError:
        ca = None
    if ca is None:
        stale = "the state directory has no CA"
    elif ca_fingerprint(ca) != built_for:
        stale = (f"built for CA {built_for[:16]}..., the CA is now "
                 f"{ca_fingerprint(ca)[:16]}... (rotated)")
    elif m.get("recipe") != RECIPE:
        stale = f"built by recipe {m.get('recipe')}, this netbootd's is {RECIPE}"
    elif https_port == 0:
        stale = "HTTPS is off (https.enabled = false): its script chains over HTTPS"
    elif https_port is not None and m.get("https_port") != https_port:
        stale = (f"it chains to HTTPS port {m.get('https_port')}, netbootd's HTTPS is on "
                 f"{https_port}")
    elif address is not None and m.get("address") != address:
        stale = f"it chains to {m.get('address')}, netbootd advertises {address}"
    elif missing := [p for p in files.values() if not p.is_file()]:
        stale = f"{missing[0]} is missing"
    return BuildStatus(key, directory, files, by_target, built_for,
                       str(m.get("source_label", "")), str(m.get("address", "")),
                       int(m.get("https_port", 0)), stale)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ServedIpxe:
    """The servers' view: offered names and the file behind a served name."""

    def __init__(self, state_dir: Path, where: Where | None = None) -> None:
        self.state_dir = state_dir
        self.where = where or (lambda: (None, None))
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamps: object = None
        self._current: BuildStatus | None = None
        self._warned: str | None = None
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> BuildStatus | None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK:
            return self._current
        with self._lock:
            self._checked = now
            where = self.where()
            stamps = (_stamp(current_path(self.state_dir)),
                      _stamp(tls.ca_cert_path(self.state_dir)), where)
            if not force and stamps == self._stamps:
                return self._current
            self._stamps = stamps
            try:
                st = status(self.state_dir, *where)
            except NetbootdError as e:
                log.error("netbootd's iPXE build cannot be read (serving the distro iPXE): %s",
                          e)
                st = None
            if st is not None and st.stale:
                if self._warned != st.key + st.stale:
                    log.warning("iPXE build %s is stale (%s): serving the distro iPXE; "
                                "`netbootd ipxe build` makes a new one", st.key, st.stale)
                    self._warned = st.key + st.stale
                st = None
            elif st is not None and (self._current is None or self._current.key != st.key):
                log.info("serving netbootd's iPXE build %s (source %s, CA %s...): %s", st.key,
                         st.source_label, st.ca_sha256[:16], ", ".join(sorted(st.files)))
            self._current = st
            return st

    def boot_files(self, distro: BootFileNames) -> BootFileNames:
        st = self._refresh()
        if st is None:
            return distro
        return replace(distro, **{FIELDS[t]: n for t, n in st.by_target.items()},
                       https_ipxe=frozenset(st.by_target.values()))

    def path(self, name: str) -> Path | None:
        """The build's file for a served name (leading "/" ignored), or None."""
        if not name.lstrip("/").startswith(PREFIX + "/"):
            return None
        st = self._refresh()
        return None if st is None else st.files.get(name.lstrip("/"))
