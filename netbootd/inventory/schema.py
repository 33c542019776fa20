"""The inventory document, version 1: pydantic models (the one definition), its JSON Schema
(`inventory-v1.schema.json`, generated from them and checked in: tests/unit/test_inventory.py
fails when the two differ), the summary listings show, and the changes between two reports.

Versioning: a change that every existing document still satisfies stays
`netbootd-inventory/1` (a new optional field, a wider bound); anything else -- a field renamed,
removed, retyped or made required, a bound narrowed -- is `/2`. So the TPM's EK is additive:
`tpm.ek_public` had been in the schema since the first document but no agent filled it (every
stored document has null), and its 256-character text bound is replaced by a PEM public key of
at most 4,096 characters; `tpm.ek_sha256` (new, optional) is its fingerprint. Old documents
validate unchanged; a server older than this change refuses a document that carries the new
field (extra fields are forbidden), so the agent and the server come from one release, as the
discovery image does.

Everything in it was written by the machine that reported it, so every string is cleaned on the
way in: at most 256 characters, non-printable characters shown escaped (fmt.printable), and the
lists are bounded -- a hostile report is refused (400) or stored small, never big.
Only the store's callers and the CLI/API read it; the agent (agent.py) writes plain dicts of
the same shape without importing this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from netbootd.errors import InvalidInput
from netbootd.fmt import printable

SCHEMA_ID = "netbootd-inventory/1"
SCHEMA_FILE = Path(__file__).with_name("inventory-v1.schema.json")
MAX_TEXT = 256


def _text(v: object) -> object:
    if isinstance(v, str):
        return printable(v, MAX_TEXT)
    return v


Text = Annotated[str, BeforeValidator(_text), Field(max_length=MAX_TEXT + 3)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class System(_Part):
    """DMI (SMBIOS) as /sys/class/dmi/id shows it; null where the firmware says nothing."""

    vendor: Text | None = None
    product: Text | None = None
    serial: Text | None = None
    uuid: Text | None = None
    board_vendor: Text | None = None
    board_product: Text | None = None
    board_serial: Text | None = None
    bios_vendor: Text | None = None
    bios_version: Text | None = None
    bios_date: Text | None = None


class Firmware(_Part):
    mode: Literal["uefi", "bios"]
    secure_boot: Literal["enabled", "disabled", "unknown"] = "unknown"


MAX_PEM = 4096  # an RSA 4096 SubjectPublicKeyInfo is ~800 PEM characters, ECC P-384 ~215
# a PEM public key and nothing else: base64 lines of at most 76 characters between the markers
PEM_PUBLIC_KEY = (r"^-----BEGIN PUBLIC KEY-----\n(?:[A-Za-z0-9+/=]{1,76}\n){1,64}"
                  r"-----END PUBLIC KEY-----\n?$")


def pem_der(pem: str) -> bytes:
    """The DER bytes of a PEM public key (its SubjectPublicKeyInfo)."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body, validate=True)


class Tpm(_Part):
    present: bool
    version: Text | None = None  # "2.0", "1.2"
    # the endorsement key's public half, PEM (SubjectPublicKeyInfo), where tpm2-tools read it
    ek_public: str | None = Field(None, max_length=MAX_PEM, pattern=PEM_PUBLIC_KEY)
    # SHA-256 (hex) of its DER: `openssl pkey -pubin -in ek.pem -outform DER | sha256sum`
    ek_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _fingerprint_is_the_keys(self) -> Tpm:
        if self.ek_public is None:
            if self.ek_sha256 is not None:
                raise ValueError("ek_sha256 without ek_public")
            return self
        try:
            digest = hashlib.sha256(pem_der(self.ek_public)).hexdigest()
        except (binascii.Error, ValueError):
            raise ValueError("ek_public: not base64") from None
        if self.ek_sha256 != digest:
            raise ValueError("ek_sha256 is not the SHA-256 of ek_public's key")
        return self


class Cpu(_Part):
    model: Text | None = None
    arch: Text  # uname -m: x86_64, aarch64
    sockets: int = Field(1, ge=0, le=1024)
    cores: int = Field(ge=0, le=65536)  # physical cores, all sockets
    threads: int = Field(ge=0, le=65536)  # logical CPUs


class Memory(_Part):
    total_bytes: int = Field(ge=0)


class Disk(_Part):
    name: Text  # kernel name: vda, sda, nvme0n1
    model: Text | None = None
    serial: Text | None = None
    wwn: Text | None = None
    size_bytes: int = Field(ge=0)
    rotational: bool | None = None
    transport: Text | None = None  # virtio, scsi, sata, nvme, usb (ID_BUS / ID_PATH)
    driver: Text | None = None  # the controller's driver module: virtio_blk, ahci, nvme
    by_id: list[Text] = Field(default_factory=list, max_length=32)  # /dev/disk/by-id names
    by_path: Text | None = None


class Nic(_Part):
    name: Text  # kernel name at report time: eth0
    mac: Text
    driver: Text | None = None
    pci_path: Text | None = None  # ID_PATH: pci-0000:00:03.0
    name_path: Text | None = None  # ID_NET_NAME_PATH: enp0s3 (the predictable name)
    link: bool | None = None
    speed_mbps: int | None = Field(None, ge=-1)


class PciDevice(_Part):
    slot: Text  # 0000:00:03.0
    vendor_id: Text
    device_id: Text
    class_id: Text
    driver: Text | None = None
    vendor: Text | None = None  # udev's hwdb names, where it has them
    model: Text | None = None


class Inventory(_Part):
    """One machine's hardware, as its own agent saw it at one boot."""

    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_extra={"$id": SCHEMA_ID,
                                                 "title": "netbootd hardware inventory v1"})

    schema_: Literal["netbootd-inventory/1"] = Field(alias="schema")
    agent: Text
    kernel: Text | None = None
    system: System = System()
    firmware: Firmware
    tpm: Tpm
    cpu: Cpu
    memory: Memory
    disks: list[Disk] = Field(default_factory=list, max_length=256)
    nics: list[Nic] = Field(default_factory=list, max_length=128)
    pci: list[PciDevice] = Field(default_factory=list, max_length=512)

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def canonical(self) -> str:
        """The stored text: sorted keys, so equal inventories are equal strings."""
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def macs(self) -> list[str]:
        return [n.mac.lower() for n in self.nics]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of version 1, as checked in (`inventory-v1.schema.json`)."""
    return Inventory.model_json_schema(by_alias=True, mode="validation")


def parse(doc: object) -> Inventory:
    """A reported document, validated; InvalidInput says which field is wrong (first 3)."""
    try:
        return Inventory.model_validate(doc)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3])
        raise InvalidInput(f"not a {SCHEMA_ID} document: {printable(errs, 300)}") from None


def load(text: str) -> Inventory:
    """A stored document (the store's own canonical text)."""
    return parse(json.loads(text))


def summary(inv: Inventory) -> dict[str, Any]:
    """What `netbootd discovered` and the dashboard show of a machine, JSON-ready."""
    return {
        "vendor": inv.system.vendor,
        "product": inv.system.product,
        "serial": inv.system.serial,
        "cpu": inv.cpu.model,
        "cores": inv.cpu.cores,
        "threads": inv.cpu.threads,
        "memory_bytes": inv.memory.total_bytes,
        "disks": [{"name": d.name, "serial": d.serial, "size_bytes": d.size_bytes,
                   "model": d.model} for d in inv.disks],
        "nics": [{"name": n.name, "mac": n.mac, "driver": n.driver} for n in inv.nics],
        "firmware": inv.firmware.mode,
        "secure_boot": inv.firmware.secure_boot,
        "tpm": inv.tpm.present,
        "tpm_version": inv.tpm.version,
        "tpm_ek_sha256": inv.tpm.ek_sha256,
    }


def changes(old: Inventory | None, new: Inventory) -> list[str]:
    """What changed between two reports of one machine, one line each (a disk replaced: its
    serial gone, another's added). Empty: nothing a person would call a change."""
    if old is None:
        return ["first inventory"]
    out: list[str] = []
    a, b = old.system.model_dump(), new.system.model_dump()
    out += [f"system {k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
    if old.firmware != new.firmware:
        out.append(f"firmware: {old.firmware.mode}/{old.firmware.secure_boot} -> "
                   f"{new.firmware.mode}/{new.firmware.secure_boot}")
    if old.tpm.present != new.tpm.present:
        out.append(f"TPM {'added' if new.tpm.present else 'removed'}")
    elif old.tpm.ek_sha256 and new.tpm.ek_sha256 and old.tpm.ek_sha256 != new.tpm.ek_sha256:
        # another TPM, or its endorsement hierarchy was reset: what attests the machine changed
        out.append(f"TPM EK: sha256 {old.tpm.ek_sha256[:16]}... -> {new.tpm.ek_sha256[:16]}...")
    if (old.cpu.model, old.cpu.threads) != (new.cpu.model, new.cpu.threads):
        out.append(f"cpu: {old.cpu.model} x{old.cpu.threads} -> {new.cpu.model} "
                   f"x{new.cpu.threads}")
    if old.memory.total_bytes != new.memory.total_bytes:
        out.append(f"memory: {old.memory.total_bytes} -> {new.memory.total_bytes} bytes")

    def disk_key(d: Disk) -> str:
        return d.serial or d.wwn or f"{d.name}:{d.size_bytes}"

    od, nd = {disk_key(d): d for d in old.disks}, {disk_key(d): d for d in new.disks}
    out += [f"disk removed: {od[k].name} serial {od[k].serial} ({od[k].size_bytes} bytes)"
            for k in sorted(od.keys() - nd.keys())]
    out += [f"disk added: {nd[k].name} serial {nd[k].serial} ({nd[k].size_bytes} bytes)"
            for k in sorted(nd.keys() - od.keys())]
    on, nn = {n.mac.lower(): n for n in old.nics}, {n.mac.lower(): n for n in new.nics}
    out += [f"NIC removed: {m} ({on[m].driver})" for m in sorted(on.keys() - nn.keys())]
    out += [f"NIC added: {m} ({nn[m].driver})" for m in sorted(nn.keys() - on.keys())]
    op = {(p.slot, p.vendor_id, p.device_id) for p in old.pci}
    np_ = {(p.slot, p.vendor_id, p.device_id) for p in new.pci}
    out += [f"PCI device removed: {s} {v}:{d}" for s, v, d in sorted(op - np_)]
    out += [f"PCI device added: {s} {v}:{d}" for s, v, d in sorted(np_ - op)]
    return out
