"""Plain value types shared by every layer. No I/O here.

A MAC is a `MacAddress` past the edge (CLI argument, HTTP path, DHCP chaddr), never a raw string.
Every value that can end up inside an iPXE script or on a kernel command line is validated here,
once, so templates can trust what they are given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address

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
    HTTP = "http"  # 16: x86-64 UEFI HTTP boot -> ipxe.efi by URL

    @classmethod
    def from_client_arch(cls, code: int) -> Arch | None:
        """RFC 4578 / IANA processor architecture type -> Arch; None for what we cannot boot."""
        return _ARCH_CODES.get(code)


_ARCH_CODES = {0: Arch.BIOS, 6: Arch.UEFI, 7: Arch.UEFI, 9: Arch.UEFI, 11: Arch.ARM64, 16: Arch.HTTP}


@dataclass(frozen=True)
class BootClient:
    """Who is asking: the facts the policy needs, extracted from a DHCP request (or `explain`)."""

    mac: MacAddress
    arch: Arch
    ipxe: bool = False  # iPXE already runs (user-class "iPXE" or option 175): give it the script URL


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
    return v


def canon_name(value: str) -> str:
    """A fully qualified canonical host name: dot-separated DNS labels, at most 253 chars."""
    v = value.strip().lower().rstrip(".") if isinstance(value, str) else ""
    if not v or len(v) > 253 or not all(_DNS_LABEL.fullmatch(p) for p in v.split(".")):
        raise InvalidInput(f"not a valid canonical name: {value!r} (e.g. web1.rack2.example.org)")
    return v


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
    """One kernel command line word, `name` or `name=value` (e.g. `homelab.provision_disks=true`)."""
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
        return self.hostname or self.mac.hyphen


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

    The private keys live only in files under `<state>/identity/` (mode 0600); see keystore.py.
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


@dataclass(frozen=True)
class IdentityOffer:
    """What an armed host's kernel command line carries: where to fetch its identity (a
    single-use per-boot token URL on the HTTPS port) and the server key's pin for curl."""

    url: str  # https://<server>:<port>/identity/<token>
    pin: str  # sha256//<base64 of the SHA-256 of the server certificate's SubjectPublicKeyInfo>
