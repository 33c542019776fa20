"""HTTP(S) routes of the boot chain: `/uki/<mac>.efi`, the host's per-boot unified kernel image
for UEFI HTTP(S) boot (roles/uki.py assembles, identity/secureboot.py signs), and for roles whose
loader is shim the host's directory `/uki/<mac>/`: `shimx64.efi` (boot.shim, Debian's
Microsoft-signed shim, served as is) and `grubx64.efi`, the name shim loads its second stage by
(the same per-boot UKI as `/uki/<mac>.efi`, through the same handler). shim asks for that as
`<dir>//grubx64.efi` (measured) and probes a few optional files (PROBES): those are 404 with a
debug line; any other name is 404 too (one info line a minute). Refusals are audited through the
guard (one `denied` row per host, request kind and reason an interval).

Thin, like servers/http.py (whose app keys and token helpers it shares): parse, look up, ask the
policy (transport, Secure Boot), assemble, answer. EDK2 sends HEAD before GET: HEAD answers the
length the GET will have and mints nothing; the GET mints the boot's tokens exactly as a script
request does (a boot is counted, an armed identity is offered) and carries them on the UKI's
command line. Registered by app.py on the HTTP server's application.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from netbootd import lookup, policy
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.fmt import human_size
from netbootd.identity.secureboot import Signer
from netbootd.model import (
    SHIM_NAME,
    SHIM_SECOND_STAGE,
    Image,
    Loader,
    MacAddress,
    SecureBootRule,
)
from netbootd.ratelimit import PerKey
from netbootd.roles.uki import MACHINE_ARM64, Template, UkiBuilder, pe_machine
from netbootd.servers.gate import EFI_CONTENT_TYPE, efi_file, transport_refused
from netbootd.servers.http import _urls, bind_boot, ident_up
from netbootd.servers.web import CFG, GUARD, STORE, Audit, local_ip, mac_of

log = logging.getLogger("netbootd.http")
# What Debian's shim 16.1 asks for beside its second stage, each optional (a 404 is what it
# expects when there is none): SBAT and SKU revocation updates and an extra certificate
# (measured: tests/e2e/test_e2e_shim.py prints what it probed)
PROBES = frozenset({"revocations_sbat.efi", "revocations_sku.efi", "shim_certificate_0.efi"})
MOK_MANAGER = "mmx64.efi"  # shim loads MokManager from here when a MOK enrollment is pending


@dataclass
class ChainService:
    builder: UkiBuilder
    stub: Path
    state_dir: Path
    stub_arm64: Path | None = None
    shim: Path | None = None  # boot.shim
    signed_sizes: dict[Path, int] = field(default_factory=dict)
    # other names asked for in /uki/<mac>/: one info line a minute (anyone can ask)
    odd_names: PerKey = field(default_factory=lambda: PerKey(60.0))
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
    try:
        mac = mac_of(request)
    except InvalidInput:
        raise web.HTTPNotFound(text="no such UKI\n") from None
    return await _uki(request, mac, "uki")


async def shim_dir(request: web.Request) -> web.StreamResponse:
    """`/uki/<mac>/<name>`: shim (`shimx64.efi`), the UKI as its second stage
    (`grubx64.efi`, also as `/grubx64.efi`: shim joins the directory and the name with a
    slash of its own), or 404 for anything else (shim's optional probes quietly)."""
    try:
        mac = mac_of(request)
    except InvalidInput:
        raise web.HTTPNotFound(text="no such file\n") from None
    name = request.match_info["name"].lstrip("/")
    if name == SHIM_SECOND_STAGE:
        return await _uki(request, mac, "shim-uki")
    if name == SHIM_NAME:
        return await _uki(request, mac, "shim")
    svc = request.app[CHAIN]
    if name in PROBES:
        log.debug("mac=%s peer=%s shim probed %s: 404 (optional)", mac, request.remote, name)
    elif name == MOK_MANAGER:
        log.warning("mac=%s peer=%s shim asked for MokManager (%s): a MOK enrollment is pending "
                    "on this machine; netbootd does not serve MokManager (enroll it from a "
                    "local boot, README \"Machines that keep Microsoft's keys\")", mac,
                    request.remote, MOK_MANAGER)
    elif svc.odd_names.admit("shim-dir", time.monotonic()):
        log.info("mac=%s peer=%s asked for %r in its shim directory: 404", mac, request.remote,
                 name[:64])
    raise web.HTTPNotFound(text="no such file\n")


async def _uki(request: web.Request, mac: MacAddress, what: str) -> web.StreamResponse:
    """The host's per-boot UKI (`what` "uki" or "shim-uki"), or shim (`what` "shim"): the
    transport gate, the Secure Boot rule and for the shim path its verdict, then the file."""
    peer = request.remote
    store, cfg, svc = request.app[STORE], request.app[CFG], request.app[CHAIN]
    try:
        inputs = lookup.script_inputs(store, cfg, mac, local_ip(request))
        if inputs is None:
            log.info("mac=%s peer=%s asked for %s: not enrolled", mac, peer,
                     "shim" if what == "shim" else "a UKI")
            raise web.HTTPNotFound(text="not enrolled\n")
        if transport_refused(store, cfg, request, inputs, what, ident_up(request)):
            return _refused("this host boots over HTTPS only")
        signer = svc.signer()
        chain = lookup.boot_chain(store, cfg, inputs.host, signer is not None)
        verdicts = [policy.secure_boot_verdict(chain, store.secure_boot_state(mac))]
        if what != "uki":
            if chain.loader is not Loader.SHIM:  # no shim directory for this host
                if svc.odd_names.admit("shim-dir", time.monotonic()):
                    log.info("mac=%s peer=%s asked for %r: its role's loader is not shim: 404",
                             mac, peer, request.path[:80])
                raise web.HTTPNotFound(text="no such file\n")
            verdicts.insert(0, policy.shim_verdict(chain, svc.shim is not None
                                                   and svc.shim.is_file()))
        refusal = next((v for v in verdicts if not v.ok), None)
        if refusal is not None:
            request.app[GUARD].audit(store, ("chain", mac, what, refusal.reason), time.time(),
                                     Audit("denied", mac, peer, {"what": what,
                                                                 "reason": refusal.reason}))
            log.warning("mac=%s peer=%s %s refused: %s", mac, peer,
                        "shim" if what == "shim" else "UKI", refusal.reason)
            return _refused("refused; the reason is in `netbootd events` on the server")
        if what == "shim":
            assert svc.shim is not None
            if request.method != "HEAD":
                log.info("mac=%s peer=%s served shim %s (%s), the UKI follows as %s", mac, peer,
                         svc.shim, human_size(svc.shim.stat().st_size), SHIM_SECOND_STAGE)
            return efi_file(svc.shim)
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
    log.info("mac=%s peer=%s served UKI%s role=%s generation=%d boot=%s %s%s%s", mac, peer,
             f" as shim's {SHIM_SECOND_STAGE}" if what == "shim-uki" else "",
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
    app.router.add_get("/uki/{mac}/{name:.*}", shim_dir)
