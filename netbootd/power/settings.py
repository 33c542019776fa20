"""A host's BMC settings as values: what `bmc set` validated and the store keeps (`bmcs`,
migration 9). Pure: no sockets, no files. The password is not here: it lives in its own 0600
file (power/credentials.py) and is read only by the code that talks to the BMC."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from netbootd.errors import InvalidInput
from netbootd.model import MacAddress

IPMI_PORT = 623
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces (IPMI: 16 bytes)


class BmcKind(StrEnum):
    IPMI = "ipmi"
    REDFISH = "redfish"


class PowerAction(StrEnum):
    STATUS = "status"
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    BOOT_ONCE_PXE = "boot-once-pxe"


@dataclass(frozen=True)
class BmcSettings:
    """Where a host's BMC is and who netbootd logs in as. `address` is an IPMI host (IPv4,
    [IPv6] or DNS name) or a Redfish URL; `port` is IPMI's UDP port (None for Redfish)."""

    mac: MacAddress
    kind: BmcKind
    address: str
    port: int | None
    user: str
    ca_file: str | None = None  # Redfish over HTTPS: verify against this CA (default: system)
    insecure: bool = False  # Redfish over HTTPS: do not verify the certificate
    changed: float = 0.0

    @property
    def target(self) -> str:
        """How the BMC is named in messages and events (never with a password)."""
        if self.kind is BmcKind.REDFISH:
            return self.address
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"ipmi://{host}:{self.port}"


def _host(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise InvalidInput(f"{what}: {text!r} is not an IP address or host name")
    return text.lower()


def parse_ipmi(text: str) -> tuple[str, int]:
    """`ADDR[:PORT]` -> (host, port); `[v6]:port` for IPv6 with a port."""
    t = text.strip()
    port = IPMI_PORT
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidInput(f"--ipmi: {text!r}: write IPv6 as [ADDR] or [ADDR]:PORT")
        p = rest[1:] if rest else ""
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
    else:
        host, p = t, ""  # a bare IPv6 address or a name
    if p:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise InvalidInput(f"--ipmi: {text!r}: the port must be 1..65535")
        port = int(p)
    return _host(host, "--ipmi"), port


def parse_redfish(text: str) -> str:
    """A Redfish URL: http(s)://host[:port][/redfish/v1[/Systems/<id>]]; no credentials in it
    (they would be printed back)."""
    t = text.strip().rstrip("/")
    try:
        u = urlsplit(t)
        port = u.port
    except ValueError:
        raise InvalidInput(f"--redfish: {text!r} is not a URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InvalidInput(f"--redfish: {text!r}: give http(s)://HOST[:PORT][/redfish/v1/...]")
    if u.username is not None or u.password is not None:
        raise InvalidInput("--redfish: no user or password in the URL: use --user and "
                           "--password-file")
    if u.query or u.fragment:
        raise InvalidInput(f"--redfish: {text!r}: no query or fragment")
    _host(u.hostname, "--redfish")
    path = u.path or ""
    if path and not path.startswith("/redfish/v1"):
        raise InvalidInput(f"--redfish: {text!r}: the path must start with /redfish/v1")
    netloc = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    if port is not None:
        netloc += f":{port}"
    return f"{u.scheme}://{netloc}{path}"


def redfish_parts(url: str) -> tuple[str, str | None]:
    """(the service's base URL, the system's path under /redfish/v1/Systems/ or None)."""
    u = urlsplit(url)
    base = f"{u.scheme}://{u.netloc}"
    m = re.match(r"^/redfish/v1/Systems/([^/]+)$", u.path)
    return base, (f"/redfish/v1/Systems/{m.group(1)}" if m else None)


def user(text: str) -> str:
    if not _USER.match(text):
        raise InvalidInput("--user: 1..64 printable ASCII characters, no spaces")
    return text
