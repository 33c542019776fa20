"""HTTP(S) routes of the boot chain: `/uki/<mac>.efi`, the host's per-boot unified kernel image
for UEFI HTTP(S) boot (roles/uki.py assembles, identity/secureboot.py signs).

Thin, like servers/http.py (whose app keys and token helpers it shares): parse, look up, ask the
policy (transport, Secure Boot), assemble, answer. EDK2 sends HEAD before GET: HEAD answers the
length the GET will have and mints nothing; the GET mints the boot's tokens exactly as a script
request does (a boot is counted, an armed identity is offered) and carries them on the UKI's
command line. Registered by app.py on the HTTP server's application.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from netbootd import lookup, policy
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import human_size
from netbootd.identity.secureboot import Signer
from netbootd.model import Image, SecureBootRule
from netbootd.roles.uki import MACHINE_ARM64, Template, UkiBuilder, pe_machine
from netbootd.servers.gate import EFI_CONTENT_TYPE, transport_refused
from netbootd.servers.http import _urls, bind_boot, ident_up
from netbootd.servers.web import CFG, STORE, local_ip, mac_of

log = logging.getLogger("netbootd.http")


@dataclass
class ChainService:
    builder: UkiBuilder
    stub: Path
    state_dir: Path
    stub_arm64: Path | None = None
    signed_sizes: dict[Path, int] = field(default_factory=dict)
    _machines: dict[str, int | None] = field(default_factory=dict)

    def stub_for(self, image: Image) -> Path:
        """systemd's stub for the kernel's architecture (its PE header, read once)."""
        sha = image.kernel.sha256
        if sha not in self._machines:
            self._machines[sha] = pe_machine(self.builder.artifacts.path(sha))
        if self._machines[sha] == MACHINE_ARM64 and self.stub_arm64 is not None:
            return self.stub_arm64
        return self.stub

    def signer(self) -> Signer | None:
        return Signer.load(self.state_dir)  # follows `secureboot init` without a restart


CHAIN = web.AppKey("chain", ChainService)


def _refused(text: str, status: int = 403) -> web.Response:
    return web.Response(text=text + "\n", status=status, headers={"Cache-Control": "no-store"})


async def uki_image(request: web.Request) -> web.StreamResponse:
    peer = request.remote
    try:
        mac = mac_of(request)
    except InvalidInput:
        raise web.HTTPNotFound(text="no such UKI\n") from None
    store, cfg, svc = request.app[STORE], request.app[CFG], request.app[CHAIN]
    try:
        inputs = lookup.script_inputs(store, cfg, mac, local_ip(request))
        if inputs is None:
            log.info("mac=%s peer=%s asked for a UKI: not enrolled", mac, peer)
            raise web.HTTPNotFound(text="not enrolled\n")
        if transport_refused(store, cfg, request, inputs, "uki", ident_up(request)):
            return _refused("this host boots over HTTPS only")
        signer = svc.signer()
        chain = lookup.boot_chain(store, cfg, inputs.host, signer is not None)
        sb = policy.secure_boot_verdict(chain, store.secure_boot_state(mac))
        if not sb.ok:
            store.audit(mac, "denied", peer, {"what": "uki", "reason": sb.reason})
            log.warning("mac=%s peer=%s UKI refused: %s", mac, peer, sb.reason)
            return _refused("refused; the reason is in `netbootd events` on the server")
        template = await asyncio.to_thread(svc.builder.template, inputs.image,
                                           svc.stub_for(inputs.image))
        if request.method == "HEAD":
            size = await _size(svc, template, signer)
            return web.Response(status=200, headers={"Content-Type": EFI_CONTENT_TYPE,
                                                     "Content-Length": str(size),
                                                     "Cache-Control": "no-store"})
        token, boot, flag_on, offer = bind_boot(request, inputs)
        plan = policy.script_plan(inputs, _urls(inputs.server, request), offer, token, flag_on)
        if chain.secure_boot is SecureBootRule.REQUIRED:
            plan_cmdline = policy.uki_cmdline(plan) + " netbootd.secure_boot=required"
        else:
            plan_cmdline = policy.uki_cmdline(plan)
        body = template.assemble(plan_cmdline)
        if signer is not None:
            body = await asyncio.to_thread(signer.sign, body)
    except NetbootdError as e:
        log.error("mac=%s peer=%s cannot serve UKI: %s", mac, peer, e)
        return _refused("server error, see the netbootd log", 500)
    log.info("mac=%s peer=%s served UKI role=%s generation=%d boot=%s %s%s%s", mac, peer,
             inputs.image.role, inputs.image.generation, boot, human_size(len(body)),
             " signed" if signer is not None else " unsigned", " with identity" if offer else "")
    return web.Response(body=body, headers={"Content-Type": EFI_CONTENT_TYPE,
                                            "Cache-Control": "no-store"})


async def _size(svc: ChainService, template: Template, signer: Signer | None) -> int:
    """The length a GET of this template will have: fixed-size command line, and for a signed
    image the certificate table sbsign appends (the same size for every boot: one key)."""
    if signer is None:
        return template.size
    size = svc.signed_sizes.get(template.path)
    if size is None:
        size = len(await asyncio.to_thread(signer.sign, template.assemble("")))
        svc.signed_sizes[template.path] = size
    return size


def register(app: web.Application, svc: ChainService) -> None:
    app[CHAIN] = svc
    app.router.add_get("/uki/{mac}.efi", uki_image)
