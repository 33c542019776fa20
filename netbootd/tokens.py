"""Per-boot tokens, HMAC-SHA256 with netbootd's secret. Pure (secret, nonce and clock passed in).

Two kinds, told apart by the HMAC's domain so neither passes for the other:

- the **identity token** (`GET /identity/<token>`, single use): `base64url(mac[6] | nonce[16] |
  tag[16])`, 51 characters. The store keeps its SHA-256 with the address it is bound to.
- the **boot token** (`netbootd.boot=`, sent back with every report of that boot):
  `base64url(mac[6] | ipv4[4] | issued[4] | nonce[12] | tag[16])`, 56 characters. It is bound
  to the MAC and to the address the boot's own DHCP exchange used (or, with no proxyDHCP, the
  address that fetched the script) and to the time it was issued, all under the HMAC: nothing
  is stored for it, and a report is accepted only from that address within the token's
  lifetime (`policy.report_token`). The first 12 hex digits of its SHA-256 are the boot's
  public id.

A token names the host it was issued for (so a refused token is audited against that host) and
a tampered one is told apart from one netbootd never issued. Each token is spelled one way only
(no base64 padding slack), so its digest names it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from netbootd.errors import InvalidInput
from netbootd.model import MacAddress

TOKEN_BYTES = 6 + 16 + 16  # identity token
TOKEN_CHARS = 51
BOOT_TOKEN_BYTES = 6 + 4 + 4 + 12 + 16
BOOT_TOKEN_CHARS = 56
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_DOMAIN = b"netbootd identity token v1\0"
_BOOT_DOMAIN = b"netbootd boot token v2\0"
BOOT_ID_CHARS = 12


class TokenPurpose(StrEnum):
    IDENTITY = "identity"  # GET /identity/<token>: one delivery of the identity bundle
    BOOT = "boot"  # netbootd.boot=<token>: names one boot; its reports must carry it


class TokenStatus(StrEnum):
    VALID = "valid"
    MALFORMED = "malformed"
    TAMPERED = "tampered"


@dataclass(frozen=True)
class TokenClaim:
    status: TokenStatus
    mac: MacAddress | None = None  # for TAMPERED: the MAC it claims (unauthenticated)
    digest: str | None = None  # sha256 hex of the token text, the store's key
    ip: str | None = None  # boot tokens: the address the boot is bound to
    issued: float | None = None  # boot tokens: when it was issued (unix seconds)

    @property
    def short(self) -> str:
        """A short, non-secret name for logs and events (a prefix of the digest)."""
        return self.digest[:12] if self.digest else "-"


def _tag(secret: bytes, body: bytes, purpose: TokenPurpose) -> bytes:
    domain = _BOOT_DOMAIN if purpose is TokenPurpose.BOOT else _TOKEN_DOMAIN
    return hmac.new(secret, domain + body, hashlib.sha256).digest()[:16]


def _encode(secret: bytes, body: bytes, purpose: TokenPurpose) -> str:
    if len(secret) < 32:
        raise InvalidInput("a token needs a 32-byte secret")
    return base64.urlsafe_b64encode(body + _tag(secret, body, purpose)).decode().rstrip("=")


def mint(secret: bytes, mac: MacAddress, nonce: bytes) -> str:
    """An identity token for `mac` (its address binding is kept by the store)."""
    if len(nonce) != 16:
        raise InvalidInput("an identity token needs a 16-byte nonce")
    return _encode(secret, mac.packed + nonce, TokenPurpose.IDENTITY)


def mint_boot(secret: bytes, mac: MacAddress, ip: IPv4Address | str, issued: float,
              nonce: bytes) -> str:
    """A boot token for `mac`, bound to `ip` and issued at `issued` (unix seconds)."""
    if len(nonce) < 12:
        raise InvalidInput("a boot token needs a 12-byte nonce")
    body = (mac.packed + IPv4Address(ip).packed + struct.pack("!I", int(issued) & 0xFFFFFFFF)
            + nonce[:12])
    return _encode(secret, body, TokenPurpose.BOOT)


def boot_id(digest: str) -> str:
    """The public id of a boot: a prefix of its boot token's SHA-256 (never the token)."""
    return digest[:BOOT_ID_CHARS]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _decode(token: object, size: int) -> bytes | None:
    if not isinstance(token, str) or len(token) > 100 or not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    if len(raw) != size or base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        return None
    return raw


def parse(secret: bytes, token: object) -> TokenClaim:
    """An identity token's claim (MALFORMED for anything that is not one)."""
    raw = _decode(token, TOKEN_BYTES)
    if raw is None:
        return TokenClaim(TokenStatus.MALFORMED)
    assert isinstance(token, str)
    body, tag = raw[:22], raw[22:]
    mac = MacAddress(body[:6])
    ok = hmac.compare_digest(tag, _tag(secret, body, TokenPurpose.IDENTITY))
    return TokenClaim(TokenStatus.VALID if ok else TokenStatus.TAMPERED, mac, digest(token))


def parse_boot(secret: bytes, token: object) -> TokenClaim:
    """A boot token's claim: its MAC, bound address and issue time (authenticated only when
    VALID)."""
    raw = _decode(token, BOOT_TOKEN_BYTES)
    if raw is None:
        return TokenClaim(TokenStatus.MALFORMED)
    assert isinstance(token, str)
    body, tag = raw[:26], raw[26:]
    mac = MacAddress(body[:6])
    ip = str(IPv4Address(body[6:10]))
    (issued,) = struct.unpack("!I", body[10:14])
    ok = hmac.compare_digest(tag, _tag(secret, body, TokenPurpose.BOOT))
    return TokenClaim(TokenStatus.VALID if ok else TokenStatus.TAMPERED, mac, digest(token),
                      ip, float(issued))


# -- admin API bearer tokens: 256 random bits; the store keeps only their SHA-256 (digest())
API_PREFIX = "nbd_"


def api_token(raw: bytes) -> str:
    """An admin-API bearer token from 32 random bytes (`nbd_` + 43 base64url characters)."""
    if len(raw) != 32:
        raise InvalidInput("an API token is made from 32 random bytes")
    return API_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def csrf(secret: bytes, api_digest: str) -> str:
    """The dashboard's CSRF token for one bearer token: an HMAC only this server can make,
    sent back in X-CSRF-Token on every action a browser asks for."""
    return hmac.new(secret, b"netbootd csrf v1|" + api_digest.encode(),
                    hashlib.sha256).hexdigest()[:32]
