"""Per-boot tokens: `base64url(mac[6] | nonce[16] | tag[16])`, tag = HMAC-SHA256(secret, domain |
mac | nonce)[:16]. Pure (the secret and the nonce are passed in).

A token names the host it was issued for (so a refused token is audited against that host) and a
tampered one is told apart from one netbootd never issued; the store keeps only its SHA-256. Two
purposes, told apart by the HMAC's domain so neither passes for the other: the single-use
identity token (`GET /identity/<token>`), and the boot token every served script carries
(`netbootd.boot=`), which the host sends back with its reports; the first 12 hex digits of its
SHA-256 are the boot's public id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

from netbootd.errors import InvalidInput
from netbootd.model import MacAddress

TOKEN_BYTES = 6 + 16 + 16
TOKEN_CHARS = 51
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}")
_TOKEN_DOMAIN = b"netbootd identity token v1\0"
_BOOT_DOMAIN = b"netbootd boot token v1\0"
BOOT_ID_CHARS = 12


class TokenPurpose(StrEnum):
    IDENTITY = "identity"  # GET /identity/<token>: one delivery of the identity bundle
    BOOT = "boot"  # netbootd.boot=<token>: names one boot; `provisioned` must carry it


class TokenStatus(StrEnum):
    VALID = "valid"
    MALFORMED = "malformed"
    TAMPERED = "tampered"


@dataclass(frozen=True)
class TokenClaim:
    status: TokenStatus
    mac: MacAddress | None = None  # for TAMPERED: the MAC it claims (unauthenticated)
    digest: str | None = None  # sha256 hex of the token text, the store's key

    @property
    def short(self) -> str:
        """A short, non-secret name for logs and events (a prefix of the digest)."""
        return self.digest[:12] if self.digest else "-"


def _tag(secret: bytes, body: bytes, purpose: TokenPurpose = TokenPurpose.IDENTITY) -> bytes:
    domain = _BOOT_DOMAIN if purpose is TokenPurpose.BOOT else _TOKEN_DOMAIN
    return hmac.new(secret, domain + body, hashlib.sha256).digest()[:16]


def mint(
    secret: bytes, mac: MacAddress, nonce: bytes, purpose: TokenPurpose = TokenPurpose.IDENTITY
) -> str:
    if len(nonce) != 16 or len(secret) < 32:
        raise InvalidInput("a token needs a 16-byte nonce and a 32-byte secret")
    body = mac.packed + nonce
    return base64.urlsafe_b64encode(body + _tag(secret, body, purpose)).decode().rstrip("=")


def boot_id(digest: str) -> str:
    """The public id of a boot: a prefix of its boot token's SHA-256 (never the token)."""
    return digest[:BOOT_ID_CHARS]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse(
    secret: bytes, token: str, purpose: TokenPurpose = TokenPurpose.IDENTITY
) -> TokenClaim:
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return TokenClaim(TokenStatus.MALFORMED)
    raw = base64.urlsafe_b64decode(token + "=")
    # 51 characters carry 306 bits for 304: a token is only ever spelled one way.
    if len(raw) != TOKEN_BYTES or base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        return TokenClaim(TokenStatus.MALFORMED)
    body, tag = raw[:22], raw[22:]
    mac = MacAddress(body[:6])
    if not hmac.compare_digest(tag, _tag(secret, body, purpose)):
        return TokenClaim(TokenStatus.TAMPERED, mac, digest(token))
    return TokenClaim(TokenStatus.VALID, mac, digest(token))
