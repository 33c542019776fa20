"""`GET /identity/<token>` and `/keys/<host>.tar.gz?token=`: a host's identity bundle, once, over
HTTPS, to the address and machine its token was issued to (`policy.identity_release`, decided
inside the transaction that consumes the token: `store.redeem_token`). Refusals are audited
through the guard's limiters. Log lines carry fingerprints and a token's digest prefix, never key
material or a whole token.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from netbootd import policy, stats, tokens
from netbootd.errors import NetbootdError
from netbootd.fmt import printable
from netbootd.identity import hostkeys, vault
from netbootd.model import MacAddress
from netbootd.servers.web import GUARD, IDENTITY, STORE, Audit, local_ip
from netbootd.tokens import TokenStatus

log = logging.getLogger("netbootd.http")


REFUSED = "identity refused; the reason is in `netbootd events` on the server\n"


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
    guard = request.app[GUARD]

    def refuse(mac: MacAddress | None, key: object, kind: str, reason: str,
               boot: str | None = None) -> None:
        """Audit a refusal decided before the redemption: one row per key and kind of refusal
        per interval (the rest counted in a summary)."""
        stats.inc("identity_denied", kind if kind in ("http", "release") else "token")
        row = Audit("identity-denied", mac, peer,
                    {**where, "reason": reason, "token": claim.short}, boot)
        n = guard.audit(store, ("identity", key, kind), time.time(), row)
        if n is not None:
            log.warning("mac=%s peer=%s identity refused: %s (%d in this interval)",
                        mac or "-", printable(peer), reason, n)

    try:
        if not request.secure:
            refuse(claim.mac if claim.status is TokenStatus.VALID else None, peer, "http",
                   "plain HTTP (the identity is served over HTTPS only)")
            return _refused(403, "the identity is served over HTTPS only\n")
        if claim.status is not TokenStatus.VALID:
            refuse(claim.mac, peer, claim.status, f"{claim.status} token")
            return _refused()
        mac = claim.mac
        assert mac is not None and claim.digest is not None
        # A first look without side effects: only a request that would be allowed gets an ARP
        # question and has its bundle read, so a failure to read keys never burns the token.
        host, state, issued = store.host(mac), store.identity_state(mac), store.token(claim.digest)
        pre = policy.identity_release(issued, host, state, peer, time.time(), requested_name=name)
        if not pre.ok:
            refuse(mac, claim.digest, "release", pre.reason, issued.boot if issued else None)
            return _refused()
        arp = await svc.arp.check(peer, mac, local_ip(request))
        body = pub = None
        pub = store.identity(mac)
        if pub is not None and not pub.ssh_rsa:  # bulk-enrolled, RSA key not made yet
            pub = await asyncio.to_thread(vault.complete_rsa, store, svc.keys, pub)
            log.info("mac=%s RSA host key made on first need", mac)
        if pub is not None:
            body = hostkeys.bundle(svc.keys.read(pub), pub.created)
        decision, state = store.redeem_token(
            claim.digest, mac, peer, time.time(),
            lambda t, h, st: policy.identity_release(
                t, h, st, peer, time.time(), arp, requested_name=name
            ),
            {**where, "arp": f"{arp.result} ({arp.note})"},
        )
        if not decision.ok:
            stats.inc("identity_denied", "release")
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
    stats.inc("identity_delivered")
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
