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
import logging
import time

from aiohttp import web

from netbootd import lookup, policy, stats, tokens
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import human_size, printable
from netbootd.ipxe.served import ServedIpxe
from netbootd.leases import Leases
from netbootd.model import (
    FlagAction,
    IdentityOffer,
    IdentityToken,
    ScriptInputs,
    Urls,
    https_base,
    sha256_hex,
)
from netbootd.roles.artifacts import Artifacts
from netbootd.servers import discovery
from netbootd.servers.connlimits import ConnectionGuard, HttpLimits
from netbootd.servers.gate import efi_file, transport_refused
from netbootd.servers.httpconn import LimitedSite
from netbootd.servers.identity_bundle import identity_bundle
from netbootd.servers.reports import host_event
from netbootd.servers.web import (
    ARTIFACTS,
    CFG,
    GUARD,
    IDENTITY,
    IPXE,
    MAX_EVENT_BODY,
    RENDERER,
    STORE,
    Guard,
    IdentityService,
    local_ip,
    mac_of,
    sockname,
)
from netbootd.store import Store

log = logging.getLogger("netbootd.http")


def ident_up(request: web.Request) -> bool:
    """The HTTPS port is bound (identity and HTTPS-only hosts can be served)."""
    return request.app[IDENTITY].https_port is not None


def _urls(server: str | None, request: web.Request) -> Urls:
    """The URLs of this script: the advertised address, on the port the client used; HTTPS
    when it came over HTTPS (everything after an HTTPS step stays HTTPS)."""
    sock = sockname(request)
    if server is None or sock is None:
        raise NetbootdError("cannot tell which address the client connected to")
    if request.secure:
        return Urls.for_https(server, sock[1])
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
    now = svc.clock()
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


def _ipxe(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain", charset="utf-8")


def bind_boot(request: web.Request, inputs: ScriptInputs
              ) -> tuple[str | None, str | None, bool, IdentityOffer | None]:
    """A fetch of a host's script (or UKI) counts as its boot only from the address its own
    DHCP exchange used (policy.boot_binding); then it names the boot: a fresh token (HMAC over
    MAC, address and time, netbootd.boot=) its reports must carry, a flagged boot counted if a
    re-provision is armed, the identity offered if armed. Anything else is served
    explain-style: no token, nothing counted, nothing offered. Returns (token, boot id,
    re-provision flag on, identity offer)."""
    mac, peer, cfg = inputs.host.mac, request.remote, request.app[CFG]
    now = request.app[IDENTITY].clock()
    guard = request.app[GUARD]
    binding = policy.boot_binding(cfg.binds_to_dhcp, guard.leases.lookup(mac, now), peer)
    if not binding.ok:
        if guard.unbound.admit(mac, now):
            log.info("mac=%s peer=%s script served unbound (no token, nothing counted): %s",
                     mac, printable(peer), binding.reason)
        return None, None, False, None
    assert peer is not None
    token = tokens.mint_boot(request.app[IDENTITY].secret, mac, peer, now,
                             request.app[IDENTITY].nonce())
    stats.inc("boots", "uki" if request.path.startswith("/uki/") else "script")
    digest = tokens.digest(token)
    boot = tokens.boot_id(digest)
    return token, boot, _provision_flag(request, inputs, digest, boot), \
        _identity_offer(request, inputs, boot)


async def boot_script(request: web.Request) -> web.Response:
    peer = request.remote
    try:
        mac = mac_of(request)
    except InvalidInput as e:
        log.info("peer=%s bad script request %s: %s", peer, request.path[:80], e)
        return _ipxe("#!ipxe\necho netbootd: bad MAC address in request\nexit 1\n", 400)
    store, renderer, cfg = request.app[STORE], request.app[RENDERER], request.app[CFG]
    try:
        inputs = lookup.script_inputs(store, cfg, mac, local_ip(request))
        if inputs is None and cfg.dhcp.unknown_policy == "discover":
            return discovery.discovery_script(request, mac, _urls)
        if inputs is None:
            log.info("mac=%s peer=%s not enrolled: served 'unknown' script", mac, peer)
            return _ipxe(renderer.unknown_script(mac), 404)
        if transport_refused(store, cfg, request, inputs, "script", ident_up(request)):
            return _ipxe("#!ipxe\necho netbootd: this host boots over HTTPS only\nexit 1\n", 403)
        token, boot, flag_on, offer = bind_boot(request, inputs)
        plan = policy.script_plan(inputs, _urls(inputs.server, request), offer, token, flag_on)
        text = renderer.host_script(plan)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot serve script: %s", mac, peer, e)
        return _ipxe("#!ipxe\necho netbootd: server error, see the netbootd log\nexit 1\n", 500)
    image = inputs.image
    if boot is not None:
        log.info(
            "mac=%s peer=%s served script role=%s generation=%d mode=%s boot=%s%s%s",
            mac, peer, image.role, image.generation, plan.mode, boot,
            " with identity" if offer else "", f" with {inputs.flag_word}" if flag_on else "",
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
    if _zero_suffix_range(request):
        # RFC 7233 2.1: a suffix-byte-range-spec of length 0 is unsatisfiable (416); aiohttp
        # reads "bytes=-0" as "from byte -0 = 0" and answers 206 with the whole file.
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{path.stat().st_size}"})
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


def _zero_suffix_range(request: web.Request) -> bool:
    """`Range: bytes=-0` (-00, ...: aiohttp's one-range grammar; with If-Range, aiohttp
    decides whether the Range applies at all)."""
    rng = request.headers.get("Range", "").strip()
    suffix = rng[7:] if rng[:7].lower() == "bytes=-" else ""
    return bool(suffix) and suffix.strip("0") == "" and "If-Range" not in request.headers


async def ipxe_binary(request: web.Request) -> web.StreamResponse:
    """The configured iPXE binaries, by name, for UEFI HTTP boot (or netbootd's current build
    of them, ipxe/served.py). Nothing else in the root."""
    cfg = request.app[CFG]
    name = request.match_info["name"]
    built = request.app[IPXE].path(name)
    if built is not None:
        if request.method == "GET":
            log.info("peer=%s served %s (netbootd's build) %s", request.remote, name,
                     human_size(built.stat().st_size))
        return efi_file(built)
    root = cfg.tftp_root
    if root is None or name not in cfg.boot_file_names:
        log.info("peer=%s refused iPXE binary %r", request.remote, name[:80])
        raise web.HTTPNotFound(text="no such iPXE binary\n")
    path = root / name
    if not path.is_file():
        log.error("configured boot file %s is missing", path)
        raise web.HTTPNotFound(text="no such iPXE binary\n")
    if request.method == "GET":
        log.info("peer=%s served %s %s", request.remote, name, human_size(path.stat().st_size))
    return efi_file(path)


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
    guard: Guard | None = None,
    ipxe: ServedIpxe | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_EVENT_BODY)
    app[CFG] = cfg
    app[STORE] = store
    app[ARTIFACTS] = artifacts
    app[RENDERER] = renderer
    app[IPXE] = ipxe if ipxe is not None else ServedIpxe(
        cfg.state_dir, lambda: lookup.ipxe_chain_target(cfg))
    app[IDENTITY] = ident
    app[GUARD] = guard if guard is not None else Guard(
        Leases(cfg.security.dhcp_window), cfg.security.unauthenticated_interval)
    app.router.add_get("/boot/{mac}.ipxe", boot_script)
    app.router.add_get("/artifacts/{sha256}", artifact)
    app.router.add_get("/artifacts/{sha256}/{name}", artifact)
    app.router.add_get("/ipxe/{name:.+}", ipxe_binary)
    app.router.add_post("/api/v1/hosts/{mac}/events", host_event)
    discovery.register(app)  # POST /api/v1/discovery: inventory reports
    app.router.add_get("/identity/{token}", identity_bundle)
    app.router.add_get("/keys/{name}.tar.gz", identity_bundle)
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    # Connection limits and timeouts (servers/connlimits.py): `connection_cap` lowers
    # http.max_connections when the descriptor budget is short (app.py); `connections` while
    # serving.
    connection_cap: int | None = None
    connections: ConnectionGuard | None = None

    def __init__(
        self,
        cfg: Config,
        store: Store,
        artifacts: Artifacts,
        renderer: ScriptRenderer,
        ident: IdentityService,
        guard: Guard | None = None,
        ipxe: ServedIpxe | None = None,
    ) -> None:
        self.cfg = cfg
        self.ident = ident
        self.app = make_app(cfg, store, artifacts, renderer, ident, guard, ipxe)
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
        guard = self.connections = ConnectionGuard(self._runner.server,
                                                   HttpLimits.of(self.cfg.http,
                                                                 self.connection_cap))
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
        if self.connections is not None:
            self.connections.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
