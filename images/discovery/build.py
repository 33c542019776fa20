#!/usr/bin/env python3
"""Build netbootd's discovery image: the e2e test initramfs's /init (busybox, udhcpc, hooks)
plus udev (systemd-udevd, udevadm, the persistent-storage and net rules, the PCI part of its
hardware database compiled with systemd-hwdb), Debian's tpm2-tools (the TPM's EK), python3
(interpreter + the standard library without tests/tkinter/idle) and pyudev, and netbootd's
inventory agent (netbootd/inventory/agent.py; standard library + pyudev only).

    images/discovery/build.py OUTDIR [--module NAME ...]

Writes OUTDIR/vmlinuz, OUTDIR/initramfs.img, OUTDIR/build.json; import them as the discovery
role: `netbootd role add discovery --kernel OUTDIR/vmlinuz --initrd OUTDIR/initramfs.img
--cmdline console=ttyS0`. The kernel is Debian's (images/test-initramfs/build.py fetches it);
the modules: NICs, virtio/SCSI/AHCI/NVMe storage. Exit status: 0 built; 2 a prerequisite is
missing (udev, systemd-hwdb, python3, pyudev, busybox-static). The parts and their sizes (36.3 MB
gzip'd; 31.3 MB before the PCI hwdb and tpm2-tools): README.md beside this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
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


# udev's hardware database, the PCI part only (vendor/device names and class names: what
# 50-udev-default.rules' `hwdb --subsystem=pci` import turns into ID_VENDOR_FROM_DATABASE /
# ID_MODEL_FROM_DATABASE), compiled at build time; udevd reads /lib/udev/hwdb.bin
HWDB_SOURCES = ("20-pci-vendor-model.hwdb", "20-pci-classes.hwdb")


def hwdb(out: Path) -> Path:
    """Compile the PCI hwdb with the build machine's `systemd-hwdb update --root`; the binary
    database (~5 MB, ~0.8 MB gzip'd) goes into the image, not the text sources (~4 MB)."""
    tool = shutil.which("systemd-hwdb")
    if tool is None:
        raise FileNotFoundError("systemd-hwdb (Debian: apt-get install systemd)")
    with tempfile.TemporaryDirectory(prefix="nbd-hwdb-") as tmp:
        src = Path(tmp) / "etc" / "udev" / "hwdb.d"  # a --root's first hwdb.d
        src.mkdir(parents=True)
        for name in HWDB_SOURCES:
            f = Path("/usr/lib/udev/hwdb.d") / name
            if not f.exists():
                raise FileNotFoundError(f"{f} (Debian: apt-get install udev)")
            shutil.copy2(f, src / name)
        subprocess.run([tool, "update", "--root", tmp, "--usr", "--strict"], check=True,
                       capture_output=True, timeout=300)
        built = [p for p in Path(tmp).rglob("hwdb.bin")]
        if len(built) != 1:
            raise FileNotFoundError(f"systemd-hwdb wrote no single hwdb.bin: {built}")
        target = out / UDEV_LIBEXEC.lstrip("/") / "hwdb.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], target)
        target.chmod(0o444)
    return target


# tpm2-tools (Debian's, one multi-call binary: `tpm2 readpublic`, `tpm2 createek`) for the TPM's
# EK, with the libtss2 libraries it links and the device TCTI that libtss2-tctildr dlopen()s
# (not in the binary's ELF closure); optional: without it the agent reports the EK as null
TPM2_TOOL = Path("/usr/bin/tpm2")
TPM2_TCTI = "libtss2-tcti-device.so.0"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")


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
    hwdb(out)
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
    tpm_libs = (TPM2_TCTI,) if TPM2_TOOL.exists() else ()
    for lib in ("libudev.so.1", *tpm_libs):
        for d in LIB_DIRS:
            if (Path(d) / lib).exists():
                place(Path(d) / lib, f"{d}/{lib}")
                break
        else:
            raise FileNotFoundError(f"{lib} (Debian: libudev1 / libtss2-tcti-device0)")
    if TPM2_TOOL.exists():
        place(TPM2_TOOL, str(TPM2_TOOL))
    else:
        print("[discovery] no /usr/bin/tpm2 (Debian tpm2-tools): the image reports no TPM EK",
              file=sys.stderr)
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
