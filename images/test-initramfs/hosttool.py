#!/usr/bin/env python3
"""This machine's (Debian's) programs as self-contained trees: the binaries, every library `ldd`
names, and -- for a Nix store path -- the dynamic loader and library search path rewritten to
point inside the tree (patchelf), the way a nixpkgs package finds its glibc by store path.

    hosttool.py [OUT] [--libs DIR ...] [--libs-only] [--bin PATH ...] [--deb PACKAGE ...]
                [--static PATH ...]

  --bin PATH       copy this program to OUT/bin/ (its name kept)
  --deb PACKAGE    every program the Debian package installs in /bin, /sbin, /usr/bin, /usr/sbin
                   (`dpkg -L`); symlinks among them stay symlinks (nix-store -> nix)
  --static PATH    a statically linked program (busybox): copied as it is
  --libs DIR       a library directory made earlier (another OUT/lib) to take libraries from;
                   only what it lacks is copied into OUT/lib
  --libs-only      copy only the libraries (OUT/lib, with the loader): a shared "glibc" for
                   the programs of several trees

OUT defaults to $out (a Nix builder's output). Used by tests/nix/fake-nixos/nixos/pkgs.nix
(the NixOS-shaped test system's packages are Debian's binaries) and by identity_overlay.py
(`closure`). Only the Python standard library; needs ldd (libc-bin), patchelf and, for --deb,
dpkg-query. Exit status 2 when one is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

BIN_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/")
LOADER = "ld-linux-x86-64.so.2"


def closure(binary: Path) -> set[Path]:
    """The shared objects `binary` loads (ldd), as the absolute paths the loader looks for."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    libs: set[Path] = set()
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.add(Path(parts[2]))
        elif parts and parts[0].startswith("/"):  # the dynamic loader
            libs.add(Path(parts[0]))
    return libs


def copy(src: Path, dst: Path) -> None:
    """Content and permission bits, never set-id bits (a Nix store refuses them)."""
    shutil.copyfile(src, dst)
    dst.chmod(stat.S_IMODE(src.stat().st_mode) & 0o777 | stat.S_IWUSR)


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def is_dynamic(path: Path) -> bool:
    r = subprocess.run(["patchelf", "--print-interpreter", str(path)], capture_output=True,
                       check=False)
    return r.returncode == 0


def deb_programs(package: str) -> list[Path]:
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True,
                         check=True).stdout
    progs = []
    for line in out.splitlines():
        p = Path(line)
        if line.startswith(BIN_DIRS) and p.parent.as_posix() + "/" in BIN_DIRS and (
            p.is_symlink() or (p.is_file() and os.access(p, os.X_OK))
        ):
            progs.append(p)
    return sorted(set(progs))


def build(out: Path, bins: list[Path], statics: list[Path], libdirs: list[Path],
          libs_only: bool) -> int:
    out.mkdir(parents=True)
    own = out / "lib"
    own.mkdir()
    (out / "bin").mkdir()
    copied: list[Path] = []  # dynamic ELF programs placed in OUT/bin
    links: list[tuple[str, str]] = []
    for src in bins:
        if src.is_symlink():
            links.append((src.name, Path(os.path.realpath(src)).name))
            src = Path(os.path.realpath(src))
        dst = out / "bin" / src.name
        if dst.exists() or not is_elf(src):
            if not dst.exists() and not is_elf(src):
                copy(src, dst)  # a script: kept as it is
            continue
        copy(src, dst)
        if is_dynamic(dst):
            copied.append(dst)
    for src in statics:
        copy(Path(os.path.realpath(src)), out / "bin" / src.name)
    for name, target in links:
        link = out / "bin" / name
        if not link.exists() and (out / "bin" / target).exists():
            link.symlink_to(target)

    needed: set[Path] = set()
    for prog in copied:
        needed |= closure(prog)
    have = {p.name: d for d in libdirs for p in d.iterdir()} if libdirs else {}
    placed: list[Path] = []
    for lib in sorted(needed):
        if lib.name in have and not libs_only:
            continue
        dst = own / lib.name
        if not dst.exists():
            copy(Path(os.path.realpath(lib)), dst)
            placed.append(dst)
    search = [own, *libdirs]
    loader = next((d / LOADER for d in search if (d / LOADER).exists()), None)
    rpath = ":".join(str(d) for d in search)
    for lib in placed:  # only libraries that had a search path of their own get ours
        r = subprocess.run(["patchelf", "--print-rpath", str(lib)], capture_output=True,
                           text=True, check=False)
        if r.returncode == 0 and r.stdout.strip() and lib.name != LOADER:
            subprocess.run(["patchelf", "--force-rpath", "--set-rpath", rpath, str(lib)],
                           check=True)
    if libs_only:
        for prog in copied:
            prog.unlink()
        return len(placed)
    if copied and loader is None:
        raise RuntimeError(f"no {LOADER} in {search}")
    for prog in copied:
        subprocess.run(["patchelf", "--set-interpreter", str(loader), "--force-rpath",
                        "--set-rpath", rpath, str(prog)], check=True)
        prog.chmod(stat.S_IMODE(prog.stat().st_mode) & ~stat.S_IWUSR)
    return len(copied)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=os.environ.get("out"))  # noqa: SIM112 (Nix's name)
    ap.add_argument("--bin", type=Path, action="append", default=[])
    ap.add_argument("--deb", action="append", default=[])
    ap.add_argument("--static", type=Path, action="append", default=[])
    ap.add_argument("--libs", type=Path, action="append", default=[])
    ap.add_argument("--libs-only", action="store_true")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("no OUT and no $out")
    missing = [t for t in ("ldd", "patchelf", *(["dpkg-query"] if args.deb else []))
               if shutil.which(t) is None]
    if missing:
        print(f"hosttool: not found: {', '.join(missing)} (Debian: libc-bin, patchelf, dpkg)",
              file=sys.stderr)
        return 2
    bins = list(args.bin)
    for pkg in args.deb:
        bins += deb_programs(pkg)
    n = build(args.out, bins, args.static, args.libs, args.libs_only)
    print(f"[hosttool] {args.out}: {n} {'libraries' if args.libs_only else 'programs'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
