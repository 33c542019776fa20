#!/usr/bin/env python3
"""Build netbootd's stem-cell initramfs: one image every nfs-store host boots.

    images/stem-cell/build.py OUTDIR [--kmod-dir DIR] [--module NAME ...]

Writes OUTDIR/stem-cell.img (gzip'd newc cpio), OUTDIR/vmlinuz (the kernel the modules belong
to, when it is known) and OUTDIR/build.json.

The image is busybox-static + kernel modules (the NICs QEMU and common machines use, the NFSv4
client and overlayfs, dependencies resolved from each module's own `depends=`) + rootfs/ (its
/init, see there). The modules must match the kernel the hosts boot: `--kmod-dir` names that
kernel's `lib/modules/<version>` directory (e.g. a NixOS system's `kernel-modules/lib/modules/
<version>`); by default it is the Debian kernel the end-to-end tests use (fetched and cached by
images/test-initramfs/build.py, never installed).

Reproducible like the test initramfs (sorted, uid 0, mtimes $SOURCE_DATE_EPOCH, no gzip
name/time). Only the Python standard library. Exit status: 0 built; 2 a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
TEST_BUILDER = HERE.parent / "test-initramfs" / "build.py"
# NICs (virtio, e1000 for QEMU; e1000e, igb, r8169 for common hardware), the NFSv4 client, overlayfs
DEFAULT_MODULES = ("virtio_net", "virtio_pci", "e1000", "e1000e", "igb", "r8169", "nfsv4",
                   "overlay")


def _builder() -> ModuleType:
    """images/test-initramfs/build.py: the kernel cache, module resolution and cpio writer."""
    spec = importlib.util.spec_from_file_location("nb_test_initramfs_build", TEST_BUILDER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(out: Path, kmod_dir: Path | None, modules: list[str]) -> dict[str, str]:
    b = _builder()
    busybox = next((Path(p) for p in b.BUSYBOX_CANDIDATES if Path(p).is_file()), None)
    if busybox is None:
        raise b.Missing("busybox not found (Debian: apt-get install busybox-static)")
    if b._is_dynamic(busybox):
        raise b.Missing(f"{busybox} is dynamically linked; install busybox-static")
    vmlinuz = None
    if kmod_dir is None:
        kroot = b.obtain_kernel(b.DEFAULT_CACHE)
        vmlinuz, kver = b.find_vmlinuz(kroot)
        kmod_dir = kroot / "lib" / "modules" / kver
    else:
        kver = kmod_dir.name
    available = {p.name.split(".ko")[0].replace("-", "_") for p in kmod_dir.rglob("*.ko*")}
    wanted = [m for m in modules if m in available or m not in DEFAULT_MODULES]  # e.g. no r8169
    mods = b.resolve_modules(kmod_dir, wanted)

    cp = b.Cpio(mtime=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "lib/modules", "run", "newroot"):
        cp.add(d, stat.S_IFDIR | 0o755)
    cp.add("dev/console", stat.S_IFCHR | 0o600, rdev=os.makedev(5, 1))
    cp.add("dev/null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
    cp.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    cp.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    for name, data in mods:
        cp.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data)
    cp.add("lib/modules/load-order", stat.S_IFREG | 0o644,
           "".join(f"{n}\n" for n, _ in mods).encode())
    cp.add_tree(HERE / "rootfs")
    image = b.gzip_bytes(cp.bytes())

    out.mkdir(parents=True, exist_ok=True)
    (out / "stem-cell.img").write_bytes(image)
    info = {
        "kernel_version": kver,
        "modules": ",".join(n for n, _ in mods),
        "initramfs": str(out / "stem-cell.img"),
        "initramfs_sha256": hashlib.sha256(image).hexdigest(),
    }
    if vmlinuz is not None:
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        info["vmlinuz"] = str(out / "vmlinuz")
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument(
        "--kmod-dir",
        type=Path,
        help="the hosts' kernel's lib/modules/<version> (default: the e2e Debian kernel)",
    )
    ap.add_argument("--module", action="append", default=[], help="another module to include")
    args = ap.parse_args(argv)
    b = _builder()
    try:
        info = build(args.outdir, args.kmod_dir, [*DEFAULT_MODULES, *args.module])
    except b.Missing as e:
        print(f"stem-cell: {e}", file=sys.stderr)
        return 2
    print(
        f"[stem-cell] kernel {info['kernel_version']}, modules {info['modules']}", file=sys.stderr
    )
    print(f"[stem-cell] wrote {info['initramfs']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
