"""The admin API: REST + JSON under /api/v1/, on the HTTPS port only, behind bearer tokens
(servers/api_auth.py). Thin: authorize, parse, ask netbootd/views.py (reads: the same values
the CLI's listings print) or netbootd/actions.py (writes: the same code the CLI's commands run),
answer. `ROUTES` is the one table both the router and the OpenAPI document
(/api/v1/openapi.json) are made from, so the document lists every route.

Writes are audited (`api-call`: token name, method, path). Power actions (issue 16) run their
BMC calls in the power executor with a deadline (power/control.offload): a BMC that does not
answer is a 502 after the timeout, never a stalled loop. Answers carry public key halves
only (fingerprints, public keys, hostIds): views and actions never hold private keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from netbootd import actions, model, views
from netbootd.errors import BmcError, InvalidInput, NetbootdError, NotFound
from netbootd.identity import tls
from netbootd.inventory import views as inv_views
from netbootd.model import ApiToken, TokenScope
from netbootd.power import control
from netbootd.power.settings import PowerAction
from netbootd.servers.api_auth import authorize, csrf_for
from netbootd.servers.web import CFG, STORE
from netbootd.views import find_host

log = logging.getLogger("netbootd.api")
MAX_BODY = 64 * 1024
Handler = Callable[[web.Request, ApiToken], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: TokenScope
    summary: str
    handler: Handler
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidInput("body too large")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    return data


def _host(request: web.Request) -> model.Host:
    return find_host(request.app[STORE], request.match_info["host"])


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise InvalidInput(f"{key} must be a string")
    return v


# -- reads --------------------------------------------------------------------------------------


async def get_hosts(request: web.Request, _t: ApiToken) -> Any:
    tag = request.query.get("tag")
    return views.hosts(request.app[STORE], model.tag(tag) if tag else None, time.time())


async def get_host(request: web.Request, _t: ApiToken) -> Any:
    store = request.app[STORE]
    h = _host(request)
    pub = store.identity(h.mac)
    return views.host_json(store, h, store.provisions().get(h.mac), time.time()) | {
        "identity": views.identity_json(pub) if pub else None}


async def get_host_keys(request: web.Request, _t: ApiToken) -> Any:
    return views.host_keys(request.app[STORE], _host(request))


def _since(request: web.Request) -> float:
    s = request.query.get("since")
    if not s:
        return 0.0
    try:
        return float(s)
    except ValueError:
        return time.time() - model.duration(s, "since", unit=True)


async def get_events(request: web.Request, _t: ApiToken) -> Any:
    store = request.app[STORE]
    mac = None
    if "host" in request.match_info:
        ident = request.match_info["host"]
        try:
            mac = find_host(store, ident).mac
        except NotFound:
            mac = model.MacAddress.parse(ident)
    if request.query.get("follow") == "1":
        return await _follow(request, mac)
    return views.events(store, mac, _since(request), request.query.get("boot"))


async def _follow(request: web.Request, mac: model.MacAddress | None) -> web.StreamResponse:
    """Server-sent events: what is recorded from now on (the CLI's `events --follow`, the
    dashboard's live feed). A comment line every 15 s keeps proxies from closing it."""
    store = request.app[STORE]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    last = store.last_event_id()
    quiet = 0.0
    while True:
        await asyncio.sleep(1.0)
        names = {h.mac: h.name for h in store.hosts()}
        new = store.events_after(last)
        for eid, ev in new:
            last = eid
            if mac is None or ev.mac == mac:
                data = json.dumps(views.event_json(ev, names))
                await resp.write(f"id: {eid}\ndata: {data}\n\n".encode())
        quiet = 0.0 if new else quiet + 1.0
        if quiet >= 15.0:
            await resp.write(b": keep-alive\n\n")
            quiet = 0.0


async def get_roles(request: web.Request, _t: ApiToken) -> Any:
    return views.roles(request.app[STORE], request.app[CFG])


async def get_role(request: web.Request, _t: ApiToken) -> Any:
    return views.role(request.app[STORE], request.app[CFG],
                      model.role_name(request.match_info["role"]))


async def get_generations(request: web.Request, _t: ApiToken) -> Any:
    return views.generations(request.app[STORE], model.role_name(request.match_info["role"]))


async def get_keys(request: web.Request, _t: ApiToken) -> Any:
    return views.keys(request.app[STORE])


async def get_status(request: web.Request, _t: ApiToken) -> Any:
    q = request.query
    tag = model.tag(q["tag"]) if q.get("tag") else None
    stale = ((q["stale"], model.duration(q["stale"], "stale", unit=True)) if q.get("stale")
             else None)
    deploy = ((q["stale_deploy"], model.duration(q["stale_deploy"], "stale_deploy", unit=True))
              if q.get("stale_deploy") else None)
    return views.status(request.app[STORE], time.time(), tag, stale, deploy,
                        q.get("failed") == "1")


async def get_whoami(request: web.Request, t: ApiToken) -> Any:
    return {"name": t.name, "scope": str(t.scope), "csrf": csrf_for(request)}


# -- writes (admin) -----------------------------------------------------------------------------


async def post_host(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    tags = b.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise InvalidInput("tags must be a list of strings")
    cfg = request.app[CFG]
    return await asyncio.to_thread(  # an identity's RSA key takes a second: not on the loop
        actions.enroll, request.app[STORE], cfg, str(b.get("mac") or ""),
        str(b.get("role") or ""), _opt_str(b, "hostname"), _opt_str(b, "canon"), tags,
        b.get("identity", True) is not False)


async def delete_host(request: web.Request, _t: ApiToken) -> Any:
    return actions.unenroll(request.app[STORE], request.app[CFG], _host(request))


async def _reprovision(request: web.Request, b: dict[str, Any],
                       hosts: list[model.Host]) -> actions.Outcome:
    ttl = b.get("ttl")
    mb = b.get("max_boots")
    if mb is not None and not isinstance(mb, int):
        raise InvalidInput("max_boots must be an integer")
    reboot = b.get("reboot") is True
    if reboot and b.get("cancel") is True:
        raise InvalidInput("reboot arms and reboots: not with cancel")
    store, cfg = request.app[STORE], request.app[CFG]
    out = actions.reprovision(store, cfg, hosts,
                              model.duration(ttl, "ttl") if ttl else None, mb,
                              b.get("cancel") is True, via="api")
    if not reboot:
        return out
    # the BMC calls run in the power executor with their deadline: the loop keeps serving
    rb = await control.offload(actions.reboot_for_provision, store, cfg, hosts, "api")
    return actions.Outcome(out.data | {"reboot": rb.data["hosts"], "failed": rb.data["failed"]},
                           out.lines + rb.lines)


async def post_reprovision(request: web.Request, _t: ApiToken) -> Any:
    return await _reprovision(request, await _body(request), [_host(request)])


async def post_reprovision_tag(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    tag = model.tag(str(b.get("tag") or ""))
    hosts = request.app[STORE].hosts(tag)
    if not hosts:
        raise NotFound(f"no hosts tagged {tag!r}")
    return await _reprovision(request, b, hosts)


# -- BMC and power (issue 16): admin tokens only, BMC calls off the loop -------------------


async def get_bmc(request: web.Request, _t: ApiToken) -> Any:
    store = request.app[STORE]
    h = _host(request)
    return {"mac": str(h.mac), "host": h.name, "bmc": views.bmc_json(store.bmc(h.mac))}


async def get_power(request: web.Request, _t: ApiToken) -> Any:
    return await control.offload(actions.power, request.app[STORE], request.app[CFG],
                                 _host(request), PowerAction.STATUS, "api")


_POWER_BODY = {"on": PowerAction.ON, "off": PowerAction.OFF, "cycle": PowerAction.CYCLE}


async def post_power(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    action = _POWER_BODY.get(str(b.get("action")))
    if action is None:
        raise InvalidInput("action must be on, off or cycle")
    return await control.offload(actions.power, request.app[STORE], request.app[CFG],
                                 _host(request), action, "api")


async def post_boot_once(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    if b.get("device", "pxe") != "pxe":
        raise InvalidInput("device must be pxe")
    return await control.offload(actions.power, request.app[STORE], request.app[CFG],
                                 _host(request), PowerAction.BOOT_ONCE_PXE, "api")


async def post_arm(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    return actions.arm(request.app[STORE], _host(request), b.get("every_boot") is True)


async def post_switch(request: web.Request, _t: ApiToken) -> Any:
    b = await _body(request)
    gen = b.get("generation")
    if not isinstance(gen, int):
        raise InvalidInput("generation must be an integer")
    return actions.switch(request.app[STORE], request.match_info["role"], gen)


async def post_rollback(request: web.Request, _t: ApiToken) -> Any:
    return actions.rollback(request.app[STORE], request.match_info["role"])


async def get_discovered(request: web.Request, _t: ApiToken) -> Any:
    return inv_views.discovered(request.app[STORE])


async def get_host_inventory(request: web.Request, _t: ApiToken) -> Any:
    return inv_views.host_show(request.app[STORE], _host(request), time.time())


async def get_rules(request: web.Request, _t: ApiToken) -> Any:
    return inv_views.rules(request.app[STORE])


R, A = TokenScope.READ, TokenScope.ADMIN
ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/whoami", R, "the caller's token name, scope and CSRF token",
          get_whoami),
    Route("GET", "/api/v1/hosts", R, "enrolled hosts (as `netbootd hosts --json`)", get_hosts,
          ("tag",)),
    Route("POST", "/api/v1/hosts", A, "enroll a host (as `netbootd enroll`)", post_host,
          body=("mac", "role", "hostname", "canon", "tags", "identity")),
    Route("GET", "/api/v1/hosts/{host}", R, "one host, with its identity's public parts",
          get_host),
    Route("DELETE", "/api/v1/hosts/{host}", A, "unenroll a host", delete_host),
    Route("GET", "/api/v1/hosts/{host}/keys", R, "a host's identity generations (public "
          "parts)", get_host_keys),
    Route("GET", "/api/v1/hosts/{host}/events", R, "a host's events (?follow=1: SSE)",
          get_events, ("since", "boot", "follow")),
    Route("POST", "/api/v1/hosts/{host}/reprovision", A, "arm (or cancel) a re-provision; "
          "reboot: then next boot PXE and a power cycle through the BMC",
          post_reprovision, body=("ttl", "max_boots", "cancel", "reboot")),
    Route("POST", "/api/v1/reprovision", A, "arm (or cancel) a re-provision of a tag",
          post_reprovision_tag, body=("tag", "ttl", "max_boots", "cancel", "reboot")),
    Route("GET", "/api/v1/hosts/{host}/bmc", R, "a host's BMC settings (password: \"set\")",
          get_bmc),
    Route("GET", "/api/v1/hosts/{host}/power", A, "a host's power state, asked of its BMC",
          get_power),
    Route("POST", "/api/v1/hosts/{host}/power", A, "power a host on, off or cycle it",
          post_power, body=("action",)),
    Route("POST", "/api/v1/hosts/{host}/boot-once", A, "next boot (only) from the network",
          post_boot_once, body=("device",)),
    Route("POST", "/api/v1/hosts/{host}/identity/arm", A, "arm a host's identity", post_arm,
          body=("every_boot",)),
    Route("GET", "/api/v1/roles", R, "roles (as `netbootd role list --json`)", get_roles),
    Route("GET", "/api/v1/roles/{role}", R, "one role (as `netbootd role show`)", get_role),
    Route("GET", "/api/v1/roles/{role}/generations", R, "a role's generations",
          get_generations),
    Route("POST", "/api/v1/roles/{role}/switch", A, "make a generation current", post_switch,
          body=("generation",)),
    Route("POST", "/api/v1/roles/{role}/rollback", A, "make the previous generation current",
          post_rollback),
    Route("GET", "/api/v1/keys", R, "every host's identity (public parts)", get_keys),
    Route("GET", "/api/v1/events", R, "events (?since=, ?follow=1: SSE)", get_events,
          ("since", "boot", "follow")),
    Route("GET", "/api/v1/discovered", R, "discovered machines (as `netbootd discovered "
          "--json`)", get_discovered),
    Route("GET", "/api/v1/discovery/rules", R, "discovery rules", get_rules),
    Route("GET", "/api/v1/hosts/{host}/inventory", R, "a host's inventory, its history and "
          "events (as `netbootd hosts show --json`)", get_host_inventory),
    Route("GET", "/api/v1/status", R, "host counts by state, stale and failed hosts",
          get_status, ("tag", "stale", "stale_deploy", "failed")),
)


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        tok = authorize(request, route.scope)
        try:
            out = await route.handler(request, tok)
            if route.method != "GET":
                request.app[STORE].audit(None, "api-call", request.remote, {
                    "token": tok.name, "method": route.method, "path": request.path[:200]})
                log.info("peer=%s api %s %s by token %s", request.remote, route.method,
                         request.path[:120], tok.name)
        except NotFound as e:
            return web.json_response({"error": str(e)}, status=404)
        except InvalidInput as e:
            return web.json_response({"error": str(e)}, status=400)
        except BmcError as e:  # the BMC's fault, not ours: 502, and the servers serve on
            log.warning("api %s %s: %s", route.method, request.path[:120], e)
            return web.json_response({"error": str(e)}, status=502)
        except NetbootdError as e:
            log.error("api %s %s: %s", route.method, request.path[:120], e)
            return web.json_response({"error": str(e)}, status=500)
        if isinstance(out, web.StreamResponse):
            return out
        if isinstance(out, actions.Outcome):
            out = out.json()
        return web.json_response(out, headers={"Cache-Control": "no-store"})

    return handle


async def ca_pem(request: web.Request) -> web.Response:
    """The CA certificate (public), for `--ca-sha256` pinning; HTTPS only like the API."""
    if not request.secure:
        return web.json_response({"error": "the admin API is served over HTTPS only"},
                                 status=403)
    pem = tls.ca_cert_path(request.app[CFG].state_dir).read_bytes()
    return web.Response(body=pem, content_type="application/x-pem-file")


def openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in ("host", "role") if "{" + n + "}" in r.path]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                   for q in r.query]
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{r.path.strip('/').replace('/', '_')}"
            .replace("{", "").replace("}", ""),
            "security": [{"bearer": []}],
            "x-netbootd-scope": str(r.scope),
            "responses": {
                "200": {"description": "OK",
                        "content": {"application/json": {"schema": {}}}},
                "401": {"description": "no, unknown or revoked token"},
                "403": {"description": "plain HTTP, a read-only token on a write, or a "
                        "browser request without the CSRF token"},
            },
        }
        if r.handler in (get_power, post_power, post_boot_once, post_reprovision):
            op["responses"]["502"] = {"description": "the host's BMC did not answer within "
                                      "the timeout, or refused"}
        if params:
            op["parameters"] = params
        if r.method in ("POST", "PUT", "PATCH"):
            op["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"type": "object",
                           "properties": {b: {} for b in r.body}}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    paths["/api/v1/openapi.json"] = {"get": {"summary": "this document", "security": [],
                                             "responses": {"200": {"description": "OK"}}}}
    paths["/api/v1/ca.pem"] = {"get": {"summary": "netbootd's CA certificate (public)",
                                       "security": [],
                                       "responses": {"200": {"description": "PEM"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "netbootd admin API", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi())


def register(app: web.Application) -> None:
    """The API's routes (app.py calls this on the HTTP(S) application)."""
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _wrap(r))
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/ca.pem", ca_pem)
