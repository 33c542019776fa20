"""EFI signature lists (UEFI spec 2.10, 32.4.1): what firmware takes as trust anchors -- the
HTTPS boot CA list (`etc/edk2/https/cacerts` in OVMF, a setup menu's "enroll certificate"), and
the Secure Boot PK, KEK and db variables. Pure: DER in, bytes out.

    EFI_SIGNATURE_LIST  SignatureType (GUID) | ListSize | HeaderSize (0) | SignatureSize (u32s)
      EFI_SIGNATURE_DATA SignatureOwner (GUID) | the DER certificate        (one per list here)

GUIDs are stored in EFI's mixed-endian layout (uuid.UUID.bytes_le). The output is byte-identical
to virt-firmware's `virt-fw-sigdb --add-cert` and efitools' `cert-to-efi-sig-list` (tested).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable

from netbootd.errors import InvalidInput

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
# The owner netbootd writes when the operator names none (any GUID works; firmware shows it).
NETBOOTD_OWNER = uuid.UUID("6e657462-6f6f-7464-8000-000000000014")
_HEADER = struct.Struct("<16sIII")


def signature_list(der: bytes, owner: uuid.UUID = NETBOOTD_OWNER) -> bytes:
    """One EFI_SIGNATURE_LIST holding one X.509 certificate (DER)."""
    if not der or der[0] != 0x30:
        raise InvalidInput("not a DER certificate (it must start with a SEQUENCE)")
    data = owner.bytes_le + der
    return _HEADER.pack(EFI_CERT_X509_GUID.bytes_le, _HEADER.size + len(data), 0, len(data)) + data


def signature_database(ders: Iterable[bytes], owner: uuid.UUID = NETBOOTD_OWNER) -> bytes:
    """Several certificates, one list each (as virt-fw-sigdb and efitools write them)."""
    return b"".join(signature_list(d, owner) for d in ders)


def parse(data: bytes) -> list[tuple[uuid.UUID, uuid.UUID, bytes]]:
    """(signature type, owner, data) of every entry; InvalidInput on a malformed list."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < _HEADER.size:
            raise InvalidInput(f"truncated signature list header at offset {i}")
        kind, size, header, entry = _HEADER.unpack_from(data, i)
        if size < _HEADER.size + header or entry < 16 or i + size > len(data):
            raise InvalidInput(f"bad signature list sizes at offset {i}")
        body = data[i + _HEADER.size + header : i + size]
        if len(body) % entry:
            raise InvalidInput(f"signature list at offset {i}: entries do not fill it")
        for j in range(0, len(body), entry):
            out.append((uuid.UUID(bytes_le=bytes(kind)), uuid.UUID(bytes_le=body[j : j + 16]),
                        body[j + 16 : j + entry]))
        i += size
    return out
