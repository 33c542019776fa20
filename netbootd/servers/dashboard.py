"""The web dashboard: `/` and `/ui/` on the HTTPS port -- one HTML page, a stylesheet and a
small vanilla script (servers/ui/, no build step, nothing fetched from elsewhere) that talks to
the admin API with the operator's bearer token (kept in the tab's sessionStorage) and the CSRF
token /api/v1/whoami gives. A strict Content-Security-Policy allows only this server's own
script; the script puts every value in the page as text (never as HTML). On plain HTTP `/` says
where the dashboard is and serves nothing else of it."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from netbootd.servers.web import CFG

UI = Path(__file__).resolve().parent / "ui"
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def root(request: web.Request) -> web.Response:
    if not request.secure:
        port = request.app[CFG].https.port
        return web.Response(text=f"netbootd: the dashboard and the admin API are on the HTTPS "
                            f"port ({port}): https://<this server>:{port}/\n",
                            headers={"Cache-Control": "no-store"})
    raise web.HTTPFound("/ui/")


async def ui_file(request: web.Request) -> web.Response:
    if not request.secure:
        raise web.HTTPForbidden(text="the dashboard is served over HTTPS only\n")
    name = request.match_info.get("name") or "index.html"
    if name not in FILES:
        raise web.HTTPNotFound(text="no such file\n")
    return web.Response(body=(UI / name).read_bytes(), content_type=FILES[name],
                        charset="utf-8", headers=HEADERS)


def register(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/ui/", ui_file)
    app.router.add_get("/ui/{name}", ui_file)
