"""The HTTP adapter (aiohttp): iPXE scripts, artifacts, iPXE binaries, boot events, health.

Thin: parse the request, ask the store and the policy, render, answer. An unknown MAC is a
404 with a short iPXE script that says so; a store or render failure is a 500 and an error in
the log -- never disguised as "unknown machine".
"""

from __future__ import annotations

import json
import logging
from aiohttp import web

from netbootd import policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import human_size
from netbootd.images import ArtifactStore
from netbootd.model import MacAddress, sha256_hex
from netbootd.store import Store

log = logging.getLogger("netbootd.http")

IPXE_TYPE = "text/plain; charset=utf-8"
# Events a booted host may report. Later issues add provisioning and identity events.
HOST_EVENTS = frozenset({"booted"})
MAX_EVENT_BODY = 16 * 1024

CFG = web.AppKey("cfg", Config)
STORE = web.AppKey("store", Store)
ARTIFACTS = web.AppKey("artifacts", ArtifactStore)
RENDERER = web.AppKey("renderer", ScriptRenderer)



def _urls(request: web.Request) -> policy.Urls:
    """Where this client reached us: the configured address, else the socket it connected to."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        raise NetbootdError("cannot tell which address the client connected to")
    host, port = str(sockname[0]), int(sockname[1])
    advertise = request.app[CFG].advertise_address
    if advertise is not None:
        host = str(advertise)
    return policy.Urls.for_address(f"[{host}]" if ":" in host else host, port)


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
    store, renderer = request.app[STORE], request.app[RENDERER]
    try:
        host = store.host(mac)
        if host is None:
            log.info("mac=%s peer=%s not enrolled: served 'unknown' script", mac, peer)
            return _ipxe(renderer.unknown_script(mac), 404)
        image = store.image(host.role)
        if image is None:
            raise NetbootdError(f"role {host.role!r} of {mac} has no image")
        text = renderer.host_script(policy.boot_plan(host, image, _urls(request)))
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot serve script: %s", mac, peer, e)
        return _ipxe("#!ipxe\necho netbootd: server error, see the netbootd log\nexit 1\n", 500)
    log.info(
        "mac=%s peer=%s served script role=%s generation=%d",
        mac, peer, image.role, image.generation,
    )
    return _ipxe(text)


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
    if event not in HOST_EVENTS:
        return web.json_response(
            {"error": f"unknown event {event[:40]!r}", "known": sorted(HOST_EVENTS)}, status=400
        )
    store = request.app[STORE]
    try:
        if store.host(mac) is None:
            log.info("mac=%s peer=%s event %s for a host that is not enrolled", mac, peer, event)
            return web.json_response({"error": "host not enrolled"}, status=404)
        detail: dict[str, object] = {
            str(k): v for k, v in body.items() if k != "event" and isinstance(v, str | int)
        }
        store.record_event(mac, event, peer, detail)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot record event %s: %s", mac, peer, event, e)
        return web.json_response({"error": "server error"}, status=500)
    log.info("mac=%s peer=%s event %s", mac, peer, event)
    return web.json_response({"ok": True, "event": event})


async def healthz(request: web.Request) -> web.Response:
    try:
        version = request.app[STORE].schema_version
    except NetbootdError as e:
        log.error("health check: %s", e)
        return web.json_response({"status": "error", "error": str(e)}, status=503)
    return web.json_response({"status": "ok", "schema": version})


def make_app(cfg: Config, store: Store, artifacts: ArtifactStore, renderer: ScriptRenderer) -> web.Application:
    app = web.Application(client_max_size=MAX_EVENT_BODY)
    app[CFG] = cfg
    app[STORE] = store
    app[ARTIFACTS] = artifacts
    app[RENDERER] = renderer
    app.router.add_get("/boot/{mac}.ipxe", boot_script)
    app.router.add_get("/artifacts/{sha256}", artifact)
    app.router.add_get("/artifacts/{sha256}/{name}", artifact)
    app.router.add_get("/ipxe/{name:.+}", ipxe_binary)
    app.router.add_post("/api/v1/hosts/{mac}/events", host_event)
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    def __init__(self, cfg: Config, store: Store, artifacts: ArtifactStore, renderer: ScriptRenderer) -> None:
        self.cfg = cfg
        self.app = make_app(cfg, store, artifacts, renderer)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.http.listen, self.cfg.http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise NetbootdError(
                f"HTTP: cannot listen on {self.cfg.http.listen}:{self.cfg.http.port}: {e.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.http.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
