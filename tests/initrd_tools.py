"""Test helpers: unpack an initrd made of concatenated, individually compressed cpio archives the
way Linux does (member by member, into one root), with GNU `cpio -i`, and compare trees."""

from __future__ import annotations

import lzma
import os
import stat
import subprocess
import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"


def split_members(data: bytes) -> list[bytes]:
    """The decompressed members of an initrd: each gzip/xz stream or uncompressed archive on its
    own, as the kernel's unpacker sees them. NUL padding between members is skipped."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        rest = data[pos:]
        if rest.startswith(GZIP_MAGIC):
            d = zlib.decompressobj(31)
            out.append(d.decompress(rest))
            pos = len(data) - len(d.unused_data)
        elif rest.startswith(XZ_MAGIC):
            x = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            out.append(x.decompress(rest))
            pos = len(data) - len(x.unused_data)
        elif rest.startswith(b"070701"):
            end = rest.index(b"TRAILER!!!\0")
            end += 11
            end += -end % 4
            out.append(rest[:end])
            pos += end
        else:
            raise AssertionError(f"unknown member at offset {pos}: {rest[:8]!r}")
    return out


def unpack(data: bytes, dest: Path) -> int:
    """Extract every member with GNU `cpio -i` into `dest`, in order. Returns the member count."""
    dest.mkdir(parents=True, exist_ok=True)
    members = split_members(data)
    for m in members:
        subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], cwd=dest,
                       input=m, check=True)
    return len(members)


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """path -> (type, permissions, content or link target) for everything under `root`."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", 0, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out
