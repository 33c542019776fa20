"""Plain value types shared by every layer. No I/O here.

A MAC is a `MacAddress` past the edge (CLI argument, HTTP path, DHCP chaddr), never a raw string.
Every value that can end up inside an iPXE script or on a kernel command line is validated here,
once, so templates can trust what they are given. The policy's inputs (`ScriptInputs`,
`StemCell`, ...) and answers (`Release`, `FlagDecision`, `DhcpBoot`, `BootPlan`, ...) are here
too, so the store and the servers act on typed decisions without importing the policy.

One piece on purpose (~620 lines): it is the vocabulary every other module speaks -- frozen
dataclasses and enums with no behaviour beyond validation -- and one place to find a type beats
several half-vocabularies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Any

from netbootd.errors import InvalidInput

_HEX12 = re.compile(r"[0-9a-f]{12}")
_MAC_FORMS = (
    re.compile(r"([0-9a-f]{2})([:-])([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})"),
    re.compile(r"([0-9a-f]{4})\.([0-9a-f]{4})\.([0-9a-f]{4})"),
    re.compile(r"([0-9a-f]{12})"),
)


class MacAddress:
    """A normalised 48-bit Ethernet address. str() gives `aa:bb:cc:dd:ee:ff`."""

    __slots__ = ("_hex",)
    _hex: str

    def __init__(self, packed: bytes) -> None:
        if len(packed) != 6:
            raise InvalidInput(f"a MAC address is 6 bytes, got {len(packed)}")
        object.__setattr__(self, "_hex", packed.hex())

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        """Accept `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff`, `aabbccddeeff`."""
        if not isinstance(text, str):
            raise InvalidInput(f"not a MAC address: {text!r}")
        low = text.strip().lower()
        for form in _MAC_FORMS:
            m = form.fullmatch(low)
            if m:
                digits = "".join(g for g in m.groups() if g not in (":", "-"))
                if _HEX12.fullmatch(digits):
                    return cls(bytes.fromhex(digits))
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInput(
            f"not a MAC address: {shown!r} (use aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, "
            "aabb.ccdd.eeff or aabbccddeeff)"
        )

    @classmethod
    def parse_host(cls, text: str) -> MacAddress:
        """parse(), and the address must be able to name one machine: not all zeros, not the
        broadcast address, not a multicast (group) address. What enrollment accepts."""
        mac = cls.parse(text)
        first = mac.packed[0]
        if mac.packed == bytes(6):
            raise InvalidInput(f"{mac} is the all-zero MAC address: no machine has it")
        if mac.packed == b"\xff" * 6:
            raise InvalidInput(f"{mac} is the broadcast address, not a machine's")
        if first & 1:
            raise InvalidInput(f"{mac} is a multicast (group) address, not a machine's: the "
                               "first byte's lowest bit is set")
        return mac

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MacAddress is immutable")

    @property
    def packed(self) -> bytes:
        return bytes.fromhex(self._hex)

    @property
    def hyphen(self) -> str:
        """`aa-bb-cc-dd-ee-ff`: safe in URLs and file names."""
        return "-".join(self._hex[i : i + 2] for i in range(0, 12, 2))

    def __str__(self) -> str:
        return ":".join(self._hex[i : i + 2] for i in range(0, 12, 2))

    def __repr__(self) -> str:
        return f"MacAddress({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MacAddress) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __lt__(self, other: MacAddress) -> bool:
        return self._hex < other._hex


class Arch(StrEnum):
    """What kind of boot file a client can run, derived from DHCP option 93."""

    BIOS = "bios"  # 0: x86 BIOS PXE ROM -> undionly.kpxe over TFTP
    UEFI = "uefi"  # 6/7/9: x86 UEFI PXE -> ipxe.efi over TFTP
    ARM64 = "arm64"  # 11: arm64 UEFI PXE -> arm64 iPXE over TFTP (if configured)
    HTTP = "http"  # 16: x86-64 UEFI HTTP boot -> ipxe.efi (or the host's UKI) by URL
    HTTP_ARM64 = "http-arm64"  # 19: arm64 UEFI HTTP boot -> arm64 iPXE (or UKI) by URL

    @classmethod
    def from_client_arch(cls, code: int) -> Arch | None:
        """RFC 4578 / IANA processor architecture type -> Arch; None for what we cannot boot."""
        return _ARCH_CODES.get(code)


_ARCH_CODES = {0: Arch.BIOS, 6: Arch.UEFI, 7: Arch.UEFI, 9: Arch.UEFI, 11: Arch.ARM64,
               16: Arch.HTTP, 19: Arch.HTTP_ARM64}
HTTP_ARCHES = frozenset({Arch.HTTP, Arch.HTTP_ARM64})


@dataclass(frozen=True)
class BootClient:
    """Who is asking: the facts the policy needs, extracted from a DHCP request (or `explain`)."""

    mac: MacAddress
    arch: Arch
    # iPXE already runs (user-class "iPXE" or option 175): give it the script URL
    ipxe: bool = False
    # ... and it speaks HTTPS (option 175's HTTPS feature); Debian 12's iPXE and most NIC ROMs
    # do not, so they cannot fetch an https:// script
    ipxe_https: bool = False


# -- validated strings that may end up inside an iPXE script ---------------------------------

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TAG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_ROLE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# Kernel command line: printable ASCII without the characters iPXE's script parser or shells
# give meaning to (newline, `$`, `;`, `&`, `|`, backtick, backslash, `#`, quotes).
_CMDLINE = re.compile(r"[A-Za-z0-9 ._,:=/+@%~^\[\]{}()*!?<>-]*")


def hostname(value: str) -> str:
    """A single DNS label (RFC 1123): lower-case letters, digits, hyphens, 1-63 chars."""
    v = value.strip().lower() if isinstance(value, str) else ""
    if not _DNS_LABEL.fullmatch(v):
        raise InvalidInput(
            f"not a valid hostname: {value!r} (one DNS label: a-z, 0-9 and '-', "
            "1-63 characters, not starting or ending with '-')"
        )
    _not_a_mac(v, "hostname")
    return v


def _not_a_mac(v: str, what: str) -> None:
    """Hosts are found by MAC first, then by name: a name spelled like a MAC would find (and
    `unenroll` would remove) the host with that MAC instead."""
    try:
        mac = MacAddress.parse(v)
    except InvalidInput:
        return
    raise InvalidInput(f"not a valid {what}: {v!r} is spelled like the MAC address {mac}; "
                       "hosts are looked up by MAC first, so pick another name")


def canon_name(value: str) -> str:
    """A fully qualified canonical host name: dot-separated DNS labels, at most 253 chars."""
    v = value.strip().lower().rstrip(".") if isinstance(value, str) else ""
    if not v or len(v) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in v.split(".")):
        raise InvalidInput(f"not a valid canonical name: {value!r} (e.g. web1.rack2.example.org)")
    _not_a_mac(v, "canonical name")
    return v


_DURATION = re.compile(r"\s*(\d{1,9}(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(value: str | float, what: str = "duration", zero: bool = False,
             unit: bool = False) -> float:
    """THE duration parser (CLI options, config fields, API bodies): `90s`, `15m`, `2h`, `7d`,
    `1w`, or a plain number of seconds (`3600`, `0.5`) where seconds were always the unit (config
    fields, `--grace`). `unit=True` where a bare number is ambiguous and was always refused
    (`--stale 7`: 7 days or 7 seconds?). Zero only if `zero`."""
    example = "e.g. 90s, 30m, 2h, 7d, 1w" + ("" if unit else " or seconds")
    if isinstance(value, bool):
        raise InvalidInput(f"{what}: {value!r} is not a duration ({example})")
    if isinstance(value, int | float) and not unit:
        secs = float(value)
    else:
        m = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not m or (unit and not m.group(2)):
            raise InvalidInput(f"{what}: {value!r} is not a duration ({example})")
        secs = float(m.group(1)) * _UNITS[m.group(2)]
    if secs < 0 or (secs == 0 and not zero):
        raise InvalidInput(f"{what}: {value!r} is not a duration "
                           f"{'of at least' if zero else 'above'} 0 ({example})")
    return secs


def tag(value: str) -> str:
    v = value.strip().lower() if isinstance(value, str) else ""
    if not _TAG.fullmatch(v):
        raise InvalidInput(f"not a valid tag: {value!r} (a-z, 0-9, '_', '.', '-'; up to 63 chars)")
    return v


def role_name(value: str) -> str:
    v = value.strip() if isinstance(value, str) else ""
    if not _ROLE.fullmatch(v):
        raise InvalidInput(
            f"not a valid role name: {value!r} (lower-case a-z, 0-9, '_', '.', '-'; up to 63 chars)"
        )
    return v


def cmdline(value: str) -> str:
    """A kernel command line that cannot break out of the iPXE `kernel` line it is put on."""
    if not isinstance(value, str) or len(value) > 4096 or not _CMDLINE.fullmatch(value):
        bad = sorted({c for c in str(value) if not _CMDLINE.fullmatch(c)})
        raise InvalidInput(
            f"kernel command line contains characters netbootd refuses: {''.join(bad)!r} "
            "(no newlines, '$', ';', '&', '|', '#', quotes or backslashes; max 4096 chars)"
        )
    return " ".join(value.split())


# The default one-shot re-provision flag; a role may name another (`role set --provision-flag`).
DEFAULT_PROVISION_FLAG = "netbootd.provision_disks=1"
_FLAG = re.compile(r"[A-Za-z0-9_.-]{1,100}(=[A-Za-z0-9_.,:/+@%~-]{1,200})?")
# Names netbootd itself puts on the command line: a flag may not shadow them.
_RESERVED_FLAG_NAMES = frozenset({"init", "initrd", "netbootd.events", "netbootd.hostname",
                                  "netbootd.identity", "netbootd.pin", "netbootd.boot"})


def provision_flag(value: str) -> str:
    """One kernel command line word, `name` or `name=value` (`homelab.provision_disks=true`)."""
    v = value.strip() if isinstance(value, str) else ""
    if not _FLAG.fullmatch(v) or v.split("=", 1)[0] in _RESERVED_FLAG_NAMES:
        raise InvalidInput(
            f"not a usable provision flag: {value!r} (one kernel parameter, name or name=value: "
            "A-Z, a-z, 0-9, '_', '.', '-'; not one netbootd sets itself)"
        )
    return v


def sha256_hex(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InvalidInput(f"not a sha256 digest: {value!r}")
    return value


# -- state records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


@dataclass(frozen=True)
class NixBuild:
    """How a generation was built from a NixOS configuration (`netbootd role build`)."""

    mode: str  # "netboot": NixOS's netbootRamdisk; "compose": initialRamdisk + per-path archives
    kernel_path: str  # the store paths the artifacts came from
    initrd_path: str
    toplevel_path: str
    build_seconds: float  # evaluation + `nix-store --realise`
    compose_hits: int = 0  # store paths whose archive came from the compose cache
    compose_misses: int = 0  # store paths compressed for this generation


@dataclass(frozen=True)
class Image:
    """One generation of a role: the exact kernel + initrds + cmdline a host boots."""

    role: str
    generation: int
    kernel: Artifact
    initrds: tuple[Artifact, ...]
    cmdline: str
    created: float
    source: str = ""  # "import", or the flake ref / file#attr it was built from
    build: NixBuild | None = None  # set for generations built by `netbootd role build`


@dataclass(frozen=True)
class Role:
    name: str
    current_generation: int | None
    generations: int = 0
    provision_flag: str | None = None  # None: the configured default (provision.flag)


@dataclass(frozen=True)
class Host:
    mac: MacAddress
    role: str
    hostname: str | None = None
    canon: str | None = None
    tags: tuple[str, ...] = ()
    created: float = 0.0
    last_boot: float | None = None
    last_boot_ip: str | None = None
    pinned_generation: int | None = None  # boots this generation of its role, not the current
    last_provisioned: float | None = None  # when it last reported `provisioned` (accepted)

    @property
    def name(self) -> str:
        """How a host is named everywhere a person reads it: its hostname, else its MAC
        (aa:bb:cc:dd:ee:ff). The one spelling; JSON keeps `hostname` null instead."""
        return self.hostname or str(self.mac)

    @property
    def label(self) -> str:
        """`web1 (52:54:00:12:34:56)`, or the MAC alone when there is no hostname."""
        return f"{self.hostname} ({self.mac})" if self.hostname else str(self.mac)


@dataclass(frozen=True)
class Event:
    mac: MacAddress | None  # None: an audit event that names no host (an unknown identity token)
    event: str
    time: float
    source_ip: str | None
    detail: dict[str, object] = field(default_factory=dict)
    boot: str | None = None  # the per-boot id (12 hex digits) the event belongs to, if known


@dataclass(frozen=True)
class IdentityPublic:
    """The public half of one generation of a host's identity (what the database holds).

    The private keys live only in files under `<state>/identity/` (mode 0600): identity/vault.py.
    """

    mac: MacAddress
    generation: int
    created: float
    machine_id: str  # 32 lowercase hex digits
    ssh_ed25519: str  # "ssh-ed25519 AAAA... root@<name>"
    ssh_rsa: str  # "ssh-rsa AAAA... root@<name>"
    wg_public: str  # WireGuard public key, base64
    directory: str = ""  # the generation's directory name under <state>/identity/<mac>/

    @property
    def hostid(self) -> str:
        """The ZFS hostId: the first 8 hex digits of the machine-id."""
        return self.machine_id[:8]


@dataclass(frozen=True)
class IdentityState:
    """Which generation a host's identity is at and whether it will be handed out."""

    mac: MacAddress
    generation: int
    armed: bool  # the next boot gets a token for it
    every_boot: bool  # stays armed after a delivery (stateless hosts)
    changed: float


@dataclass(frozen=True)
class IdentityToken:
    """A per-boot identity token as stored: only its sha256 digest, never the token itself."""

    digest: str
    mac: MacAddress
    ip: str  # the address that fetched the script; the only one that may redeem it
    created: float
    expires: float
    used: float | None = None
    used_ip: str | None = None
    boot: str | None = None  # the per-boot id of the script that carried it


class ProvisionState(StrEnum):
    ARMED = "armed"  # the flag goes on the host's boots until it reports `provisioned`
    FAILED = "failed"  # the loop guard tripped: no flag until re-armed or cancelled


@dataclass(frozen=True)
class Provision:
    """A host's pending one-shot re-provision (`netbootd reprovision`): at most one per host."""

    mac: MacAddress
    state: ProvisionState
    armed: float  # when it was armed; names this arming (boots served its flag refer to it)
    expires: float  # after this the flag is no longer served and the arming is cleared
    max_boots: int  # the loop guard: boots served the flag without a `provisioned` report
    boots: int = 0  # boots served the flag so far
    last_boot: str | None = None  # sha256 of the per-boot token of the latest boot served it
    via: str = "cli"
    changed: float = 0.0
    reason: str = ""  # why it failed


@dataclass(frozen=True)
class ProvisionBoot:
    """A boot whose script carried the flag, by the SHA-256 of its per-boot token."""

    digest: str
    mac: MacAddress
    armed: float  # the arming (Provision.armed) it was served under
    number: int  # 1..max_boots
    time: float
    ip: str | None = None


# -- stem-cell boot: boot modes, iSCSI LUNs, the NFS store -----------------------------------


class BootMode(StrEnum):
    """How a role's hosts boot (`netbootd role mode`)."""

    RAMDISK = "ramdisk"  # kernel + initrd(s) from the artifact store (the default)
    NFS_STORE = "nfs-store"  # the stem-cell initramfs mounts the shared store + a host layer
    ISCSI = "iscsi"  # the host's own copy-on-write root LUN, cloned from a gold image
    LOCAL = "local"  # the local disk (provisioned hosts): iPXE `exit` or `sanboot --drive 0x80`


SAN_BOOTS = ("sanboot", "sanhook")  # iscsi: boot the LUN's MBR, or hook it and boot the kernel
LOCAL_BOOTS = ("exit", "sanboot")  # local: hand back to the firmware, or boot drive 0x80
_GOLD = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def gold_name(value: str) -> str:
    v = value.strip() if isinstance(value, str) else ""
    if not _GOLD.fullmatch(v):
        raise InvalidInput(
            f"not a valid gold image name: {value!r} (lower-case a-z, 0-9, '_', '.', '-')"
        )
    return v


_SIZE = re.compile(r"(\d+)\s*([KMGT]i?B?|B)?", re.IGNORECASE)


def disk_size(value: str | int) -> int:
    """`8M`, `10G`, `512MiB`, `1073741824` -> bytes (binary units); a multiple of 512."""
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        if not m:
            raise InvalidInput(f"not a size: {value!r} (e.g. 512M, 20G)")
        unit = (m.group(2) or "B")[0].upper()
        n = int(m.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
    if n < 1 << 20 or n % 512:
        raise InvalidInput(f"a disk size must be at least 1 MiB and a multiple of 512: {value!r}")
    return n


@dataclass(frozen=True)
class RoleBoot:
    """A role's boot mode and the settings that mode reads (None: the configured default)."""

    role: str
    mode: BootMode = BootMode.RAMDISK
    toplevel: str | None = None  # nfs-store: switch into this store path (None: the synced one)
    gold: str | None = None  # iscsi: the gold image hosts' root LUNs are cloned from
    data_size: int | None = None  # iscsi: bytes of each host's empty data LUN
    san: str = "sanboot"  # iscsi: one of SAN_BOOTS
    local: str = "exit"  # local: one of LOCAL_BOOTS


@dataclass(frozen=True)
class GoldImage:
    """One version of a gold disk image (`netbootd iscsi gold import`); read-only on disk."""

    name: str
    version: int
    file: str
    size: int
    created: float
    source: str = ""


@dataclass(frozen=True)
class IscsiLun:
    """A host's iSCSI disks: LUN 1 its root clone, LUN 2 its empty data disk, one target."""

    mac: MacAddress
    tid: int  # tgtd target id (stable for the host's lifetime)
    target: str  # the target's IQN
    initiator: str  # the only initiator name tgtd lets in; the host's script sets it
    gold: str
    gold_version: int
    method: str  # reflink | qcow2 | copy (clone.Method)
    root: str  # the file tgtd serves as LUN 1 (for qcow2: the overlay's FUSE export)
    data: str  # the file tgtd serves as LUN 2
    data_size: int
    created: float
    cloned: float  # when the root clone was (re)made


@dataclass(frozen=True)
class SanBoot:
    """What an iscsi host's script does: iPXE SAN URIs (`iscsi:<server>::<port>:<lun>:<iqn>`)."""

    root_url: str
    data_url: str
    initiator: str
    hook: bool  # sanhook the root LUN and boot the role's kernel, instead of sanboot


@dataclass(frozen=True)
class StemCell:
    """What the policy needs to decide a stem-cell boot, looked up by the caller: the role's
    mode and, for iscsi, the host's LUN and the portal; for nfs-store, the NFS server, the export
    paths and the toplevel the store was synced with."""

    boot: RoleBoot
    portal: str | None = None  # "192.168.1.10:3260"
    lun: IscsiLun | None = None
    nfs_server: str | None = None
    nfs_store: str | None = None  # the shared read-only store's export path
    nfs_host: str | None = None  # this host's writable directory's export path
    toplevel: str | None = None  # the store path the role's store was synced for
    upper: str = "tmpfs"  # where the store overlay's upper layer lives: tmpfs | host


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DhcpBoot:
    """What a proxyDHCP reply tells a client: `filename` is a TFTP path or a full HTTP URL."""

    filename: str
    next_server: IPv4Address
    vendor_class: str = "PXEClient"  # echoed in option 60: "HTTPClient" for UEFI HTTP boot
    reason: str = ""


@dataclass(frozen=True)
class BootPlan:
    """Everything the iPXE script template needs; every string already validated."""

    host: Host
    image: Image
    kernel_url: str
    initrds: tuple[tuple[str, str], ...]  # (name, url)
    cmdline: str
    events_url: str
    mode: BootMode = BootMode.RAMDISK
    san: SanBoot | None = None  # iscsi
    local: str | None = None  # local: one of LOCAL_BOOTS
    # the host's latest hardware inventory (netbootd-inventory/1), `host.inventory` in templates
    inventory: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class IdentityOffer:
    """What an armed host's kernel command line carries: where to fetch its identity (a
    single-use per-boot token URL on the HTTPS port) and the server key's pin for curl."""

    url: str  # https://<server>:<port>/identity/<token>
    pin: str  # sha256//<base64 of the SHA-256 of the server certificate's SubjectPublicKeyInfo>


# -- what the policy answers (netbootd/policy.py decides; the store and servers act on it) ----


@dataclass(frozen=True)
class Urls:
    """Where clients reach netbootd's HTTP server, e.g. `http://192.168.1.10:8080`."""

    base: str

    @classmethod
    def for_address(cls, address: IPv4Address | str, port: int) -> Urls:
        host = _url_host(address)
        return cls(f"http://{host}" if port == 80 else f"http://{host}:{port}")

    def script(self, mac: MacAddress) -> str:
        return f"{self.base}/boot/{mac.hyphen}.ipxe"

    def artifact(self, sha256: str, name: str) -> str:
        return f"{self.base}/artifacts/{sha256}/{name}"

    def ipxe_binary(self, name: str) -> str:
        return f"{self.base}/ipxe/{name}"

    def events(self, mac: MacAddress) -> str:
        return f"{self.base}/api/v1/hosts/{mac.hyphen}/events"

    def uki(self, mac: MacAddress) -> str:
        return f"{self.base}/uki/{mac.hyphen}.efi"

    def shim(self, mac: MacAddress) -> str:
        """Shim in a directory of the host's own: shim fetches its second stage (the UKI, as
        grubx64.efi) from the directory of the URL it was loaded from."""
        return f"{self.base}/uki/{mac.hyphen}/{SHIM_NAME}"

    @classmethod
    def for_https(cls, address: IPv4Address | str, port: int) -> Urls:
        return cls(https_base(address, port))

    @property
    def secure(self) -> bool:
        return self.base.startswith("https://")


@dataclass(frozen=True)
class StaticUrls:
    """URLs inside a static store directory (`build-image`): the kernel is `kernel`, the
    generation's initrds are one concatenated file `initrd`; there is no server to report to."""

    def artifact(self, sha256: str, name: str) -> str:
        return "kernel" if name == "kernel" else "initrd"

    def events(self, mac: MacAddress) -> str | None:
        return None


def https_base(address: IPv4Address | str, port: int) -> str:
    """Where clients reach the HTTPS port (identity bundles), e.g. `https://192.168.1.10:8443`."""
    host = _url_host(address)
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def _url_host(address: IPv4Address | str) -> str:
    host = str(address)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True)
class BootFileNames:
    bios: str = "undionly.kpxe"
    uefi: str = "ipxe.efi"
    arm64: str | None = None
    # which of these names are netbootd's own iPXE build (HTTPS, trusting netbootd's CA, an
    # embedded chain to the host's HTTPS script): what an iPXE without HTTPS is handed
    https_ipxe: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Flag:
    """The role's re-provision flag (`name` or `name=value`) and whether this boot carries it."""

    word: str
    on: bool

    @property
    def name(self) -> str:
        return self.word.split("=", 1)[0]


class ArpResult(StrEnum):
    MATCH = "match"  # the requester's IP answered with the enrolled MAC, and nothing else did
    MISMATCH = "mismatch"  # some other MAC answered for that IP
    NO_ANSWER = "no-answer"  # we asked on the shared segment and nobody answered
    NOT_CHECKED = "not-checked"  # not on a shared L2 segment, disabled, or not possible


@dataclass(frozen=True)
class ArpCheck:
    result: ArpResult
    required: bool = False  # verify_arp = "always", or "auto" on a shared segment
    note: str = ""  # why it was not checked, or which MACs answered


ARP_NOT_CHECKED = ArpCheck(ArpResult.NOT_CHECKED)


@dataclass(frozen=True)
class Release:
    ok: bool
    reason: str


class FlagAction(StrEnum):
    NONE = "none"  # nothing armed (or failed earlier): no flag, nothing to record
    SERVE = "serve"  # this boot carries the flag; count it
    EXPIRE = "expire"  # the TTL passed: clear the arming and say so; no flag
    TRIP = "trip"  # the loop guard: N boots had the flag and none reported; mark failed, no flag


@dataclass(frozen=True)
class FlagDecision:
    action: FlagAction
    reason: str
    number: int = 0  # SERVE: this is flagged boot `number` of the arming's max_boots


class HostState(StrEnum):
    OK = "ok"  # nothing pending
    ARMED = "armed"  # re-provision armed, no boot has carried the flag yet
    PROVISIONING = "provisioning"  # boots carried the flag, no provisioned report yet
    EXPIRED = "expired"  # the TTL passed (the server clears it and records provision-expired)
    FAILED = "failed"  # the loop guard tripped


# -- the boot chain: transport, HTTP boot payload, Secure Boot ---------------------------------


class Transport(StrEnum):
    """How a role's hosts fetch everything after the firmware's first file."""

    HTTP = "http"
    HTTPS = "https"  # script, kernel, initrd, identity and events over HTTPS only


class HttpBoot(StrEnum):
    """What a UEFI HTTP(S) boot client (arch 16/19) is offered."""

    IPXE = "ipxe"  # an iPXE binary, which then fetches the host's script
    UKI = "uki"  # the host's unified kernel image (kernel + initrds + command line), no iPXE


class Loader(StrEnum):
    """What a UEFI HTTP(S) boot client of a UKI role runs before the UKI."""

    NONE = "none"  # the UKI itself: the firmware verifies it (netbootd's keys in db)
    # Debian's Microsoft-signed shim (the firmware verifies it against Microsoft's db), which
    # fetches the UKI as grubx64.efi from the same directory and verifies it against MokList
    SHIM = "shim"


SHIM_NAME = "shimx64.efi"  # what the proxyDHCP offer names: /uki/<mac>/shimx64.efi
SHIM_SECOND_STAGE = "grubx64.efi"  # shim's DEFAULT_LOADER: the host's per-boot UKI


class SecureBootRule(StrEnum):
    OFF = "off"  # served whatever the firmware's Secure Boot state
    REQUIRED = "required"  # refused (and audited) to a host whose firmware reports it off


class SecureBootState(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RoleChain:
    """A role's boot-chain settings (`netbootd role chain`); None: the configured default."""

    role: str
    transport: Transport | None = None
    http_boot: HttpBoot | None = None
    secure_boot: SecureBootRule = SecureBootRule.OFF
    loader: Loader | None = None


@dataclass(frozen=True)
class BootChain:
    """What the policy decided for one host's chain (`policy.boot_chain`)."""

    transport: Transport
    http_boot: HttpBoot
    secure_boot: SecureBootRule
    signed: bool  # UKIs are signed with netbootd's Secure Boot db key
    loader: Loader = Loader.NONE  # shim: HTTP boot gets shim, shim gets the UKI


@dataclass(frozen=True)
class ScriptInputs:
    """Everything the policy needs to write a host's iPXE script, gathered as values by
    `lookup.script_inputs` -- the one lookup both the HTTP adapter and `explain` call."""

    host: Host
    image: Image  # the generation it boots (its pin, or the role's current one)
    flag_word: str  # the role's re-provision flag, or the configured default
    arming: Provision | None  # its pending re-provision, if any
    identity: IdentityState | None  # its identity's generation and arming
    stem: StemCell  # its role's boot mode and what that mode needs
    server: str | None  # the address clients reach netbootd at (None: unknown here)
    machine_id: str | None = None  # its current identity's machine-id, if it has an identity
    # its latest hardware inventory, if it reported one
    inventory: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Lease:
    """What the proxyDHCP responder saw of a MAC's own DHCP exchange (leases.py): the address
    it used, when, and any other address the same MAC claimed within the window (a conflict)."""

    ip: str
    seen: float
    others: tuple[str, ...] = ()


@dataclass(frozen=True)
class BulkHost:
    """One host of a bulk enrollment (`enroll --from`), validated, with its new identity (key
    files written) when it gets one."""

    mac: MacAddress
    role: str
    hostname: str | None = None
    canon: str | None = None
    tags: tuple[str, ...] = ()
    identity: IdentityPublic | None = None
    rearm: bool = False  # a re-enrolled host's kept identity is armed again


class TokenScope(StrEnum):
    """What an admin-API bearer token may do: read (GET) or everything (admin)."""

    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiToken:
    """An admin-API bearer token's record (the token itself is never stored)."""

    id: int
    name: str
    scope: TokenScope
    created: float
    last_used: float | None = None
    revoked: float | None = None


def token_name(value: str) -> str:
    """An API token's name: like a tag (a-z, 0-9, '_', '.', '-'; up to 63 chars)."""
    v = value.strip().lower() if isinstance(value, str) else ""
    if not _TAG.fullmatch(v):
        raise InvalidInput(f"not a valid token name: {value!r} (a-z, 0-9, '_', '.', '-'; up to "
                           "63 characters)")
    return v
