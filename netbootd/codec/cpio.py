"""newc ("070701") cpio archives: the format Linux unpacks as an initramfs. Pure.

Values in, bytes out (`header`, `entry`, `trailer`, `archive`), and bytes in, values out
(`parse`). No files, no clock: callers read the files and pass their bytes and metadata.

Facts the writer relies on (Linux init/initramfs.c):
- the kernel unpacks every archive in the initrd one after the other, each may be compressed on
  its own, and NUL padding between them is skipped -- so per-store-path archives concatenate;
- it does not create missing parent directories: a directory's entry must come before the
  entries inside it (the composer emits the store directory's parents in a leader archive);
- the hard-link table is reset at each `TRAILER!!!`, and only entries with nlink >= 2 take part
  in it, so files written here have nlink 1 and inode numbers need only be unique per archive.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from netbootd.errors import CpioError

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
_HEX = re.compile(rb"[0-9A-Fa-f]{104}")




@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is a file's content or a symlink's target."""

    name: str  # relative, no leading '/', e.g. "nix/store/abc-hello/bin/hello"
    mode: int  # st_mode: type bits + permissions
    data: bytes = b""
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    ino: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def header(e: Entry, size: int | None = None) -> bytes:
    """The header (+ name + padding) of `e`; the data and its padding follow it."""
    name = e.name.encode() + b"\0"
    if len(name) > 4096:  # PATH_MAX: the kernel refuses longer names
        raise ValueError(f"cpio: name too long ({len(name)} bytes): {e.name[:60]}...")
    size = len(e.data) if size is None else size
    fields = (e.ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, size, 0, 0,
              e.rdev_major, e.rdev_minor, len(name), 0)
    for f in fields:
        if not 0 <= f <= 0xFFFFFFFF:
            raise ValueError(f"cpio: field out of range for newc ({f}) in {e.name[:60]}")
    h = MAGIC + b"".join(b"%08X" % f for f in fields) + name
    return h + _pad4(len(h))


def entry(e: Entry) -> bytes:
    """Header + data + padding of one member."""
    return header(e) + e.data + _pad4(len(e.data))


def trailer() -> bytes:
    """The end-of-archive member (the kernel resets its hard-link table here)."""
    return header(Entry(TRAILER, 0, nlink=1))


def archive(entries: list[Entry] | tuple[Entry, ...], *, number: bool = True) -> bytes:
    """A whole archive: `entries` in the order given, then the trailer. number: give entries
    without an inode number 1, 2, 3, ... (unique within the archive)."""
    out = bytearray()
    for i, e in enumerate(entries, start=1):
        if number and e.ino == 0:
            e = Entry(e.name, e.mode, e.data, e.mtime, e.uid, e.gid, e.nlink, i,
                      e.rdev_major, e.rdev_minor)
        out += entry(e)
    out += trailer()
    return bytes(out)


def parse(data: bytes) -> Iterator[Entry | None]:
    """Members of one or more concatenated uncompressed archives, in order; None marks each
    trailer (the end of one archive). NUL padding between archives is skipped, as the kernel
    does. Raises CpioError on anything malformed."""
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:  # padding between archives (kernel: multiples of 4 bytes)
            pos += 1
            continue
        if data[pos : pos + 6] != MAGIC:
            raise CpioError(f"no newc magic at offset {pos}: {data[pos:pos + 6]!r}")
        if pos + HEADER_LEN > end:
            raise CpioError(f"truncated header at offset {pos}")
        fields = data[pos + 6 : pos + HEADER_LEN]
        if not _HEX.fullmatch(fields):  # (int() alone takes "-0000070", " 1_0", "+1")
            raise CpioError(f"bad hex in header at offset {pos}")
        f = [int(fields[8 * i : 8 * i + 8], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = f
        name_end = pos + HEADER_LEN + namesize
        if namesize == 0 or name_end > end or data[name_end - 1] != 0:
            raise CpioError(f"bad name at offset {pos}")
        name = data[pos + HEADER_LEN : name_end - 1].decode("utf-8", "surrogateescape")
        dpos = name_end + (-name_end % 4)
        if dpos + size > end:
            raise CpioError(f"truncated data of {name!r} at offset {pos}")
        body = data[dpos : dpos + size]
        pos = dpos + size + (-(dpos + size) % 4)
        if name == TRAILER:
            yield None
            continue
        yield Entry(name, mode, bytes(body), mtime, uid, gid, nlink, ino, rmaj, rmin)


def tree(data: bytes) -> dict[str, tuple[int, bytes]]:
    """What unpacking the archive(s) in `data` in order yields: name -> (mode, data), later
    members replacing earlier ones, as extraction over the same root does."""
    out: dict[str, tuple[int, bytes]] = {}
    for e in parse(data):
        if e is not None:
            out[e.name.lstrip("/").removeprefix("./") or "."] = (e.mode, e.data)
    return out
