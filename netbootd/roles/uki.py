"""Unified kernel images: one EFI executable holding a role generation's kernel, initrds and
command line, booted by UEFI HTTP(S) boot with no iPXE (systemd-stub runs the kernel with the
initrd and command line from its own sections).

**Per boot, one fixed-size section last.** Every boot's command line carries per-boot tokens
(`netbootd.boot=`, the identity URL), so netbootd serves each boot its own UKI. The expensive
part is per role generation: `template()` runs objcopy once on systemd-boot's stub
(`.osrel`, `.linux`, `.initrd`, then `.cmdline` of CMDLINE_SIZE bytes of spaces), caches the
result under `<state>/uki-cache/<key>.efi` (key: the stub's, kernel's and initrds' digests,
the machine) and remembers where `.cmdline`'s bytes start. A boot's UKI is the template with
those bytes replaced (`Template.image`): a copy of a few MB in memory, no objcopy. The
section is the last raw data in the file, so its Authenticode hash is a saved SHA-256 state of
everything before it continued with the new command line (`Template.digest`: microseconds,
measured in bench/uki_bench.py); signing (identity/secureboot.py) then signs that digest.

**arm64.** The stub follows the kernel: a kernel whose PE header says arm64 (0xAA64: Debian's
arm64 Image, unpacked) gets boot.uki_stub_arm64 (systemd-boot-efi:arm64's linuxaa64.efi.stub),
and the template is made with binutils that read arm64 PE (aarch64-linux-gnu-objcopy and
-objdump from binutils-aarch64-linux-gnu; the host's x86 binutils do not).

Why not a stable per-host UKI and a token fetched after boot: the booted system would need a
netbootd-specific step before it can even report, and a per-host UKI still has to be re-made
(and re-signed) per host; the per-boot image keeps the guest's contract the iPXE path already
has (everything on /proc/cmdline) at the price of one fixed-size section per request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from netbootd.codec import pe
from netbootd.errors import NetbootdError, NotFound
from netbootd.fsutil import private_dir, write_file
from netbootd.model import Image
from netbootd.roles.artifacts import Artifacts

log = logging.getLogger("netbootd.uki")

CMDLINE_SIZE = 4096  # bytes; a multiple of the stub's FileAlignment (512), padded with spaces
SECTION_ALIGN = 0x10000
CACHE_DIR = "uki-cache"


@dataclass(frozen=True)
class Template:
    """A role generation's UKI with a blank command line, and where the command line goes."""

    path: Path
    data: bytes
    cmdline_offset: int
    image: pe.PeImage
    hasher: object  # hashlib sha256 state fed with everything before the command line

    def cmdline_bytes(self, cmdline: str) -> bytes:
        raw = cmdline.encode("ascii")
        if len(raw) > CMDLINE_SIZE:
            raise NetbootdError(f"kernel command line is {len(raw)} bytes; a UKI holds "
                                f"{CMDLINE_SIZE}")
        return raw.ljust(CMDLINE_SIZE, b" ")

    @property
    def trailer(self) -> bytes:
        """What objcopy leaves after the last section (the stub's COFF symbol table), padded to
        8 bytes: where a signature's certificate table must start (sbsign pads the same way)."""
        rest = bytes(memoryview(self.data)[self.cmdline_offset + CMDLINE_SIZE :])
        return rest + bytes(-(self.cmdline_offset + CMDLINE_SIZE + len(rest)) % 8)

    @property
    def size(self) -> int:
        return self.cmdline_offset + CMDLINE_SIZE + len(self.trailer)

    def assemble(self, cmdline: str) -> bytes:
        """This boot's UKI: the template with `cmdline` in its last section."""
        return b"".join((memoryview(self.data)[: self.cmdline_offset],
                         self.cmdline_bytes(cmdline), self.trailer))

    def digest(self, cmdline: str) -> bytes:
        """The Authenticode SHA-256 of `assemble(cmdline)`, from the saved hash state."""
        h = self.hasher.copy()  # type: ignore[attr-defined]
        h.update(self.cmdline_bytes(cmdline))
        h.update(self.trailer)
        return bytes(h.digest())


MACHINE_ARM64 = 0xAA64
CROSS_ARM64 = "aarch64-linux-gnu-"


def pe_machine(path: Path) -> int | None:
    """The PE machine of an EFI binary (or a kernel with an EFI stub), None if it is none."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
        return pe.parse(head).machine
    except (OSError, NetbootdError):
        return None


def binutil(tool: str, stub: Path) -> str:
    """objcopy/objdump for the stub's architecture: the cross binutils for an arm64 stub."""
    if pe_machine(stub) == MACHINE_ARM64:
        cross = CROSS_ARM64 + tool
        if shutil.which(cross) is None:
            raise NotFound(f"an arm64 UKI needs {cross} (Debian: binutils-aarch64-linux-gnu)")
        return cross
    return tool


def _sections_end(stub: Path) -> tuple[int, int]:
    """(image base, end of the stub's last section's virtual range) via objdump."""
    objdump = binutil("objdump", stub)
    heads = subprocess.run([objdump, "-h", "-w", str(stub)], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    end = 0
    for line in heads.splitlines():
        f = line.split()
        if len(f) > 4 and f[0].isdigit():
            end = max(end, int(f[3], 16) + int(f[2], 16))
    priv = subprocess.run([objdump, "-p", str(stub)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    base = next(int(ln.split()[1], 16) for ln in priv.splitlines() if ln.startswith("ImageBase"))
    return base, end


def _align(x: int) -> int:
    return (x + SECTION_ALIGN - 1) & ~(SECTION_ALIGN - 1)


class UkiBuilder:
    """Templates per role generation, cached on disk and in memory (the newest few)."""

    def __init__(self, state_dir: Path, artifacts: Artifacts, keep: int = 4) -> None:
        self.dir = state_dir / CACHE_DIR
        self.artifacts = artifacts
        self.keep = keep
        self._lock = threading.Lock()
        self._mem: dict[str, Template] = {}

    def key(self, image: Image, stub: Path) -> str:
        h = hashlib.sha256()
        h.update(hashlib.sha256(stub.read_bytes()).digest())
        h.update(image.kernel.sha256.encode())
        for a in image.initrds:
            h.update(a.sha256.encode())
        h.update(f"{image.role}\0{image.generation}\0{CMDLINE_SIZE}".encode())
        return h.hexdigest()

    def template(self, image: Image, stub: Path) -> Template:
        if not stub.is_file():
            raise NotFound(f"no UKI stub at {stub} (Debian: systemd-boot-efi; config "
                           "boot.uki_stub)")
        key = self.key(image, stub)
        with self._lock:
            t = self._mem.get(key)
            if t is None:
                t = self._load(key) or self._build(key, image, stub)
                self._mem[key] = t
                while len(self._mem) > self.keep:
                    self._mem.pop(next(iter(self._mem)))
            return t

    def _load(self, key: str) -> Template | None:
        path, meta = self.dir / f"{key}.efi", self.dir / f"{key}.json"
        try:
            offset = int(json.loads(meta.read_text())["cmdline_offset"])
            data = path.read_bytes()
        except (OSError, ValueError, KeyError):
            return None
        return _template(path, data, offset)

    def _build(self, key: str, image: Image, stub: Path) -> Template:
        d = private_dir(self.dir)
        work = d / f".{key}.tmp"
        private_dir(work)
        try:
            initrd = work / "initrd"
            with open(initrd, "wb") as out:  # Linux unpacks concatenated archives in turn
                for a in image.initrds:
                    out.write(self.artifacts.path(a.sha256).read_bytes())
            osrel = work / "os-release"
            osrel.write_text(f'NAME="netbootd role {image.role}"\nID=netbootd\n'
                             f'VERSION_ID="{image.generation}"\n'
                             f'PRETTY_NAME="netbootd {image.role} generation {image.generation}"\n')
            cmdline = work / "cmdline"
            cmdline.write_bytes(b" " * CMDLINE_SIZE)
            base, end = _sections_end(stub)
            argv, vma = [binutil("objcopy", stub)], _align(base + end)
            kernel = self.artifacts.path(image.kernel.sha256)
            for name, path in ((".osrel", osrel), (".linux", kernel), (".initrd", initrd),
                               (".cmdline", cmdline)):
                argv += ["--add-section", f"{name}={path}", "--change-section-vma",
                         f"{name}={vma:#x}"]
                vma = _align(vma + path.stat().st_size)
            out_path = work / "uki.efi"
            r = subprocess.run([*argv, str(stub), str(out_path)], capture_output=True, text=True,
                               timeout=300, check=False)
            if r.returncode != 0:
                raise NetbootdError(f"objcopy could not assemble the UKI: {r.stderr.strip()}")
            data = out_path.read_bytes()
            sec = pe.parse(data).section(".cmdline")
            last = max(pe.parse(data).sections, key=lambda x: x.raw_offset)
            if last.name != ".cmdline" or sec.raw_size != CMDLINE_SIZE:
                raise NetbootdError(f"objcopy did not put .cmdline last ({sec}, {len(data)} "
                                    "bytes): the per-boot assembly needs it there")
            final = d / f"{key}.efi"
            os.replace(out_path, final)
            write_file(d / f"{key}.json", json.dumps(
                {"cmdline_offset": sec.raw_offset, "role": image.role,
                 "generation": image.generation}).encode(), 0o644)
        finally:
            for p in sorted(work.glob("*")):
                p.unlink(missing_ok=True)
            work.rmdir()
        log.info("UKI template for %s generation %d: %d bytes (%s)", image.role,
                 image.generation, len(data), key[:12])
        return _template(final, data, sec.raw_offset)


def _template(path: Path, data: bytes, offset: int) -> Template:
    img = pe.parse(data)
    return Template(path, data, offset, img, pe.authenticode_hasher(data, img, offset))
