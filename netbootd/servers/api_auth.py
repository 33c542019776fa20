"""Who may use the admin API: bearer tokens (`netbootd api-token create --name N
[--read-only]`), over HTTPS only, and CSRF protection for what a browser asks.

- Plain HTTP: 403 before anything else (the token would have crossed the LAN in clear).
- No or unknown/revoked token: 401 with `WWW-Authenticate: Bearer`; a read-only token on a write:
  403. Both audited through the guard (`api-denied`, one row per peer and reason per interval).
- A request a browser sends (it carries Origin or Sec-Fetch-Site) that writes must come from
  this server's own origin and carry X-CSRF-Token: the HMAC of its bearer token's digest that
  GET /api/v1/whoami hands out (tokens.csrf). A page elsewhere can neither read that nor add the
  header without a CORS preflight netbootd never grants.
Tokens are compared by their SHA-256 (the store keeps nothing else); log lines name the token's
name, never the token.
"""

from __future__ import annotations

import hmac
import logging
import time

from aiohttp import web

from netbootd import tokens
from netbootd.fmt import printable
from netbootd.model import ApiToken, TokenScope
from netbootd.servers.web import GUARD, IDENTITY, STORE, Audit

log = logging.getLogger("netbootd.api")

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _deny(request: web.Request, status: int, reason: str) -> web.HTTPException:
    now = time.time()
    row = Audit("api-denied", None, request.remote,
                {"reason": reason, "method": request.method, "path": request.path[:200]})
    n = request.app[GUARD].audit(request.app[STORE], ("api", request.remote, reason), now, row)
    if n is not None:
        log.warning("peer=%s api %s %s refused (%d): %s", printable(request.remote),
                    request.method, printable(request.path[:120]), status, reason)
    body = f'{{"error": "{reason}"}}'
    headers = {"WWW-Authenticate": 'Bearer realm="netbootd"'} if status == 401 else {}
    cls = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden}[status]
    return cls(text=body, content_type="application/json", headers=headers)


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorize(request: web.Request, need: TokenScope) -> ApiToken:
    """The caller's token if it may do this; otherwise raises the 401/403 (audited)."""
    if not request.secure:
        raise _deny(request, 403, "the admin API is served over HTTPS only")
    raw = bearer(request)
    if raw is None:
        raise _deny(request, 401, "no bearer token")
    digest = tokens.digest(raw)
    tok = request.app[STORE].api_token_by_digest(digest)
    if tok is None:
        raise _deny(request, 401, "unknown or revoked token")
    if need is TokenScope.ADMIN and tok.scope is not TokenScope.ADMIN:
        raise _deny(request, 403, f"token {tok.name!r} is read-only")
    if request.method in WRITES and _from_browser(request):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            raise _deny(request, 403, "cross-origin request")
        want = tokens.csrf(request.app[IDENTITY].secret, digest)
        if not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), want):
            raise _deny(request, 403, "missing or wrong X-CSRF-Token")
    return tok


def csrf_for(request: web.Request) -> str:
    raw = bearer(request) or ""
    return tokens.csrf(request.app[IDENTITY].secret, tokens.digest(raw))


def _from_browser(request: web.Request) -> bool:
    return "Origin" in request.headers or "Sec-Fetch-Site" in request.headers
