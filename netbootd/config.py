"""Configuration: one TOML file validated by pydantic, plus CLI/env overrides. Validated once.

Every field has a default, so netbootd runs with no file at all (the "embedded default").
A bad file fails with a message naming the field, e.g. `http.port: Input should be ...`.
"""

from __future__ import annotations

import os
import re
import tomllib
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from netbootd.errors import ConfigError, InvalidInput
from netbootd.model import DEFAULT_PROVISION_FLAG, canon_name, disk_size, duration, provision_flag

SYSTEM_STATE_DIR = Path("/var/lib/netbootd")
DEBIAN_IPXE_DIR = Path("/usr/lib/ipxe")


def _repo_templates() -> Path:
    packaged = Path(__file__).parent / "_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "ipxe-templates"


def _duration(v: object) -> object:
    """Config durations take what the CLI takes (model.duration): `ttl = "2h"` or seconds."""
    if isinstance(v, str):
        try:
            return duration(v, zero=True)
        except InvalidInput as e:
            raise ValueError(str(e)) from None
    return v


Seconds = Annotated[int, BeforeValidator(_duration)]
FSeconds = Annotated[float, BeforeValidator(_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DhcpConfig(_Section):
    enabled: bool = True
    port: int = Field(67, ge=0, le=65535)
    pxe_port: int = Field(4011, ge=0, le=65535)
    listen: IPv4Address = IPv4Address("0.0.0.0")
    # ignore: an unknown MAC gets silence; discover: a discovery boot (the [discovery] role's
    # image) that reports the machine's inventory (README "Discovery")
    unknown_policy: Literal["ignore", "discover"] = "ignore"


class TftpConfig(_Section):
    enabled: bool = True
    port: int = Field(69, ge=0, le=65535)
    listen: IPv4Address = IPv4Address("0.0.0.0")
    root: Path | None = None  # default: Debian's /usr/lib/ipxe when present
    # transfers at once, and transfers + waiting requests per client address (servers/tftp.py)
    max_transfers: int = Field(256, ge=1, le=65536)
    max_per_source: int = Field(8, ge=1, le=65536)


class HttpConfig(_Section):
    """The HTTP port, and the connection limits and timeouts of HTTP and HTTPS together
    (servers/connlimits.py; README "Limits")."""

    port: int = Field(80, ge=0, le=65535)
    listen: str = "0.0.0.0"
    # Connections open at once, HTTP and HTTPS together, and per source address; a newcomer
    # over a limit takes the place of the oldest idle connection, or is refused if none is.
    max_connections: int = Field(1024, ge=1, le=1_000_000)
    max_connections_per_client: int = Field(128, ge=1, le=1_000_000)
    # (durations: "10s" or seconds, like every duration in the config)
    header_timeout: FSeconds = Field(10.0, gt=0, le=3600)  # first byte -> end of head; TLS
    body_timeout: FSeconds = Field(10.0, gt=0, le=3600)  # end of head -> end of body
    idle_timeout: FSeconds = Field(15.0, gt=0, le=86400)  # waiting for the next request
    send_timeout: FSeconds = Field(60.0, gt=0, le=3600)  # sent, unacknowledged: a stalled reader
    log_interval: FSeconds = Field(60.0, gt=0, le=86400)  # one summary line per interval


def _default_https_port() -> int:
    """443 when we may bind it (root), else 8443 -- like `make run` picks 8080 for HTTP."""
    return 443 if os.geteuid() == 0 else 8443


class HttpsConfig(_Section):
    """The HTTPS port: identity bundles are served here only (and the rest of the HTTP API)."""

    enabled: bool = True
    port: int = Field(default_factory=_default_https_port, ge=0, le=65535)
    listen: str = "0.0.0.0"
    # DNS names the certificate carries besides this host's name (URLs that name the server)
    names: list[str] = []

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        try:
            return [canon_name(n) for n in v]
        except InvalidInput as e:
            raise ValueError(str(e)) from None


class BootChainConfig(_Section):
    """The boot chain's defaults; a role overrides them (`netbootd role chain`)."""

    transport: Literal["http", "https"] = "http"  # https: nothing after the firmware in clear
    http_boot: Literal["ipxe", "uki"] = "ipxe"  # what UEFI HTTP(S) boot clients are offered
    uki_stub: Path = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # systemd-boot-efi
    uki_stub_arm64: Path = Path("/usr/lib/systemd/boot/efi/linuxaa64.efi.stub")
    # none: HTTP boot clients of UKI roles get the UKI; shim: Debian's Microsoft-signed shim
    # first, which loads the UKI (for firmware that keeps Microsoft's keys; netbootd's db
    # certificate enrolled as a MOK)
    loader: Literal["none", "shim"] = "none"
    shim: Path = Path("/usr/lib/shim/shimx64.efi.signed")  # Debian shim-signed; served as is


class IdentityConfig(_Section):
    token_ttl: Seconds = Field(600, ge=1, le=86400)  # seconds a per-boot token stays valid
    verify_arp: Literal["auto", "always", "never"] = "auto"
    # how often `serve` makes RSA host keys bulk enrollment left pending (0: only on first
    # need, when a bundle is delivered)
    rsa_fill_interval: FSeconds = Field(5.0, ge=0)


class DiscoveryConfig(_Section):
    """What unknown machines boot under `dhcp.unknown_policy = "discover"`, and the bounds of
    what their reports may store."""

    role: str = "discovery"  # the role whose current generation is the discovery image
    action: Literal["poweroff", "wait", "reboot"] = "poweroff"  # after the report
    max_records: int = Field(1024, ge=1, le=1_000_000)  # discovered machines kept at once
    expire: Seconds = Field(7 * 86400, ge=60)  # a discovery not seen again for this long goes
    keep_inventories: int = Field(20, ge=1, le=1000)  # distinct inventories kept per host
    max_report: int = Field(512 * 1024, ge=4096, le=16 * 1024 * 1024)  # bytes of one report


class SecurityConfig(_Section):
    """What binds a boot to its machine (README "Security")."""

    # dhcp: a script fetch counts as a MAC's boot (mints its token, counts a re-provision boot,
    # offers its identity) only from the address that MAC's own DHCP exchange used, seen by the
    # proxyDHCP responder within dhcp_window; requester: from whoever fetches it (the only
    # choice without proxyDHCP); auto: dhcp when proxyDHCP runs, else requester.
    boot_binding: Literal["auto", "dhcp", "requester"] = "auto"
    dhcp_window: Seconds = Field(300, ge=10, le=86400)  # seconds a DHCP exchange binds its MAC
    boot_token_ttl: Seconds = Field(86400, ge=60, le=30 * 86400)  # reports accepted this long
    # at most one audit row per key (MAC, address, token) per this, the rest counted in a
    # summary row; 0: a row for every unauthenticated request
    unauthenticated_interval: FSeconds = Field(60, ge=0, le=86400)


class RetentionConfig(_Section):
    """How long the audit trail is kept (`serve` sweeps every `interval` seconds)."""

    events_days: int = Field(90, ge=0)  # events older than this go; 0: kept forever
    events_per_host: int = Field(100_000, ge=100)  # at most this many per host, newest kept
    unattributed_events: int = Field(100_000, ge=100)  # events that name no enrolled host
    interval: Seconds = Field(3600, ge=10)


class ProvisionConfig(_Section):
    """One-shot re-provisioning (`netbootd reprovision`); ttl and max_boots are the defaults a
    re-provision is armed with (fixed in its row then), flag the kernel parameter roles get
    unless they name their own (`netbootd role set <role> --provision-flag ...`)."""

    flag: str = DEFAULT_PROVISION_FLAG
    ttl: Seconds = Field(86400, ge=60, le=90 * 86400)  # seconds the flag stays armed at most
    max_boots: int = Field(3, ge=1, le=100)  # the loop guard: boots with the flag, no report

    @field_validator("flag")
    @classmethod
    def _flag(cls, v: str) -> str:
        try:
            return provision_flag(v)
        except InvalidInput as e:
            raise ValueError(str(e)) from None


class PowerConfig(_Section):
    """[power]: how long netbootd waits for a host's BMC (power/control.py)."""

    timeout: FSeconds = Field(10.0, gt=0, le=300)  # seconds per attempt
    retries: int = Field(1, ge=0, le=10)  # more attempts when a BMC did not answer


class NfsConfig(_Section):
    """The NFS export tree of stem-cell hosts (`nfs-store` roles): `<root>/store/` (every synced
    role's closure, one directory per store path, exported read-only) and `<root>/hosts/<mac>/`
    (one writable directory per host)."""

    root: Path | None = None  # default: <state_dir>/nfs
    server: IPv4Address | None = None  # what hosts mount from; default: the advertised address
    clients: list[str] = ["*"]  # who may mount (exports(5) / ganesha Clients syntax)
    upper: Literal["tmpfs", "host"] = "tmpfs"  # the store overlay's upper layer (see README)
    ganesha_bind: IPv4Address | None = None  # Bind_addr in the rendered ganesha.conf


class IscsiConfig(_Section):
    """iSCSI stem-cell hosts: gold images, per-host clones and tgtd targets."""

    dir: Path | None = None  # default: <state_dir>/iscsi (gold/ and hosts/ live here)
    # targets: <base>:<mac>, initiators: <base>:host.<mac>
    iqn_base: str = "iqn.2025-01.org.netbootd"
    portal: str | None = None  # "address[:port]" hosts log in to; default: the advertised address
    clone: Literal["auto", "reflink", "qcow2", "copy"] = "auto"
    data_size: str = "1G"  # a host's empty data LUN, unless its role says otherwise
    tgtd_control_port: int = Field(0, ge=0, le=32767)  # tgtadm -C (tgtd accepts 0..32767)
    reconcile_interval: FSeconds = Field(30.0, ge=0)  # `serve` re-applies targets; 0: off
    destroy_guard: Seconds = Field(86400, ge=0)  # `iscsi destroy` refuses within this of a boot

    @field_validator("iqn_base")
    @classmethod
    def _iqn(cls, v: str) -> str:
        if not re.fullmatch(r"iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*", v):
            raise ValueError("an IQN prefix like iqn.2025-01.org.example (no ':' part)")
        return v

    @field_validator("data_size")
    @classmethod
    def _size(cls, v: str) -> str:
        try:
            disk_size(v)
        except InvalidInput as e:
            raise ValueError(str(e)) from None
        return v


class BootFiles(_Section):
    """iPXE binaries, by name inside the TFTP root, handed to firmware PXE clients."""

    bios: str = "undionly.kpxe"
    uefi: str = "ipxe.efi"  # e.g. "snponly.efi"
    arm64: str | None = None  # e.g. "arm64/snponly.efi"; None: arm64 clients are not answered

    @field_validator("bios", "uefi", "arm64")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.startswith("/") or ".." in Path(v).parts or "\n" in v):
            raise ValueError("must be a relative path inside the TFTP root")
        return v


class Config(_Section):
    state_dir: Path = SYSTEM_STATE_DIR
    interface: str | None = None
    advertise_address: IPv4Address | None = None
    templates_dir: Path = Field(default_factory=_repo_templates)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: journal (no timestamp, <N> priorities) under systemd, else text; json: one object
    # per line (logfmt.py)
    log_format: Literal["auto", "text", "journal", "json"] = "auto"
    dhcp: DhcpConfig = DhcpConfig()
    tftp: TftpConfig = TftpConfig()
    http: HttpConfig = HttpConfig()
    https: HttpsConfig = Field(default_factory=HttpsConfig)
    identity: IdentityConfig = IdentityConfig()
    provision: ProvisionConfig = ProvisionConfig()
    power: PowerConfig = PowerConfig()
    security: SecurityConfig = SecurityConfig()
    retention: RetentionConfig = RetentionConfig()
    nfs: NfsConfig = NfsConfig()
    iscsi: IscsiConfig = IscsiConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    boot_files: BootFiles = BootFiles()
    boot: BootChainConfig = BootChainConfig()

    @property
    def boot_file_names(self) -> tuple[str, ...]:
        """The configured iPXE binaries: the only files served by name over HTTP, and the only
        symlinks in the TFTP root allowed to lead out of it (Debian's ipxe.efi does)."""
        b = self.boot_files
        return tuple(n for n in (b.bios, b.uefi, b.arm64) if n)

    @property
    def binds_to_dhcp(self) -> bool:
        """Does a boot bind to the MAC's own DHCP exchange (security.boot_binding)?"""
        mode = self.security.boot_binding
        return mode == "dhcp" or (mode == "auto" and self.dhcp.enabled)

    @property
    def nfs_root(self) -> Path:
        return self.nfs.root if self.nfs.root is not None else self.state_dir / "nfs"

    @property
    def iscsi_dir(self) -> Path:
        return self.iscsi.dir if self.iscsi.dir is not None else self.state_dir / "iscsi"

    @property
    def tftp_root(self) -> Path | None:
        if self.tftp.root is not None:
            return self.tftp.root
        return DEBIAN_IPXE_DIR if DEBIAN_IPXE_DIR.is_dir() else None


def _format(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{origin}: {where}: {e['msg']}")
    return "\n".join(lines)


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (if any), apply dotted overrides (`http.port` -> 8080), validate."""
    data: dict[str, Any] = {}
    origin = "embedded default"
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    env_state = os.environ.get("NETBOOTD_STATE_DIR")
    if env_state:
        data["state_dir"] = env_state
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{origin}: {p} must be a table")
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, origin)) from None
