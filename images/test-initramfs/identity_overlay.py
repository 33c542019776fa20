#!/usr/bin/env python3
"""Assemble the identity overlay for the test initramfs: the identity hook plus a dynamically
linked curl and ssh-keygen from this machine with every library they load.

    images/test-initramfs/identity_overlay.py OUTDIR
    images/test-initramfs/build.py IMAGEDIR --overlay OUTDIR

busybox's wget cannot check a server key against a pin, so the guest gets the real curl
(--pinnedpubkey), as netbootd's NixOS client does; ssh-keygen prints the fingerprint of the key
it received. The libraries are found with ldd and placed at the paths ldd names (plus the
dynamic loader), about 19 MB before compression.

Only the Python standard library. Exit status: 0 built; 2 curl, ssh-keygen or ldd is missing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hosttool import closure  # this directory (the script's own) is on sys.path

HERE = Path(__file__).resolve().parent
TREE = HERE / "identity"  # the hook, /etc/passwd for ssh-keygen
TOOLS = ("curl", "ssh-keygen")


def build(out: Path) -> list[str]:
    missing = [t for t in (*TOOLS, "ldd") if shutil.which(t) is None]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(TREE, out, symlinks=True)
    placed: list[str] = []
    libs: set[Path] = set()
    for tool in TOOLS:
        src = Path(shutil.which(tool) or "").resolve()
        dst = out / "usr" / "bin" / tool
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        placed.append(f"/usr/bin/{tool}")
        libs |= closure(src)
    for lib in sorted(libs):
        dst = out / str(lib).lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dst)  # the file itself, at the name the loader asks for
        placed.append(str(lib))
    return placed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 1
    try:
        placed = build(Path(args[0]))
    except FileNotFoundError as e:
        print(f"identity-overlay: not found: {e} (Debian: curl, openssh-client, libc-bin)",
              file=sys.stderr)
        return 2
    print(f"[identity-overlay] {len(placed)} files in {args[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
