#!/usr/bin/env python3
"""Assemble the provision overlay for the test initramfs: the disk-layout hook, the flag it
answers to, and this machine's sfdisk and mke2fs with every library they load.

    images/test-initramfs/provision_overlay.py OUTDIR [--flag WORD]
    images/test-initramfs/build.py IMAGEDIR --overlay OUTDIR \\
        --module virtio_blk --module ext4 --module crc32c_generic

The hook (`provision/etc/netbootd/hooks.d/40-provision.sh`) acts only when the exact kernel
parameter WORD (default `netbootd.provision_disks=1`, netbootd's default flag; give the role's
own with --flag) is on the command line. busybox has neither sfdisk nor an ext4 mkfs, so the
real ones are copied with their libraries (found with ldd, placed where the loader looks), like
the identity overlay's curl. The guest also needs the virtio_blk and ext4 modules and
crc32c_generic (ext4's metadata checksums), passed to build.py as above.

Only the Python standard library. Exit status: 0 built; 2 sfdisk, mke2fs or ldd is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identity_overlay import closure  # same directory, standard library only

HERE = Path(__file__).resolve().parent
TREE = HERE / "provision"  # the hook
TOOLS = ("sfdisk", "mke2fs")  # Debian: fdisk, e2fsprogs
MODULES = ("virtio_blk", "ext4", "crc32c_generic")  # build.py --module, for the guest
DEFAULT_FLAG = "netbootd.provision_disks=1"


def _which(tool: str) -> Path | None:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    return Path(found).resolve() if found else None


def build(out: Path, flag: str = DEFAULT_FLAG) -> list[str]:
    if not flag or any(c.isspace() for c in flag):
        raise ValueError(f"--flag must be one kernel parameter, got {flag!r}")
    missing = [t for t in (*TOOLS, "ldd") if _which(t) is None]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(TREE, out, symlinks=True)
    (out / "etc" / "netbootd" / "provision-flag").write_text(flag + "\n")
    placed: list[str] = []
    libs: set[Path] = set()
    for tool in TOOLS:
        src = _which(tool)
        assert src is not None
        # /usr/sbin, called by full path: busybox's own mke2fs applet is earlier on PATH
        dst = out / "usr" / "sbin" / tool
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        placed.append(f"/usr/sbin/{tool}")
        libs |= closure(src)
    for lib in sorted(libs):
        dst = out / str(lib).lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dst)
        placed.append(str(lib))
    return placed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--flag", default=DEFAULT_FLAG,
                    help="the kernel parameter that means 'lay out the disk' (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        placed = build(args.outdir, args.flag)
    except FileNotFoundError as e:
        print(f"provision-overlay: not found: {e} (Debian: fdisk, e2fsprogs, libc-bin)",
              file=sys.stderr)
        return 2
    print(f"[provision-overlay] {len(placed)} files in {args.outdir}, flag {args.flag}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
