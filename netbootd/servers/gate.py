"""What the HTTP adapters (servers/http.py, servers/chain_http.py) share about the boot chain:
the transport check of a host's script or UKI request, and how EFI files are answered."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiohttp import web

from netbootd import lookup, policy
from netbootd.config import Config
from netbootd.model import ScriptInputs
from netbootd.servers.web import GUARD, Audit
from netbootd.store import Store

log = logging.getLogger("netbootd.http")
EFI_CONTENT_TYPE = "application/efi"


def transport_refused(store: Store, cfg: Config, request: web.Request, inputs: ScriptInputs,
                      what: str, https_up: bool) -> str | None:
    """Why this request may not be answered on its transport (a role with transport https over
    plain HTTP), audited as a `denied` event (bounded: the guard's interval); None: answer it."""
    chain = lookup.boot_chain(store, cfg, inputs.host, False)
    verdict = policy.transport_verdict(chain, request.secure, https_up)
    if verdict.ok:
        return None
    mac = inputs.host.mac
    # one row (and one log line) per host, kind and reason an interval, the rest counted in
    # the guard's summary row: anyone on the LAN can send a host's plain-HTTP requests
    written = request.app[GUARD].audit(
        store, ("transport", mac, what, verdict.reason), time.time(),
        Audit("denied", mac, request.remote, {"what": what, "reason": verdict.reason}))
    if written is not None:
        log.warning("mac=%s peer=%s %s refused: %s", mac, request.remote, what, verdict.reason)
    return verdict.reason


def efi_file(path: Path) -> web.FileResponse:
    """An EFI executable as UEFI HTTP boot wants it: EDK2 asks HEAD first and needs 200 with a
    Content-Length (aiohttp answers HEAD on every GET route), and takes the image only as
    `application/efi` or from a path ending in `.efi` (measured); say it either way."""
    resp = web.FileResponse(path)
    resp.headers["Content-Type"] = EFI_CONTENT_TYPE
    return resp
