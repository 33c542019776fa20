"""The HTTP handlers with branches, in process: aiohttp's test server and client on a temporary
SQLite store (no daemon, no subprocess). Every branch of `boot_script`, `host_event` and
`identity_bundle`, and `explain` printing byte for byte the script the server sends."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from netbootd import tokens
from netbootd.cli import explain
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config, HttpConfig, HttpsConfig
from netbootd.identity import tls, vault
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.tls import ServerTls
from netbootd.identity.vault import Vault
from netbootd.leases import Leases
from netbootd.model import Artifact, BootMode, IdentityToken, MacAddress, RoleBoot
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.http import make_app
from netbootd.servers.web import GUARD, RENDERER, Guard, IdentityService
from netbootd.store import Store

REPO = Path(__file__).resolve().parents[2]
MAC = MacAddress.parse("52:54:00:12:34:56")
OTHER = MacAddress.parse("52:54:00:aa:bb:cc")
NONCE = bytes(range(16))
KERNEL, INITRD = Artifact("a" * 64, 1000), Artifact("b" * 64, 2000)


@dataclass
class Env:
    state: Path
    store: Store
    svc: IdentityService
    cfg: Config
    http: TestClient
    https: TestClient

    @property
    def now(self) -> float:
        """The handlers' clock, fixed when the fixture started: tokens are reproducible."""
        return self.svc.clock()

    def token(self, mac: MacAddress = MAC, ip: str = "127.0.0.1",
              issued: float | None = None) -> str:
        """The boot token the server mints for `mac` fetching its script from `ip`."""
        return tokens.mint_boot(self.svc.secret, mac, ip,
                                self.now if issued is None else issued, NONCE)

    def identity_token(self, mac: MacAddress = MAC) -> str:
        return tokens.mint(self.svc.secret, mac, NONCE)

    def events(self, name: str) -> list:
        return [e for e in self.store.events() if e.event == name]


@pytest.fixture
def binding() -> str:
    """security.boot_binding of the test's server: requester, as a server without proxyDHCP
    (tests/unit/test_http_handlers.py's DHCP-binding tests override it)."""
    return "requester"


@pytest.fixture
async def env(tmp_path: Path, binding: str) -> AsyncIterator[Env]:
    started = float(int(time.time()))
    state = tmp_path / "state"
    store = Store(state)
    store.add_generation("web", KERNEL, [INITRD], "console=ttyS0 quiet", "import")
    store.enroll(MAC, "web", hostname="web1")
    tls.ensure(state, ["127.0.0.1"])
    keys = Vault(state)
    svc = IdentityService(keys=keys, tls=ServerTls(state), arp=ArpVerifier("never"),
                          secret=keys.token_secret(), token_ttl=600, nonce=lambda: NONCE,
                          clock=lambda: started)
    cfg = Config(state_dir=state, advertise_address="127.0.0.1",
                 templates_dir=REPO / "ipxe-templates", security={"boot_binding": binding})

    guard = Guard(Leases(cfg.security.dhcp_window))  # one, shared by both ports, as in serve

    def app():
        return make_app(cfg, store, Artifacts(state), ScriptRenderer(cfg.templates_dir), svc,
                        guard)

    https_server = TestServer(app(), host="127.0.0.1")
    await https_server.start_server(ssl=svc.tls.context)
    http_server = TestServer(app(), host="127.0.0.1")
    await http_server.start_server()
    svc.https_port = https_server.port
    # explain reads the ports from the config; the server from the socket the client used
    cfg_ports = cfg.model_copy(update={"http": HttpConfig(port=http_server.port),
                                       "https": HttpsConfig(port=https_server.port)})
    async with TestClient(http_server) as http, TestClient(https_server) as https:
        yield Env(state, store, svc, cfg_ports, http, https)
    store.close()


async def script(env: Env, mac: str = "52-54-00-12-34-56") -> tuple[int, str]:
    r = await env.http.get(f"/boot/{mac}.ipxe")
    return r.status, await r.text()


def explained(env: Env) -> explain.Script:
    return explain.script(env.store, env.cfg, ScriptRenderer(env.cfg.templates_dir), MAC,
                          boot_token=env.token(),
                          identity_token=env.identity_token(),
                          pin=env.svc.tls.pin if env.svc.tls else None)


# -- explain == the server ----------------------------------------------------------------


@pytest.mark.parametrize("setup", ["plain", "identity", "reprovision", "pinned", "role-flag",
                                   "local"])
async def test_explain_prints_the_script_the_server_sends(env: Env, setup: str) -> None:
    if setup in ("identity", "reprovision"):
        vault.create_identity(env.store, env.svc.keys, env.store.host(MAC), arm=True,
                              event="keys-generated")
    if setup == "reprovision":
        env.store.arm_provision([MAC], 3600, 3)
    if setup == "pinned":
        env.store.add_generation("web", KERNEL, [INITRD, KERNEL], "console=tty0", "import")
        env.store.pin(MAC, 1)
    if setup == "role-flag":
        env.store.set_provision_flag("web", "homelab.wipe=yes")
        env.store.arm_provision([MAC], 3600, 3)
    if setup == "local":
        env.store.set_role_boot(RoleBoot("web", BootMode.LOCAL, local="sanboot"))
    expected = explained(env)  # before the server counts the boot
    status, text = await script(env)
    assert status == 200 and expected.status == 200
    assert text == expected.text  # byte for byte, through lookup + policy.script_plan
    if setup != "local":  # the local-disk template boots no kernel, so has no command line
        assert f"netbootd.boot={env.token()}" in text
    if setup == "identity":
        assert f"netbootd.identity=https://127.0.0.1:{env.svc.https_port}/identity/" in text
        assert f"netbootd.pin={env.svc.tls.pin}" in text
    if setup == "reprovision":
        assert text.count("netbootd.provision_disks=1") == 1
        assert env.store.provision(MAC).boots == 1  # the server counted it; explain did not
    if setup == "role-flag":
        assert "homelab.wipe=yes" in text and "netbootd.provision_disks" not in text
    if setup == "pinned":
        assert "generation 1" in text and "initrd1" not in text
    if setup == "local":
        assert "sanboot --no-describe --drive 0x80" in text


async def test_explain_of_an_unknown_mac_is_the_404_script(env: Env) -> None:
    unknown = MacAddress.parse("52:54:00:00:00:01")
    s = explain.script(env.store, env.cfg, ScriptRenderer(env.cfg.templates_dir), unknown)
    status, text = await script(env, unknown.hyphen)
    assert (status, text) == (s.status, s.text) == (404, text)


# -- boot_script ---------------------------------------------------------------------------


async def test_boot_script_branches(env: Env, tmp_path: Path) -> None:
    status, text = await script(env, "not-a-mac")
    assert status == 400 and text.startswith("#!ipxe\n")
    status, text = await script(env, "52-54-00-00-00-01")
    assert status == 404 and "not enrolled" in text
    r = await env.http.get("/boot/52-54-00-12-34-56.ipxe")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    # an armed identity is offered only where HTTPS runs
    vault.create_identity(env.store, env.svc.keys, env.store.host(MAC), arm=True,
                          event="keys-generated")
    _, text = await script(env)
    assert "netbootd.identity=" in text and len(env.events("identity-issued")) == 1
    env.svc.tls = None
    _, text = await script(env)
    assert "netbootd.identity=" not in text and len(env.events("identity-issued")) == 1
    # a pin to a generation the role no longer has is a server error, never "unknown"
    env.store.add_generation("web", KERNEL, [INITRD], "", "import")
    env.store.pin(MAC, 2)
    env.store._db.execute("DELETE FROM generations WHERE role='web' AND number=2")
    status, text = await script(env)
    assert status == 500 and "server error" in text
    # a broken store is a server error too
    env.store.close()
    status, text = await script(env)
    assert status == 500 and "server error" in text


async def test_boot_script_template_error_is_500(env: Env, tmp_path: Path) -> None:
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "default.ipxe.j2").write_text("#!ipxe\n{{ no_such_value }}\n")
    (broken / "unknown.ipxe.j2").write_text("#!ipxe\nexit 1\n")
    renderer = env.http.server.app[RENDERER]
    renderer.env.loader = ScriptRenderer(broken).env.loader  # the operator broke the template
    status, text = await script(env)
    assert status == 500 and "server error" in text


# -- host_event ----------------------------------------------------------------------------


async def post(env: Env, body: object, mac: str = "52-54-00-12-34-56",
               raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    r = await env.http.post(f"/api/v1/hosts/{mac}/events", data=data)
    return r.status, json.loads(await r.text())


async def test_host_event_refusals(env: Env) -> None:
    assert (await post(env, {"event": "booted"}, mac="zz"))[0] == 400
    assert (await post(env, None, raw=b"x" * (17 * 1024)))[0] == 413
    assert (await post(env, None, raw=b"{not json"))[0] == 400
    assert (await post(env, ["booted"]))[0] == 400
    status, body = await post(env, {"event": "reboot-now"})
    assert status == 400 and "booted" in body["known"]
    assert (await post(env, {"event": "booted", "token": 7}))[0] == 400
    assert (await post(env, {"event": "booted"}, mac="52-54-00-00-00-01"))[0] == 404
    # no token: nothing changes, and it is audited as unauthenticated (401)
    assert (await post(env, {"event": "provisioned"}))[0] == 401
    assert (await post(env, {"event": "booted"}))[0] == 401
    # a tampered token, another host's, one bound to another address, an expired one: 403
    bad = env.token()[:-2] + ("AA" if not env.token().endswith("AA") else "BB")
    assert (await post(env, {"event": "booted", "token": bad}))[0] == 403
    env.store.enroll(OTHER, "web")
    assert (await post(env, {"event": "booted", "token": env.token(OTHER)}))[0] == 403
    assert (await post(env, {"event": "booted", "token": env.token(ip="10.0.0.5")}))[0] == 403
    old = env.token(issued=env.now - env.cfg.security.boot_token_ttl - 1)
    assert (await post(env, {"event": "booted", "token": old}))[0] == 403
    reasons = [e.detail["reason"] for e in env.events("denied")]
    assert reasons[:3] == ["tampered per-boot token", f"the per-boot token is for {OTHER}",
                           "the per-boot token is bound to 10.0.0.5, not 127.0.0.1"]
    assert len(reasons) == 4 and reasons[3].startswith("the per-boot token expired")
    (u,) = env.events("unauthenticated-report")
    assert u.detail["event"] == "provisioned" and u.detail["count"] == 1
    assert env.store.host(MAC).last_boot is None  # none of them moved it


async def test_unauthenticated_reports_are_bounded(env: Env) -> None:
    """A flood of reports without a token (or with refused ones) writes one audit row per MAC
    per interval, however many arrive."""
    for _ in range(200):
        assert (await post(env, {"event": "booted", "pad": "x" * 15000}))[0] == 401
    for i in range(200):
        assert (await post(env, {"event": "booted", "token": env.token(ip="10.9.9.9")}))[0] == 403
        tampered = tokens.mint_boot(bytes(32), MAC, "127.0.0.1", env.now, bytes([i % 256]) * 12)
        assert (await post(env, {"event": "booted", "token": tampered}))[0] == 403
    assert len(env.events("unauthenticated-report")) == 1
    assert len(env.events("denied")) == 2  # the stolen token's refusal, the tampered ones
    assert env.store.host(MAC).last_boot is None


async def test_host_event_accepted_and_provisioned(env: Env) -> None:
    env.store.arm_provision([MAC], 3600, 3)
    await script(env)  # the flagged boot: its token is env.token() (fixed nonce and clock)
    token = env.token()
    status, body = await post(env, {"event": "booted", "token": token, "kernel": "6.1",
                                    "blob": "y" * 5000})
    assert status == 200 and body["boot"] == tokens.boot_id(tokens.digest(token))
    host = env.store.host(MAC)
    assert host.last_boot is not None and host.last_boot_ip == "127.0.0.1"
    (booted,) = env.events("booted")
    assert booted.detail["kernel"] == "6.1" and len(booted.detail["blob"]) == 256
    status, body = await post(env, {"event": "provisioned", "token": token})
    assert status == 200 and env.store.provision(MAC) is None
    assert env.store.host(MAC).last_provisioned is not None
    # a second report with the same token: nothing pending any more
    assert (await post(env, {"event": "provisioned", "token": token}))[0] == 403
    env.store.close()
    assert (await post(env, {"event": "booted", "token": token}))[0] == 500


# -- boots bound to the MAC's own DHCP exchange -----------------------------------------------


@pytest.mark.parametrize("binding", ["dhcp"])
async def test_a_boot_binds_to_the_address_of_its_dhcp_exchange(env: Env) -> None:
    """With boot_binding = dhcp, a script fetch counts as the MAC's boot only from the address
    its own DHCP exchange used: from anywhere else it is served explain-style (no token, no
    flagged boot counted, no identity offered)."""
    vault.create_identity(env.store, env.svc.keys, env.store.host(MAC), arm=True,
                          event="keys-generated")
    env.store.arm_provision([MAC], 3600, 1)
    leases = env.http.server.app[GUARD].leases
    # no DHCP exchange seen: unbound
    status, text = await script(env)
    assert status == 200 and "netbootd.boot=" not in text and "netbootd.identity=" not in text
    assert "netbootd.provision_disks" not in text and "kernel " in text
    # the MAC's DHCP used another address: unbound
    leases.observe(MAC, "10.0.0.7", env.now)
    _, text = await script(env)
    assert "netbootd.boot=" not in text
    assert env.store.provision(MAC).boots == 0 and not env.events("identity-issued")
    # its own exchange: bound, and the flagged boot and the identity token are its
    leases.observe(MAC, "127.0.0.1", env.now + 1)
    # ...but 10.0.0.7 was claimed for it within the window too: a conflict binds nothing
    _, text = await script(env)
    assert "netbootd.boot=" not in text
    env.http.server.app[GUARD].leases = Leases(leases.window)
    env.http.server.app[GUARD].leases.observe(MAC, "127.0.0.1", env.now)
    _, text = await script(env)
    assert f"netbootd.boot={env.token()}" in text and "netbootd.identity=" in text
    assert "netbootd.provision_disks=1" in text
    assert env.store.provision(MAC).boots == 1 and len(env.events("identity-issued")) == 1
    # the window passed: unbound again
    later = env.now + env.cfg.security.dhcp_window + 5
    env.svc.clock = lambda: later
    _, text = await script(env)
    assert "netbootd.boot=" not in text


# -- identity_bundle -----------------------------------------------------------------------


async def test_identity_bundle_branches(env: Env) -> None:
    vault.create_identity(env.store, env.svc.keys, env.store.host(MAC), arm=True,
                          event="keys-generated")
    _, text = await script(env)
    url = next(w for w in text.split() if w.startswith("netbootd.identity=")).split("=", 1)[1]
    path = url.split(str(env.svc.https_port), 1)[1]
    # plain HTTP: refused, whatever the token
    r = await env.http.get(path)
    assert r.status == 403 and "HTTPS only" in await r.text()
    r = await env.https.get("/identity/not-a-token", ssl=False)
    assert r.status == 403
    r = await env.https.get(path, ssl=False)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(await r.read()))) as tar:
        names = set(tar.getnames())
    assert "etc/ssh/ssh_host_ed25519_key" in names and "etc/machine-id" in names
    r = await env.https.get(path, ssl=False)  # once only
    assert r.status == 403
    assert env.store.identity_state(MAC).armed is False
    # a token bound to another requester's address
    env.store.arm_identity(MAC, armed=True)
    other = tokens.mint(env.svc.secret, MAC, bytes(16))
    now = env.now
    env.store.issue_token(IdentityToken(tokens.digest(other), MAC, "10.0.0.9", now, now + 60))
    r = await env.https.get(f"/identity/{other}", ssl=False)
    assert r.status == 403
    reasons = [e.detail["reason"] for e in env.events("identity-denied")]
    assert reasons[0].startswith("plain HTTP") and reasons[1] == "malformed token"
    assert reasons[2].startswith("token already used")
    assert reasons[3] == "wrong source IP (token issued to 10.0.0.9)"
    env.store.close()
    r = await env.https.get(path, ssl=False)
    assert r.status == 500


# -- artifacts: Range (issue #13, finding 13) ---------------------------------------------------


@pytest.mark.parametrize(("rng", "status", "want"), [
    ("bytes=-0", 416, None),  # RFC 7233 2.1: a zero suffix-length is unsatisfiable
    ("bytes=-000", 416, None),
    ("BYTES=-0", 416, None),
    ("bytes=-1", 206, slice(-1, None)),
    ("bytes=0-", 206, slice(0, None)),
    ("bytes=10-19", 206, slice(10, 20)),
    ("bytes=-10", 206, slice(-10, None)),
    ("bytes=5000-", 416, None),
])
async def test_artifact_range(env: Env, rng: str, status: int, want: slice | None) -> None:
    body = bytes(range(256)) * 4
    path = Artifacts(env.state).path(KERNEL.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    r = await env.http.get(f"/artifacts/{KERNEL.sha256}/kernel", headers={"Range": rng})
    assert r.status == status
    if want is None:
        assert r.headers["Content-Range"] == f"bytes */{len(body)}"
    else:
        assert await r.read() == body[want]


async def test_a_report_split_across_segments_is_read_whole(env: Env) -> None:
    """A body that arrives in several pieces (a slow link, a small MSS) is one report: reading
    only the first chunk answered "body is not JSON"."""

    async def pieces():
        body = json.dumps({"event": "booted", "token": env.token(), "kernel": "6.1" + " " * 3000})
        for i in range(0, len(body), 100):
            yield body[i:i + 100].encode()
            await asyncio.sleep(0.01)

    r = await env.http.post("/api/v1/hosts/52-54-00-12-34-56/events", data=pieces())
    assert r.status == 200, await r.text()
    assert env.store.host(MAC).last_boot is not None
