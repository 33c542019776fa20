"""PE/COFF images (UEFI executables): the headers a UKI's assembly and its Authenticode hash
need. Pure: bytes in, values out. Microsoft's PE format spec, sections "COFF File Header",
"Optional Header", "Section Table" and "Attribute Certificate Table"; Authenticode hashing as in
"Windows Authenticode Portable Executable Signature Format" (what sbsign and EDK2 compute).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from netbootd.errors import InvalidInput

PE32_PLUS = 0x20B
MACHINE_X64, MACHINE_ARM64 = 0x8664, 0xAA64
CERT_TABLE = 4  # data directory index of the attribute certificate table


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int


@dataclass(frozen=True)
class PeImage:
    machine: int
    checksum_offset: int  # file offset of OptionalHeader.CheckSum (4 bytes, not hashed)
    cert_dir_offset: int  # file offset of the certificate table's data directory entry (8)
    headers_size: int  # SizeOfHeaders
    cert_table: tuple[int, int]  # (file offset, size); (0, 0): unsigned
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise InvalidInput(f"the image has no {name} section")


def parse(data: bytes | memoryview) -> PeImage:
    """The headers of a PE32+ image; InvalidInput for anything else."""
    try:
        return _parse(memoryview(data))
    except struct.error:
        raise InvalidInput("truncated PE image") from None


def _parse(m: memoryview) -> PeImage:
    if bytes(m[:2]) != b"MZ":
        raise InvalidInput("not a PE image (no MZ header)")
    pe = struct.unpack_from("<I", m, 0x3C)[0]
    if bytes(m[pe : pe + 4]) != b"PE\0\0":
        raise InvalidInput("not a PE image (no PE signature)")
    machine, nsections, _, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", m, pe + 4)
    opt = pe + 24
    if struct.unpack_from("<H", m, opt)[0] != PE32_PLUS:
        raise InvalidInput("not a PE32+ image")
    headers_size = struct.unpack_from("<I", m, opt + 60)[0]
    ndirs = struct.unpack_from("<I", m, opt + 108)[0]
    if ndirs <= CERT_TABLE:
        raise InvalidInput("the image has no certificate table directory")
    cert_dir = opt + 112 + 8 * CERT_TABLE
    cert = struct.unpack_from("<II", m, cert_dir)
    sections = []
    for i in range(nsections):
        off = opt + opt_size + 40 * i
        name = bytes(m[off : off + 8]).rstrip(b"\0").decode("ascii", "replace")
        vsize, vaddr, rsize, roff = struct.unpack_from("<IIII", m, off + 8)
        sections.append(Section(name, vsize, vaddr, rsize, roff))
    return PeImage(machine, opt + 64, cert_dir, headers_size, (cert[0], cert[1]),
                   tuple(sections))


def authenticode_hasher(data: bytes | memoryview, img: PeImage, end: int | None = None
                        ) -> hashlib._Hash:
    """SHA-256 over the image as Authenticode hashes it -- headers without CheckSum and the
    certificate directory entry, then the sections' raw data in file order, then anything after
    them up to the certificate table -- fed up to file offset `end` (None: all of it). A hasher
    fed up to the start of a UKI's last section can be copied and finished per boot with that
    section's new bytes (roles/uki.py)."""
    m = memoryview(data)
    stop = len(m) if end is None else end
    if img.cert_table[1]:
        stop = min(stop, img.cert_table[0])
    h = hashlib.sha256()
    h.update(m[: img.checksum_offset])
    h.update(m[img.checksum_offset + 4 : img.cert_dir_offset])
    h.update(m[img.cert_dir_offset + 8 : img.headers_size])
    pos = img.headers_size
    for s in sorted((s for s in img.sections if s.raw_size), key=lambda s: s.raw_offset):
        if s.raw_offset != pos:
            raise InvalidInput(f"section {s.name} does not follow the previous one")
        h.update(m[s.raw_offset : min(s.raw_offset + s.raw_size, stop)])
        pos = s.raw_offset + s.raw_size
        if pos >= stop:
            return h
    h.update(m[pos:stop])
    return h
