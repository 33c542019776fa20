#!/usr/bin/env python3
"""Build netbootd's test boot image: a Debian kernel + a tiny busybox initramfs.

    images/test-initramfs/build.py OUTDIR [--cache DIR] [--overlay DIR ...] [--module NAME ...]

Writes OUTDIR/vmlinuz, OUTDIR/initramfs.img (gzip'd newc cpio) and OUTDIR/build.json.

* The kernel comes from Debian's `linux-image-<ver>-amd64` package: `apt-get download` +
  `dpkg-deb -x` into the cache, never installed. Pick the package with $NETBOOTD_E2E_KERNEL_PKG,
  or hand a .deb with $NETBOOTD_E2E_KERNEL_DEB (offline); by default it is what
  `linux-image-amd64` depends on.
* The initramfs is busybox-static + the NIC modules (virtio-net stack, e1000) + rootfs/ from this
  directory (+ any --overlay trees). Module load order is computed from each module's own
  `depends=` field, so adding a module (--module virtio_blk) pulls in what it needs.
* `--arch arm64`: the same image for arm64 guests (AAVMF): linux-image-<ver>-arm64 (its
  gzip'd Image unpacked to a plain Image, which iPXE and systemd's stub load as an EFI binary),
  busybox-static:arm64 and systemd-boot-efi:arm64 (OUTDIR/linuxaa64.efi.stub, for UKIs), all
  `apt-get download`ed through a private apt state in the cache (APT::Architecture=arm64 and
  its own lists: the machine's dpkg architectures and apt lists are left alone; `deb_package`,
  which testbed/shim.py also uses for Debian's amd64 shim-signed).
* Reproducible: entries sorted, uid/gid 0, mtimes = $SOURCE_DATE_EPOCH (default 0), inodes numbered
  in order, gzip header without name or time. Same inputs -> same bytes.

Only the Python standard library, so it runs with the system python3 too.
Exit status: 0 built; 2 a prerequisite is missing (message on stderr says which); 1 anything else.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CACHE = Path(os.environ.get("NETBOOTD_E2E_CACHE") or REPO / "tests" / "e2e" / ".cache")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# The NICs QEMU tests use. Their dependencies are added automatically.
DEFAULT_MODULES = ("virtio_net", "virtio_pci", "e1000")


class Missing(Exception):
    """A prerequisite cannot be had here (exit status 2)."""


def log(msg: str) -> None:
    print(f"[test-initramfs] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the kernel package


def _apt_kernel_package() -> str | None:
    try:
        out = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        return None
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+-amd64)\s*$", line)
        if m:
            return m.group(1)
    return None


def resolve_kernel_package() -> str:
    pkg = os.environ.get("NETBOOTD_E2E_KERNEL_PKG")
    if pkg:
        return pkg
    pkg = _apt_kernel_package()
    if pkg is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("apt-cache does not know linux-image-amd64: running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        pkg = _apt_kernel_package()
    if pkg is None:
        raise Missing(
            "cannot resolve Debian's linux-image-amd64 (no apt lists?); "
            "set NETBOOTD_E2E_KERNEL_PKG or NETBOOTD_E2E_KERNEL_DEB"
        )
    return pkg


def obtain_kernel(cache: Path) -> Path:
    """Return the extracted package root (has boot/vmlinuz-* and lib/modules/*)."""
    cache.mkdir(parents=True, exist_ok=True)
    deb_env = os.environ.get("NETBOOTD_E2E_KERNEL_DEB")
    with open(cache / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # parallel runs share the cache
        if deb_env:
            deb = Path(deb_env).resolve()
            if not deb.is_file():
                raise Missing(f"NETBOOTD_E2E_KERNEL_DEB={deb_env}: no such file")
            name = deb.name.removesuffix(".deb")
        else:
            pkg = resolve_kernel_package()
            name = pkg
            root = cache / f"kpkg-{name}"
            if (root / ".complete").exists():
                return root
            debs = sorted(cache.glob(f"{pkg}_*.deb"))
            if not debs:
                if not shutil.which("apt-get"):
                    raise Missing("apt-get not found: cannot download the guest kernel")
                log(f"downloading {pkg} (apt-get download, not installed)")
                r = subprocess.run(
                    ["apt-get", "download", "-q", pkg],
                    cwd=cache,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                debs = sorted(cache.glob(f"{pkg}_*.deb"))
                if r.returncode != 0 or not debs:
                    raise Missing(f"apt-get download {pkg} failed: {r.stderr.strip()[-500:]}")
            deb = debs[-1]
        root = cache / f"kpkg-{name}"
        if (root / ".complete").exists():
            return root
        if not shutil.which("dpkg-deb"):
            raise Missing("dpkg-deb not found: cannot extract the guest kernel")
        log(f"extracting {deb.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".kpkg-{name}.", dir=cache))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        (tmp / ".complete").write_text(deb.name + "\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
        return root


def find_vmlinuz(kroot: Path) -> tuple[Path, str]:
    kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise Missing(f"no boot/vmlinuz-* in {kroot}")
    vmlinuz = kernels[-1]
    return vmlinuz, vmlinuz.name.removeprefix("vmlinuz-")


# ----------------------------------------------------------------------------- kernel modules


def _modname(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise Missing(f"{path.name} is zstd-compressed and zstd is not installed")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    return data


def _depends(ko: bytes) -> list[str]:
    # The .modinfo section holds NUL-separated key=value strings; depends= lists the module's
    # direct dependencies (what modinfo -F depends prints), no ELF parsing needed.
    m = re.search(rb"\x00depends=([A-Za-z0-9_,-]*)\x00", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """Wanted modules + their dependencies, dependencies first. Built-ins are skipped."""
    index: dict[str, Path] = {}
    for p in sorted((moddir / "kernel").rglob("*.ko*")):
        index.setdefault(_modname(p), p)
    builtin: set[str] = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(Path(line.strip())) for line in bfile.read_text().splitlines() if line}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        path = index.get(name)
        if path is None:
            raise Missing(f"kernel module {name} not found under {moddir} (nor built in)")
        data = _read_module(path)
        for dep in _depends(data):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, data))

    for w in wanted:
        visit(w, ())
    return order


# ----------------------------------------------------------------------------- newc cpio


class Cpio:
    """A deterministic newc ("070701") archive writer."""

    def __init__(self, mtime: int) -> None:
        self.mtime = mtime
        self.entries: dict[str, tuple[int, bytes, int]] = {}  # path -> (mode, data, rdev)

    def add(self, path: str, mode: int, data: bytes = b"", rdev: int = 0) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):  # parent directories first
            self.entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b"", 0))
        self.entries[path] = (mode, data, rdev)

    def add_tree(self, src: Path) -> None:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                self.add(rel, stat.S_IFDIR | 0o755)
            elif stat.S_ISLNK(st.st_mode):
                self.add(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                perm = 0o755 if st.st_mode & 0o111 else 0o644
                self.add(rel, stat.S_IFREG | perm, p.read_bytes())

    @staticmethod
    def _pad(n: int) -> bytes:
        return b"\0" * ((4 - n % 4) % 4)

    def _header(self, ino: int, name: str, mode: int, size: int, rdev: int) -> bytes:
        namez = name.encode() + b"\0"
        fields = (
            ino,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            self.mtime,
            size,
            0,
            0,
            os.major(rdev),
            os.minor(rdev),
            len(namez),
            0,
        )
        h = b"070701" + b"".join(b"%08X" % f for f in fields) + namez
        return h + self._pad(len(h))

    def bytes(self) -> bytes:
        out = io.BytesIO()
        for ino, name in enumerate(sorted(self.entries), start=1):
            mode, data, rdev = self.entries[name]
            out.write(self._header(ino, name, mode, len(data), rdev))
            out.write(data + self._pad(len(data)))
        out.write(self._header(0, "TRAILER!!!", 0, 0, 0))
        return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- main


ARM64_MODULES = ("virtio_net", "virtio_pci")  # (no e1000 on the virt machine)


def private_apt(cache: Path, arch: str) -> list[str]:
    """apt options for a private `arch` view of the machine's Debian sources (lists updated once
    into the cache; the machine's apt lists and dpkg architectures are left alone)."""
    state = cache / f"apt-{arch}"
    for d in ("lists/partial", "archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    opts = ["-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state}",
            "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", "Debug::NoLocking=1"]
    if not (state / ".updated").exists():
        if not shutil.which("apt-get"):
            raise Missing(f"apt-get not found: cannot download the {arch} packages")
        log(f"apt-get update (private {arch} lists)")
        r = subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            raise Missing(f"apt-get update for {arch} failed: {r.stderr.strip()[-500:]}")
        (state / ".updated").write_text("")
    return opts


def deb_package(cache: Path, pkg: str, arch: str) -> Path:
    """The extracted `arch` package `pkg` (downloaded once through `private_apt`, extracted
    with dpkg-deb -x, never installed: no maintainer script runs). Callers hold a lock."""
    root = cache / f"{arch}-{pkg}"
    if (root / ".complete").exists():
        return root
    opts = private_apt(cache, arch)
    dl = cache / f"{arch}-debs"
    dl.mkdir(parents=True, exist_ok=True)
    debs = sorted(dl.glob(f"{pkg}_*_{arch}.deb"))
    if not debs:
        log(f"downloading {pkg}:{arch} (apt-get download, not installed)")
        r = subprocess.run(["apt-get", *opts, "download", "-q", pkg], cwd=dl,
                           capture_output=True, text=True, check=False)
        debs = sorted(dl.glob(f"{pkg}_*_{arch}.deb"))
        if r.returncode != 0 or not debs:
            raise Missing(f"apt-get download {pkg}:{arch} failed: {r.stderr.strip()[-500:]}")
    if not shutil.which("dpkg-deb"):
        raise Missing(f"dpkg-deb not found: cannot extract {pkg}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-{pkg}.", dir=cache))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], check=True)
    (tmp / ".complete").write_text(debs[-1].name + "\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def _arm64_kernel_package(cache: Path) -> str:
    r = subprocess.run(["apt-cache", *private_apt(cache, "arm64"), "depends", "linux-image-arm64"],
                       capture_output=True, text=True, check=False)
    m = re.search(r"Depends:\s*(linux-image-\S+-arm64)\s*$", r.stdout, re.M)
    if not m:
        raise Missing("cannot resolve Debian's linux-image-arm64 (private arm64 apt lists)")
    return m.group(1)


def build(out: Path, cache: Path, overlays: list[Path], modules: list[str],
          arch: str = "amd64") -> dict[str, str]:
    extra: dict[str, str] = {}
    if arch == "arm64":
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock-arm64", "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            busybox = deb_package(cache, "busybox-static", "arm64") / "bin" / "busybox"
            kroot = deb_package(cache, _arm64_kernel_package(cache), "arm64")
            stub = (deb_package(cache, "systemd-boot-efi", "arm64") / "usr/lib/systemd/boot/efi"
                    / "linuxaa64.efi.stub")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stub, out / "linuxaa64.efi.stub")
        extra["uki_stub"] = str(out / "linuxaa64.efi.stub")
    else:
        busybox = next((Path(b) for b in BUSYBOX_CANDIDATES if Path(b).is_file()), None)
        if busybox is None:
            raise Missing("busybox not found (Debian: apt-get install busybox-static)")
        if _is_dynamic(busybox):
            raise Missing(f"{busybox} is dynamically linked; install busybox-static")
        kroot = obtain_kernel(cache)
    vmlinuz, kver = find_vmlinuz(kroot)
    mods = resolve_modules(kroot / "lib" / "modules" / kver, modules)

    cp = Cpio(mtime=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "lib/modules", "root", "run"):
        cp.add(d, stat.S_IFDIR | 0o755)
    cp.add("dev/console", stat.S_IFCHR | 0o600, rdev=os.makedev(5, 1))
    cp.add("dev/null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
    cp.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    cp.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    for name, data in mods:
        cp.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data)
    cp.add(
        "lib/modules/load-order", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n, _ in mods).encode()
    )
    cp.add_tree(HERE / "rootfs")
    for ov in overlays:
        cp.add_tree(ov)
    image = gzip_bytes(cp.bytes())

    out.mkdir(parents=True, exist_ok=True)
    (out / "initramfs.img").write_bytes(image)
    kernel = vmlinuz.read_bytes()
    if arch == "arm64" and kernel[:2] == b"\x1f\x8b":  # Debian's arm64 vmlinuz is a gzip'd Image
        kernel = gzip.decompress(kernel)
    (out / "vmlinuz").write_bytes(kernel)
    info = {
        "arch": arch,
        **extra,
        "kernel_package": (kroot / ".complete").read_text().strip(),
        "kernel_version": kver,
        "modules": ",".join(n for n, _ in mods),
        "vmlinuz": str(out / "vmlinuz"),
        "initramfs": str(out / "initramfs.img"),
        "initramfs_sha256": hashlib.sha256(image).hexdigest(),
    }
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _is_dynamic(path: Path) -> bool:
    # An ELF with a PT_INTERP program header needs a dynamic loader the initramfs does not have.
    head = path.read_bytes()[:4096]
    return b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the kernel .deb is downloaded and extracted (default: %(default)s)",
    )
    ap.add_argument(
        "--overlay",
        type=Path,
        action="append",
        default=[],
        help="extra tree copied over rootfs/ (e.g. more hooks.d/ scripts)",
    )
    ap.add_argument(
        "--module",
        action="append",
        default=[],
        help="extra kernel module to include (dependencies follow)",
    )
    ap.add_argument("--arch", choices=["amd64", "arm64"], default="amd64",
                    help="the guest's architecture (default amd64)")
    args = ap.parse_args(argv)
    base = ARM64_MODULES if args.arch == "arm64" else DEFAULT_MODULES
    try:
        info = build(args.outdir, args.cache, args.overlay, [*base, *args.module], args.arch)
    except Missing as e:
        print(f"test-initramfs: {e}", file=sys.stderr)
        return 2
    log(f"kernel {info['kernel_version']}, modules {info['modules']}")
    log(f"wrote {info['initramfs']} (sha256 {info['initramfs_sha256'][:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
