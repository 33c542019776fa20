"""A tiny bootable "gold" disk for the iSCSI tests (integration and e2e): its MBR counts its boots.

The boot sector (16-bit real mode, hand-assembled below) prints a banner on COM1, reads LBA 1
through the BIOS (int 13h, which iPXE's `sanboot` serves from the iSCSI LUN), adds one to the
counter in its first byte, prints `NBD-SANBOOT: boot count N`, writes the sector back (int 13h
write -> an iSCSI WRITE to the host's own clone) and halts. So a VM's console says how often *its
disk* has been booted: a clone of a fresh gold image says 1, the same clone after another boot 2,
and a sibling clone of the same gold image 1 again -- while the gold image's LBA 1 stays 0.

The disk is sparse and 16 MiB: iPXE's int13 geometry guess needs >= ~8 MiB (smaller disks get
0 cylinders and sanboot fails with EIO).
"""

from __future__ import annotations

import struct
from pathlib import Path

BANNER = "NBD-SANBOOT: boot sector read over iSCSI"
COUNT = "NBD-SANBOOT: boot count "
WROTE = "NBD-SANBOOT: write ok"
FAILED = "NBD-SANBOOT: disk error"
SIZE = 16 << 20
COUNTER_OFFSET = 512  # LBA 1, byte 0


class _Asm:
    """Just enough of an assembler: bytes, labels, rel8/rel16/abs16 fix-ups. Origin 0x7C00."""

    ORG = 0x7C00

    def __init__(self) -> None:
        self.code = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str, str]] = []  # (offset, label, kind)

    def b(self, *data: int, ref: tuple[str, str] | None = None) -> None:
        """Bytes, then (with ref=(label, kind)) a fix-up to that label."""
        self.code += bytes(data)
        if ref is not None:
            self.ref(*ref)

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ref(self, name: str, kind: str) -> None:
        self.fixups.append((len(self.code), name, kind))
        self.code += b"\0" * (1 if kind == "rel8" else 2)

    def link(self) -> bytes:
        for off, name, kind in self.fixups:
            target = self.labels[name]
            if kind == "abs16":
                struct.pack_into("<H", self.code, off, self.ORG + target)
            elif kind == "rel16":
                struct.pack_into("<h", self.code, off, target - (off + 2))
            else:
                rel = target - (off + 1)
                assert -128 <= rel <= 127, name
                struct.pack_into("<b", self.code, off, rel)
        return bytes(self.code)


def boot_sector() -> bytes:
    a = _Asm()
    a.b(0x31, 0xC0)  # xor ax,ax
    a.b(0x8E, 0xD8)  # mov ds,ax
    a.b(0x8E, 0xC0)  # mov es,ax
    a.b(0x8E, 0xD0)  # mov ss,ax
    a.b(0xBC, 0x00, 0x7C)  # mov sp,0x7c00
    a.b(0xFC)  # cld
    a.b(0x88, 0x16, ref=("drive", "abs16"))  # mov [drive],dl
    a.b(0xBE, ref=("banner", "abs16"))  # mov si,banner
    a.b(0xE8, ref=("print", "rel16"))  # call print
    for op in ("read", "write"):
        if op == "write":
            a.b(0xFE, 0x06, 0x00, 0x7E)  # inc byte [0x7e00]
            a.b(0xBE, ref=("count", "abs16"))
            a.b(0xE8, ref=("print", "rel16"))
            a.b(0xA0, 0x00, 0x7E)  # mov al,[0x7e00]
            a.b(0x04, 0x30)  # add al,'0'
            a.b(0xE8, ref=("putc", "rel16"))
            a.b(0xBE, ref=("crlf", "abs16"))
            a.b(0xE8, ref=("print", "rel16"))
        a.b(0xB8, 0x01, 0x02 if op == "read" else 0x03)  # mov ax,0x0201 / 0x0301 (1 sector)
        a.b(0xB9, 0x02, 0x00)  # mov cx,2: cylinder 0, sector 2 (= LBA 1)
        a.b(0xB6, 0x00)  # mov dh,0: head 0
        a.b(0x8A, 0x16, ref=("drive", "abs16"))  # mov dl,[drive]
        a.b(0xBB, 0x00, 0x7E)  # mov bx,0x7e00
        a.b(0xCD, 0x13)  # int 0x13
        a.b(0x72, ref=("fail", "rel8"))  # jc fail
    a.b(0xBE, ref=("wrote", "abs16"))
    a.b(0xE8, ref=("print", "rel16"))
    a.label("halt")
    a.b(0xFA, 0xF4, 0xEB, 0xFD)  # cli; hlt; jmp hlt
    a.label("fail")
    a.b(0xBE, ref=("failed", "abs16"))
    a.b(0xE8, ref=("print", "rel16"))
    a.b(0xEB, ref=("halt", "rel8"))
    a.label("print")  # print the NUL-terminated string at si
    a.b(0xAC)  # lodsb
    a.b(0x84, 0xC0)  # test al,al
    a.b(0x74, 0x05)  # jz ret
    a.b(0xE8, ref=("putc", "rel16"))
    a.b(0xEB, ref=("print", "rel8"))
    a.b(0xC3)  # ret
    a.label("putc")  # al -> COM1 (QEMU's UART needs no handshake)
    a.b(0xBA, 0xF8, 0x03)  # mov dx,0x3f8
    a.b(0xEE)  # out dx,al
    a.b(0xC3)  # ret
    a.label("drive")
    a.b(0)
    for name, text in (("banner", f"\r\n{BANNER}\r\n"), ("count", COUNT), ("crlf", "\r\n"),
                       ("wrote", f"{WROTE}\r\n"), ("failed", f"\r\n{FAILED}\r\n")):
        a.label(name)
        a.code += text.encode() + b"\0"
    code = a.link()
    assert len(code) <= 446, f"boot code is {len(code)} bytes"
    return code.ljust(510, b"\0") + b"\x55\xaa"


def write_disk(path: Path, size: int = SIZE) -> Path:
    """A sparse `size`-byte disk image whose MBR is boot_sector() and whose LBA 1 is zero."""
    with open(path, "wb") as f:
        f.write(boot_sector())
        f.truncate(size)
    return path


def boot_count(image: bytes | Path) -> int:
    """The counter byte (LBA 1, byte 0) of a raw disk image."""
    if isinstance(image, Path):
        with open(image, "rb") as f:
            f.seek(COUNTER_OFFSET)
            return f.read(1)[0]
    return image[COUNTER_OFFSET]
