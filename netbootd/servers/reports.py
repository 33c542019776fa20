"""`POST /api/v1/hosts/<mac>/events`: what a booted host reports (booted, provisioned, ...).

A report changes something only when it is authenticated (`policy.report_token`): a valid boot
token of that host, presented from the address the boot is bound to, within its lifetime. The
rest changes nothing and is audited through the guard's limiters (one row per key and interval).
"""

from __future__ import annotations

import json
import logging

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from netbootd import policy, tokens
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import printable
from netbootd.model import MacAddress
from netbootd.servers.web import (
    CFG,
    GUARD,
    IDENTITY,
    MAX_EVENT_BODY,
    STORE,
    Audit,
    Guard,
    mac_of,
)
from netbootd.store import Store
from netbootd.tokens import TokenStatus

log = logging.getLogger("netbootd.http")


async def host_event(request: web.Request) -> web.Response:
    peer = request.remote
    try:
        mac = mac_of(request)
    except InvalidInput as e:
        return web.json_response({"error": str(e)}, status=400)
    if request.content_length is not None and request.content_length > MAX_EVENT_BODY:
        return web.json_response({"error": "body too large"}, status=413)
    try:
        # the whole body (it may come in several segments), at most client_max_size
        # (MAX_EVENT_BODY): more is answered 413 by aiohttp
        raw = await request.read()
    except (ConnectionError, aiohttp.ClientPayloadError, HttpProcessingError):
        # the client hung up half-way through its body: a peer fault, nobody to answer
        log.debug("mac=%s peer=%s went away while sending a report", mac,
                  printable(request.remote))
        return web.json_response({"error": "incomplete body"}, status=400)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("event"), str):
        return web.json_response({"error": 'expected {"event": "<name>"}'}, status=400)
    event = body["event"]
    if event not in policy.HOST_EVENTS:
        return web.json_response(
            {"error": f"unknown event {event[:40]!r}", "known": sorted(policy.HOST_EVENTS)},
            status=400,
        )
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        return web.json_response({"error": "token must be a string"}, status=400)
    store, guard, cfg = request.app[STORE], request.app[GUARD], request.app[CFG]
    now = request.app[IDENTITY].clock()
    try:
        if store.host(mac) is None:
            log.debug("mac=%s peer=%s event %s for a host that is not enrolled", mac,
                      printable(peer), event)
            return web.json_response({"error": "host not enrolled"}, status=404)
        claim = None if token is None else tokens.parse_boot(request.app[IDENTITY].secret, token)
        verdict = policy.report_token(claim, mac, peer, now, cfg.security.boot_token_ttl)
        if not verdict.ok:
            return _unaccepted(store, guard, mac, peer, event, claim, verdict.reason, now)
        assert claim is not None and claim.digest is not None
        boot = tokens.boot_id(claim.digest)
        detail = _detail(body)
        if event == "provisioned":
            decision = store.report_provisioned(mac, claim.digest, boot, peer, now,
                                                policy.provision_report, detail)
            if not decision.ok:
                log.warning("mac=%s peer=%s boot=%s provisioned refused: %s", mac, peer,
                            boot, decision.reason)
                return _refused_event()
            log.info("mac=%s peer=%s boot=%s provisioned: re-provision flag cleared (%s)",
                     mac, peer, boot, decision.reason)
        else:
            store.record_event(mac, event, peer, detail, boot)
            log.info("mac=%s peer=%s boot=%s event %s", mac, peer, boot, event)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot record event %s: %s", mac, printable(peer), event, e)
        return web.json_response({"error": "server error"}, status=500)
    return web.json_response({"ok": True, "event": event, "boot": boot})


MAX_DETAIL_KEYS = 16


MAX_DETAIL_VALUE = 256


def _detail(body: dict[str, object]) -> dict[str, object]:
    """What an authenticated report may add to its event row: a few short string or integer
    fields (a kernel version, a fingerprint, a marker), never a blob."""
    out: dict[str, object] = {}
    for k, v in body.items():
        if k in ("event", "token") or not isinstance(v, str | int) or isinstance(v, bool):
            continue
        if len(out) >= MAX_DETAIL_KEYS:
            break
        out[str(k)[:40]] = v[:MAX_DETAIL_VALUE] if isinstance(v, str) else v
    return out


def _unaccepted(store: Store, guard: Guard, mac: MacAddress, peer: str | None, event: str,
                claim: tokens.TokenClaim | None, reason: str, now: float) -> web.Response:
    """A report that is not authenticated changes nothing. It is audited -- at most one row per
    MAC per interval, counting the others (a flood cannot grow the database) -- as
    `unauthenticated-report` when it carried no token (401), `denied` when its token was
    refused (403)."""
    if claim is None:
        row = Audit("unauthenticated-report", mac, peer, {"event": event, "reason": reason})
        n = guard.audit(store, ("unauthenticated", mac), now, row)
        if n is not None:
            log.info("mac=%s peer=%s %d report(s) without a per-boot token: nothing changed",
                     mac, printable(peer), n)
        return web.json_response(
            {"error": "no per-boot token: nothing changed (recorded as unauthenticated)"},
            status=401)
    # Per MAC and per token (garbage tokens share one key: their status), so each real
    # token's refusal is seen while a flood still writes one row per interval.
    key = claim.digest if claim.status is TokenStatus.VALID else str(claim.status)
    row = Audit("denied", mac, peer, {"event": event, "reason": reason, "token": claim.short})
    n = guard.audit(store, ("report", mac, key), now, row)
    if n is not None:
        log.warning("mac=%s peer=%s event %s refused: %s (%d in this interval)", mac,
                    printable(peer), event, reason, n)
    return _refused_event()


def _refused_event() -> web.Response:
    return web.json_response(
        {"error": "refused; the reason is in `netbootd events` on the server"}, status=403
    )
