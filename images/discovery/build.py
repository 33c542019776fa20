#!/usr/bin/env python3
"""Build netbootd's discovery image: the e2e test initramfs's /init (busybox, udhcpc, hooks)
plus udev (systemd-udevd, udevadm, the persistent-storage and net rules), Debian's python3
(interpreter + the standard library without tests/tkinter/idle) and pyudev, and netbootd's
inventory agent (netbootd/inventory/agent.py; standard library + pyudev only).

    images/discovery/build.py OUTDIR [--module NAME ...]

Writes OUTDIR/vmlinuz, OUTDIR/initramfs.img, OUTDIR/build.json; import them as the discovery
role: `netbootd role add discovery --kernel OUTDIR/vmlinuz --initrd OUTDIR/initramfs.img
--cmdline console=ttyS0`. The kernel is Debian's (images/test-initramfs/build.py fetches it);
the modules: NICs, virtio/SCSI/AHCI/NVMe storage. Exit status: 0 built; 2 a prerequisite is
missing (udev, python3, pyudev, busybox-static).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEST = HERE.parent / "test-initramfs"
# efivarfs: the Secure Boot state the agent reads (a module in Debian's kernel)
MODULES = ("virtio_net", "virtio_pci", "e1000", "virtio_blk", "virtio_scsi", "sd_mod", "ahci",
           "nvme", "e1000e", "igb", "efivarfs")
UDEV_RULES = ("50-udev-default.rules", "60-persistent-storage.rules", "75-net-description.rules",
              "60-block.rules", "80-drivers.rules")
UDEV_TOOLS = ("scsi_id", "ata_id")
UDEV_LIBEXEC = "/lib/udev"  # `strings udevadm`: /lib/udev (rules: /usr/lib/udev/rules.d)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "distutils", "site-packages", "dist-packages", "__pycache__", "unittest",
               "venv"}


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(mod)
    return mod


def overlay(out: Path) -> None:
    tool = _load(TEST / "hosttool.py", "nb_hosttool")
    missing = [p for p in ("/usr/lib/systemd/systemd-udevd", "/usr/bin/udevadm")
               if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} (Debian: apt-get install udev)")
    shutil.copytree(HERE / "rootfs", out, symlinks=True, dirs_exist_ok=True)
    libs: set[Path] = set()

    def place(src: Path, dst: str) -> None:
        target = out / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.resolve(), target)
        if tool.is_elf(src.resolve()):  # programs and extension modules alike
            libs.update(tool.closure(src.resolve()))

    place(Path("/usr/lib/systemd/systemd-udevd"), "/usr/lib/systemd/systemd-udevd")
    place(Path("/usr/bin/udevadm"), "/usr/bin/udevadm")
    # pyudev finds libudev with ctypes.util.find_library, which reads `ldconfig -p`
    place(Path("/sbin/ldconfig"), "/sbin/ldconfig")
    for t in UDEV_TOOLS:
        # where udevd runs a rule's relative program from: Debian builds it with /lib/udev
        # (merged /usr on the build machine; in the image /lib is a directory of its own)
        place(Path("/usr/lib/udev") / t, f"{UDEV_LIBEXEC}/{t}")
    for r in UDEV_RULES:
        src = Path("/usr/lib/udev/rules.d") / r
        if src.exists():
            place(src, f"/usr/lib/udev/rules.d/{r}")
    # python3: the interpreter, the standard library, its extension modules' libraries
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    place(exe, "/usr/bin/python3")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib.rglob("*"):
        rel = path.relative_to(stdlib)
        if set(rel.parts) & STDLIB_SKIP or rel.parts[0].startswith("config-") or path.is_dir():
            continue
        if path.suffix in (".pyc", ".exe") :
            continue
        place(path, f"{stdlib}/{rel}")
    import pyudev  # the build's own (pip), pure Python over libudev (ctypes)

    pkg = Path(pyudev.__file__).parent
    for path in pkg.rglob("*.py"):
        place(path, f"/opt/netbootd/pyudev/{path.relative_to(pkg)}")
    for lib in ("libudev.so.1",):
        for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"):
            if (Path(d) / lib).exists():
                place(Path(d) / lib, f"{d}/{lib}")
                break
    for name in ("netbootd/__init__.py", "netbootd/inventory/__init__.py",
                 "netbootd/inventory/agent.py"):
        place(REPO / name, f"/opt/netbootd/{name}")
    for lib in libs:
        place(lib, str(lib))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--module", action="append", default=[], help="another module to include")
    a = ap.parse_args(argv)
    b = _load(TEST / "build.py", "nb_test_build")
    with tempfile.TemporaryDirectory(prefix="nbd-discovery-") as tmp:
        try:
            overlay(Path(tmp) / "overlay")
            cache = Path(os.environ.get("NETBOOTD_E2E_CACHE", b.DEFAULT_CACHE))
            info = b.build(a.outdir, cache, [Path(tmp) / "overlay"], [*MODULES, *a.module])
        except (b.Missing, FileNotFoundError, ImportError) as e:
            print(f"discovery: {e}", file=sys.stderr)
            return 2
    size = Path(info["initramfs"]).stat().st_size
    print(f"[discovery] wrote {info['initramfs']} ({size / 1e6:.1f} MB gzip'd), kernel "
          f"{info['kernel_version']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
