"""Discovery boots and inventory reports (unknown_policy = "discover", README "Discovery").

- `discovery_script`: the script of a MAC that is not enrolled -- the discovery role's image,
  with a per-boot token bound exactly like an enrolled host's (`policy.boot_binding`: its own
  DHCP exchange's address) and where to POST the report. An unbound fetch gets the same script
  without a token (its report will be refused).
- `POST /api/v1/discovery` {"token": ..., "inventory": {netbootd-inventory/1}}: a discovery
  boot's report (stored in `discovered`, bounded: discovery.max_records, discovery.expire; a
  matching discovery rule enrolls the machine at once) or an enrolled host's (its inventory
  history). No valid token: 401, audited (one row per source address and interval); a
  document about another machine: 403; more than discovery.max_report bytes: 413; more than a
  few reports a second from one address: 429.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from netbootd import actions, lookup, policy, stats, tokens
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import printable
from netbootd.inventory import schema
from netbootd.model import MacAddress, Urls
from netbootd.ratelimit import KeyedBuckets
from netbootd.servers.web import CFG, GUARD, IDENTITY, RENDERER, STORE, Audit, local_ip

log = logging.getLogger("netbootd.http")
REPORTS = web.AppKey("discovery_reports", KeyedBuckets)


def register(app: web.Application) -> None:
    app[REPORTS] = KeyedBuckets(rate=1.0, burst=5.0)  # per source address
    app.router.add_post("/api/v1/discovery", discovery_report)


def _ipxe(text: str, status: int = 200) -> web.Response:
    resp = web.Response(text=text, status=status, content_type="text/plain")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def discovery_script(request: web.Request, mac: MacAddress,
                     urls_of: Callable[[str | None, web.Request], Urls]) -> web.Response:
    """The discovery boot of `mac` (not enrolled). `urls_of(server, request)`: the HTTP
    adapter's URL maker (its port, HTTP or HTTPS as the request came)."""
    store, cfg, guard = request.app[STORE], request.app[CFG], request.app[GUARD]
    ident, peer = request.app[IDENTITY], request.remote
    now = ident.clock()
    image = lookup.discovery_image(store, cfg)
    urls = urls_of(lookup.server_address(cfg, local_ip(request)), request)
    binding = policy.boot_binding(cfg.binds_to_dhcp, guard.leases.lookup(mac, now), peer)
    token = boot = None
    if binding.ok:
        assert peer is not None
        token = tokens.mint_boot(ident.secret, mac, peer, now, ident.nonce())
        boot = tokens.boot_id(tokens.digest(token))
        stats.inc("boots", "discovery")
    plan = policy.discovery_plan(mac, image, urls, f"{urls.base}/api/v1/discovery", token,
                                 cfg.discovery.action)
    text = request.app[RENDERER].host_script(plan)
    if guard.unbound.admit(("discovery", mac), now):
        log.info("mac=%s peer=%s not enrolled: served the discovery boot (role %s generation "
                 "%d) %s", mac, printable(peer), image.role, image.generation,
                 f"boot={boot}" if boot else f"unbound, no token: {binding.reason}")
    return _ipxe(text)


async def _body(request: web.Request, limit: int) -> bytes | None:
    """At most `limit` bytes of body (None: more came). Read from the stream itself: the
    application's client_max_size is the small one of host events."""
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            return None


async def discovery_report(request: web.Request) -> web.Response:
    app = request.app
    cfg, ident = app[CFG], app[IDENTITY]
    peer = request.remote
    now = ident.clock()
    if not app[REPORTS].allow(peer or "-", now):
        return web.json_response({"error": "too many reports from this address"}, status=429)
    try:
        raw = await _body(request, cfg.discovery.max_report)
    except (ConnectionError, aiohttp.ClientPayloadError, HttpProcessingError):
        return web.json_response({"error": "incomplete body"}, status=400)
    if raw is None:
        return web.json_response({"error": "report too large"}, status=413)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict) or "inventory" not in body:
        return web.json_response({"error": 'expected {"token": ..., "inventory": {...}}'},
                                 status=400)
    token = body.get("token")
    claim = tokens.parse_boot(ident.secret, token) if isinstance(token, str) else None
    ttl = cfg.security.boot_token_ttl
    verdict = policy.discovery_report(claim, peer, now, ttl)
    try:
        if not verdict.ok:
            return _refused(request, claim, verdict.reason, 401)
        assert claim is not None and claim.mac is not None and claim.digest is not None
        try:
            inv = schema.parse(body["inventory"])
        except InvalidInput as e:
            return web.json_response({"error": str(e)}, status=400)
        verdict = policy.discovery_report(claim, peer, now, ttl, inv.macs())
        if not verdict.ok:
            return _refused(request, claim, verdict.reason, 403)
        return await _accept(request, claim.mac, tokens.boot_id(claim.digest), inv, now)
    except NetbootdError as e:
        log.error("peer=%s cannot record an inventory report: %s", printable(peer), e)
        return web.json_response({"error": "server error"}, status=500)


async def _accept(request: web.Request, mac: MacAddress, boot: str, inv: schema.Inventory,
                  now: float) -> web.Response:
    store, cfg, peer = request.app[STORE], request.app[CFG], request.remote
    host = store.host(mac)
    if host is not None:  # an enrolled host's report at its boot: its inventory history
        last = store.inventory(mac)
        changes = schema.changes(schema.load(last.inventory) if last else None, inv)
        new = store.record_inventory(mac, inv.canonical(), inv.digest(), changes, boot, peer,
                                     now, cfg.discovery.keep_inventories)
        log.info("mac=%s peer=%s boot=%s inventory %s", mac, peer, boot,
                 "; ".join(changes)[:300] if new else "unchanged")
        return web.json_response({"ok": True, "host": host.name, "changed": new})
    outcome = store.record_discovery(mac, peer, boot, inv.canonical(), now,
                                     cfg.discovery.max_records, cfg.discovery.expire)
    if outcome == "full":
        audit = Audit("denied", None, peer, {"reason": "discovery table full",
                                             "mac": str(mac)})
        if request.app[GUARD].audit(store, ("discovery-full",), now, audit) is not None:
            log.warning("mac=%s peer=%s discovery not stored: %d discovered machines already "
                        "(discovery.max_records); enroll or wait for them to expire", mac, peer,
                        cfg.discovery.max_records)
        return web.json_response({"error": "discovery table full"}, status=503)
    s = schema.summary(inv)
    log.info("mac=%s peer=%s boot=%s discovered (%s): %s %s serial %s, %d disk(s), %d NIC(s)",
             mac, peer, boot, outcome, s["vendor"], s["product"], s["serial"],
             len(inv.disks), len(inv.nics))
    rule = policy.discovery_rule(lookup.rule_inputs(store), mac, inv)
    if rule is None:
        return web.json_response({"ok": True, "discovered": outcome})
    try:
        name = policy.rule_hostname(rule.hostname, mac, inv, rule.enrolled + 1)
        # identity keys are made here (RSA takes a while): off the event loop
        res = await asyncio.to_thread(actions.enroll, store, cfg, str(mac), rule.role, name,
                                      None, [])
    except NetbootdError as e:
        log.error("mac=%s discovery rule %s matched but enrollment failed: %s", mac,
                  rule.name, e)
        return web.json_response({"ok": True, "discovered": outcome, "rule": rule.name,
                                  "enrolled": False})
    store.rule_used(rule.id)
    store.record_event(mac, "enrolled-by-rule", peer, {"rule": rule.name, "role": rule.role},
                       boot)
    log.info("mac=%s enrolled by discovery rule %s: %s", mac, rule.name, res.lines[0])
    return web.json_response({"ok": True, "discovered": outcome, "rule": rule.name,
                              "enrolled": True, "hostname": name, "role": rule.role})


def _refused(request: web.Request, claim: tokens.TokenClaim | None, reason: str,
             status: int) -> web.Response:
    """Nothing changes; audited once per source address and interval (a flood of forged
    reports writes a bounded number of rows, naming no host: the MAC a forged token claims is
    not believed)."""
    store, guard, peer = request.app[STORE], request.app[GUARD], request.remote
    now = request.app[IDENTITY].clock()
    event = "unauthenticated-report" if status == 401 else "denied"
    detail: dict[str, object] = {"event": "discovery", "reason": reason}
    if claim is not None:
        detail["token"] = claim.short
        if claim.mac is not None:
            detail["claimed_mac"] = str(claim.mac)
    n = guard.audit(store, ("discovery", status, peer), now, Audit(event, None, peer, detail))
    if n is not None:
        log.warning("peer=%s inventory report refused (%d): %s (%d in this interval)",
                    printable(peer), status, reason, n)
    msg = ("no valid per-boot token: nothing changed (recorded)" if status == 401 else
           "refused; the reason is in `netbootd events` on the server")
    return web.json_response({"error": msg}, status=status)
