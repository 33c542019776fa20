"""The HTTP(S) adapter (aiohttp): iPXE scripts, artifacts, iPXE binaries, boot events, health,
and host identity bundles.

Thin: parse the request, ask the store and the policy, render, answer. An unknown MAC is a
404 with a short iPXE script that says so; a store or render failure is a 500 and an error in
the log -- never disguised as "unknown machine".

One aiohttp application listens on the HTTP port and (with a certificate from tls.py) on the
HTTPS port. `/identity/<token>` and `/keys/<host>.tar.gz?token=` answer on HTTPS only. Log
lines name hosts, peers, generations, key fingerprints and a token's digest prefix -- never a
private key or a whole token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from netbootd import lookup, policy, tokens
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import human_size
from netbootd.identity import hostkeys
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.tls import ServerTls
from netbootd.identity.vault import Vault
from netbootd.model import (
    ARP_NOT_CHECKED,
    FlagAction,
    IdentityOffer,
    IdentityToken,
    MacAddress,
    ScriptInputs,
    Urls,
    https_base,
    sha256_hex,
)
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.connlimits import ConnectionGuard, HttpLimits
from netbootd.servers.httpconn import LimitedSite
from netbootd.store import Store
from netbootd.tokens import TokenStatus

log = logging.getLogger("netbootd.http")

MAX_EVENT_BODY = 16 * 1024

CFG = web.AppKey("cfg", Config)
STORE = web.AppKey("store", Store)
ARTIFACTS = web.AppKey("artifacts", Artifacts)
RENDERER = web.AppKey("renderer", ScriptRenderer)


@dataclass
class IdentityService:
    """What the identity endpoints need besides the store; `https_port` is set once bound.
    `nonce` makes the 16 random bytes of every token (tests pass a fixed one)."""

    keys: Vault
    tls: ServerTls | None
    arp: ArpVerifier
    secret: bytes
    token_ttl: int
    https_port: int | None = None
    nonce: Callable[[], bytes] = field(default=lambda: os.urandom(16))


IDENTITY = web.AppKey("identity", IdentityService)
REFUSED = "identity refused; the reason is in `netbootd events` on the server\n"


def _sockname(request: web.Request) -> tuple[str, int] | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return (str(sockname[0]), int(sockname[1])) if sockname else None


def _local_ip(request: web.Request) -> str | None:
    sock = _sockname(request)
    return sock[0] if sock else None


def _urls(server: str | None, request: web.Request) -> Urls:
    """The HTTP URLs of this script: the advertised address, on the port the client used."""
    sock = _sockname(request)
    if server is None or sock is None:
        raise NetbootdError("cannot tell which address the client connected to")
    return Urls.for_address(server, sock[1])


def _identity_offer(request: web.Request, inputs: ScriptInputs, boot: str) -> IdentityOffer | None:
    """If the policy offers the identity: a per-boot token bound to the MAC and this requester."""
    svc, store, host = request.app[IDENTITY], request.app[STORE], inputs.host
    https = svc.tls is not None and svc.https_port is not None
    offer = policy.identity_offer(inputs.identity, https, request.remote)
    if not offer.ok:
        if inputs.identity is not None and inputs.identity.armed:
            log.warning("mac=%s %s", host.mac, offer.reason)
        return None
    assert svc.tls is not None and svc.https_port is not None and request.remote is not None
    assert inputs.server is not None and inputs.identity is not None
    now = time.time()
    token = tokens.mint(svc.secret, host.mac, svc.nonce())
    digest = tokens.digest(token)
    store.issue_token(IdentityToken(digest, host.mac, request.remote, now, now + svc.token_ttl,
                                    boot=boot))
    log.info("mac=%s peer=%s identity token %s issued (generation %d, valid %ds)",
             host.mac, request.remote, digest[:12], inputs.identity.generation, svc.token_ttl)
    return IdentityOffer(f"{https_base(inputs.server, svc.https_port)}/identity/{token}",
                         svc.tls.pin)


def _provision_flag(request: web.Request, inputs: ScriptInputs, digest: str, boot: str) -> bool:
    """Whether this boot carries the re-provision flag: the policy decides (with the host's
    arming and the clock), the store counts the boot in the same transaction."""
    host, now = inputs.host, time.time()
    if inputs.arming is None:  # nothing armed: no transaction
        return False
    d = request.app[STORE].serve_provision(host.mac, digest, boot, request.remote, now,
                                           lambda arming: policy.provision_flag(arming, now))
    if d.action is not FlagAction.NONE:
        log.log(logging.WARNING if d.action is FlagAction.TRIP else logging.INFO,
                "mac=%s peer=%s boot=%s re-provision flag %s: %s", host.mac, request.remote,
                boot, inputs.flag_word if d.action is FlagAction.SERVE else "not served", d.reason)
    return d.action is FlagAction.SERVE


def _mac(request: web.Request) -> MacAddress:
    return MacAddress.parse(request.match_info["mac"])


def _ipxe(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain", charset="utf-8")


async def boot_script(request: web.Request) -> web.Response:
    peer = request.remote
    try:
        mac = _mac(request)
    except InvalidInput as e:
        log.info("peer=%s bad script request %s: %s", peer, request.path[:80], e)
        return _ipxe("#!ipxe\necho netbootd: bad MAC address in request\nexit 1\n", 400)
    store, renderer, cfg = request.app[STORE], request.app[RENDERER], request.app[CFG]
    try:
        inputs = lookup.script_inputs(store, cfg, mac, _local_ip(request))
        if inputs is None:
            log.info("mac=%s peer=%s not enrolled: served 'unknown' script", mac, peer)
            return _ipxe(renderer.unknown_script(mac), 404)
        # Every script names its boot: a fresh token (HMAC, netbootd.boot=) the host sends back
        # with its reports; the first 12 hex digits of its SHA-256 are the boot's public id.
        token = tokens.mint(request.app[IDENTITY].secret, mac, request.app[IDENTITY].nonce(),
                            tokens.TokenPurpose.BOOT)
        digest = tokens.digest(token)
        boot = tokens.boot_id(digest)
        flag_on = _provision_flag(request, inputs, digest, boot)
        offer = _identity_offer(request, inputs, boot)
        plan = policy.script_plan(inputs, _urls(inputs.server, request), offer, token, flag_on)
        text = renderer.host_script(plan)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot serve script: %s", mac, peer, e)
        return _ipxe("#!ipxe\necho netbootd: server error, see the netbootd log\nexit 1\n", 500)
    image = inputs.image
    log.info(
        "mac=%s peer=%s served script role=%s generation=%d mode=%s boot=%s%s%s",
        mac, peer, image.role, image.generation, plan.mode, boot, " with identity" if offer else "",
        f" with {inputs.flag_word}" if flag_on else "",
    )
    resp = _ipxe(text)
    # It carries per-boot tokens (and maybe a single-use identity one): nobody keeps a copy.
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def artifact(request: web.Request) -> web.StreamResponse:
    try:
        sha = sha256_hex(request.match_info["sha256"])
    except InvalidInput:
        raise web.HTTPNotFound(text="no such artifact\n") from None
    path = request.app[ARTIFACTS].path(sha)
    if not path.is_file():
        log.warning("peer=%s asked for missing artifact %s", request.remote, sha[:12])
        raise web.HTTPNotFound(text="no such artifact\n")
    name = request.match_info.get("name", "")
    if request.method == "GET" and "Range" not in request.headers:
        log.info(
            "peer=%s served %s %s (%s)",
            request.remote, name or "artifact", human_size(path.stat().st_size), sha[:12],
        )
    resp = web.FileResponse(path, chunk_size=256 * 1024)
    # Content-addressed: the bytes behind this URL never change.
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    resp.headers["Content-Type"] = "application/octet-stream"
    return resp


async def ipxe_binary(request: web.Request) -> web.StreamResponse:
    """The configured iPXE binaries, by name, for UEFI HTTP boot. Nothing else in the root."""
    cfg = request.app[CFG]
    name = request.match_info["name"]
    root = cfg.tftp_root
    if root is None or name not in cfg.boot_file_names:
        log.info("peer=%s refused iPXE binary %r", request.remote, name[:80])
        raise web.HTTPNotFound(text="no such iPXE binary\n")
    path = root / name
    if not path.is_file():
        log.error("configured boot file %s is missing", path)
        raise web.HTTPNotFound(text="no such iPXE binary\n")
    log.info("peer=%s served %s %s", request.remote, name, human_size(path.stat().st_size))
    return web.FileResponse(path)


async def host_event(request: web.Request) -> web.Response:
    peer = request.remote
    try:
        mac = _mac(request)
    except InvalidInput as e:
        return web.json_response({"error": str(e)}, status=400)
    if request.content_length is not None and request.content_length > MAX_EVENT_BODY:
        return web.json_response({"error": "body too large"}, status=413)
    try:
        body = json.loads(await request.content.read(MAX_EVENT_BODY + 1) or b"null")
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
    store = request.app[STORE]
    boot = None
    try:
        if store.host(mac) is None:
            log.info("mac=%s peer=%s event %s for a host that is not enrolled", mac, peer, event)
            return web.json_response({"error": "host not enrolled"}, status=404)
        detail: dict[str, object] = {
            str(k)[:40]: v for k, v in body.items()
            if k not in ("event", "token") and isinstance(v, str | int)
        }
        claim = None if token is None else tokens.parse(request.app[IDENTITY].secret, token,
                                                         tokens.TokenPurpose.BOOT)
        verdict = policy.report_token(event, claim, mac)
        if not verdict.ok:
            store.deny_event(mac, peer, {"event": event, "reason": verdict.reason,
                                         "token": claim.short if claim else "-"})
            log.warning("mac=%s peer=%s event %s refused: %s", mac, peer, event, verdict.reason)
            return _refused_event()
        if claim is not None:
            assert claim.digest is not None
            boot = tokens.boot_id(claim.digest)
            if event == "provisioned":
                now = time.time()
                decision = store.report_provisioned(
                    mac, claim.digest, boot, peer, now, policy.provision_report, detail
                )
                if not decision.ok:
                    log.warning("mac=%s peer=%s boot=%s provisioned refused: %s", mac, peer,
                                boot, decision.reason)
                    return _refused_event()
                log.info("mac=%s peer=%s boot=%s provisioned: re-provision flag cleared (%s)",
                         mac, peer, boot, decision.reason)
                return web.json_response({"ok": True, "event": event, "boot": boot})
        store.record_event(mac, event, peer, detail, boot)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot record event %s: %s", mac, peer, event, e)
        return web.json_response({"error": "server error"}, status=500)
    log.info("mac=%s peer=%s%s event %s", mac, peer, f" boot={boot}" if boot else "", event)
    return web.json_response({"ok": True, "event": event, "boot": boot})


def _refused_event() -> web.Response:
    return web.json_response(
        {"error": "refused; the reason is in `netbootd events` on the server"}, status=403
    )


def _refused(status: int = 403, text: str = REFUSED) -> web.Response:
    return web.Response(text=text, status=status, headers={"Cache-Control": "no-store"})


async def identity_bundle(request: web.Request) -> web.Response:
    """GET /identity/<token> and /keys/<host>.tar.gz?token=<token>: the host's identity tar.gz,
    once, to the address and machine the token was issued to, over HTTPS."""
    peer = request.remote or "?"
    svc, store = request.app[IDENTITY], request.app[STORE]
    name = request.match_info.get("name")
    if name is not None:
        name = name[:253].lower()
        token = request.query.get("token", "")
    else:
        token = request.match_info.get("token", "")
    claim = tokens.parse(svc.secret, token)
    where: dict[str, object] = {"path": "keys" if name is not None else "identity"}
    try:
        if not request.secure:
            store.deny(claim.mac if claim.status is TokenStatus.VALID else None, peer,
                       {**where, "reason": "plain HTTP (the identity is served over HTTPS only)",
                        "token": claim.short})
            log.warning("peer=%s identity requested over plain HTTP: refused", peer)
            return _refused(403, "the identity is served over HTTPS only\n")
        if claim.status is not TokenStatus.VALID:
            store.deny(claim.mac, peer,
                       {**where, "reason": f"{claim.status} token", "token": claim.short})
            log.warning("mac=%s peer=%s identity refused: %s token", claim.mac or "-", peer,
                        claim.status)
            return _refused()
        mac = claim.mac
        assert mac is not None and claim.digest is not None
        # A first look without side effects: only a request that would be allowed gets an ARP
        # question and has its bundle read, so a failure to read keys never burns the token.
        host, state = store.host(mac), store.identity_state(mac)
        pre = policy.identity_release(
            store.token(claim.digest), host, state, peer, time.time(), requested_name=name
        )
        arp = ARP_NOT_CHECKED
        body = pub = None
        if pre.ok:
            arp = await svc.arp.check(peer, mac, _local_ip(request))
            pub = store.identity(mac)
            if pub is not None:
                body = hostkeys.bundle(svc.keys.read(pub), pub.created)
        decision, state = store.redeem_token(
            claim.digest, mac, peer, time.time(),
            lambda t, h, st: policy.identity_release(
                t, h, st, peer, time.time(), arp, requested_name=name
            ),
            {**where, "arp": f"{arp.result} ({arp.note})"} if pre.ok else where,
        )
        if not decision.ok:
            log.warning("mac=%s peer=%s identity refused: %s", mac, peer, decision.reason)
            return _refused()
        assert state is not None
        if pub is None or body is None or pub.generation != state.generation:
            pub = store.identity(mac)  # rotated between the first look and the redemption
            if pub is None:
                raise NetbootdError(f"{mac}: identity vanished while being delivered")
            body = hostkeys.bundle(svc.keys.read(pub), pub.created)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot serve identity: %s", claim.mac or "-", peer, e)
        return _refused(500, "server error, see the netbootd log\n")
    log.info(
        "mac=%s peer=%s identity delivered: generation %d, ed25519 %s, arp %s%s",
        mac, peer, pub.generation, hostkeys.fingerprint(pub.ssh_ed25519), arp.result,
        " (stays armed: every boot)" if state.every_boot else "",
    )
    return web.Response(
        body=body,
        content_type="application/gzip",
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="identity.tar.gz"',
        },
    )


async def healthz(request: web.Request) -> web.Response:
    try:
        version = request.app[STORE].schema_version
    except NetbootdError as e:
        log.error("health check: %s", e)
        return web.json_response({"status": "error", "error": str(e)}, status=503)
    return web.json_response({"status": "ok", "schema": version})


def make_app(
    cfg: Config,
    store: Store,
    artifacts: Artifacts,
    renderer: ScriptRenderer,
    ident: IdentityService,
) -> web.Application:
    app = web.Application(client_max_size=MAX_EVENT_BODY)
    app[CFG] = cfg
    app[STORE] = store
    app[ARTIFACTS] = artifacts
    app[RENDERER] = renderer
    app[IDENTITY] = ident
    app.router.add_get("/boot/{mac}.ipxe", boot_script)
    app.router.add_get("/artifacts/{sha256}", artifact)
    app.router.add_get("/artifacts/{sha256}/{name}", artifact)
    app.router.add_get("/ipxe/{name:.+}", ipxe_binary)
    app.router.add_post("/api/v1/hosts/{mac}/events", host_event)
    app.router.add_get("/identity/{token}", identity_bundle)
    app.router.add_get("/keys/{name}.tar.gz", identity_bundle)
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    # Connection limits and timeouts (servers/connlimits.py): `connection_cap` lowers
    # http.max_connections when the descriptor budget is short (app.py); `guard` while serving.
    connection_cap: int | None = None
    guard: ConnectionGuard | None = None

    def __init__(
        self,
        cfg: Config,
        store: Store,
        artifacts: Artifacts,
        renderer: ScriptRenderer,
        ident: IdentityService,
    ) -> None:
        self.cfg = cfg
        self.ident = ident
        self.app = make_app(cfg, store, artifacts, renderer, ident)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.https_port: int | None = None

    async def _site(self, site: web.BaseSite, what: str, listen: str, port: int) -> int:
        try:
            await site.start()
        except OSError as e:
            raise NetbootdError(f"{what}: cannot listen on {listen}:{port}: {e.strerror}") from None
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        assert self._runner.server is not None
        guard = self.guard = ConnectionGuard(self._runner.server,
                                             HttpLimits.of(self.cfg.http, self.connection_cap))
        guard.start(asyncio.get_running_loop())
        try:
            http = self.cfg.http
            self.port = await self._site(
                LimitedSite(self._runner, guard, http.listen, http.port),
                "HTTP", http.listen, http.port,
            )
            if self.ident.tls is not None:
                https = self.cfg.https
                self.https_port = await self._site(
                    LimitedSite(self._runner, guard, https.listen, https.port,
                                ssl_context=self.ident.tls.context),
                    "HTTPS", https.listen, https.port,
                )
                self.ident.https_port = self.https_port
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
