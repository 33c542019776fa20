"""The discovery handlers in process (aiohttp's test server on a temporary store): an unknown
MAC's discovery script and its token binding, and POST /api/v1/discovery -- 401 without a valid
token (audited), 403 for a document about another machine, 413, the happy path, a discovery
rule enrolling at once, an enrolled host's inventory history."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from netbootd import tokens
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.vault import Vault
from netbootd.leases import Leases
from netbootd.model import Artifact, MacAddress
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.http import make_app
from netbootd.servers.web import Guard, IdentityService
from netbootd.store import Store
from tests.unit.test_inventory import DOC

REPO = Path(__file__).resolve().parents[2]
MAC = MacAddress.parse(DOC["nics"][0]["mac"])
NONCE = bytes(range(16))
KERNEL, INITRD = Artifact("a" * 64, 1000), Artifact("b" * 64, 2000)


@dataclass
class Env:
    store: Store
    svc: IdentityService
    http: TestClient
    guard: Guard
    clock: list[float]

    def tick(self, seconds: float) -> None:
        self.clock[0] += seconds

    def token(self, mac: MacAddress = MAC, ip: str = "127.0.0.1") -> str:
        return tokens.mint_boot(self.svc.secret, mac, ip, self.svc.clock(), NONCE)


@pytest.fixture
def binding() -> str:
    return "requester"


@pytest.fixture
async def env(tmp_path: Path, binding: str) -> AsyncIterator[Env]:
    clock = [float(int(time.time()))]
    store = Store(tmp_path)
    store.add_generation("web", KERNEL, [INITRD], "console=ttyS0", "import")
    store.add_generation("discovery", KERNEL, [INITRD], "console=ttyS0 quiet", "import")
    keys = Vault(tmp_path)
    svc = IdentityService(keys=keys, tls=None, arp=ArpVerifier("never"),
                          secret=keys.token_secret(), token_ttl=600, nonce=lambda: NONCE,
                          clock=lambda: clock[0])
    cfg = Config(state_dir=tmp_path, advertise_address="127.0.0.1",
                 templates_dir=REPO / "ipxe-templates", security={"boot_binding": binding},
                 dhcp={"unknown_policy": "discover"},
                 discovery={"max_records": 2, "max_report": 8192})
    guard = Guard(Leases(cfg.security.dhcp_window))
    server = TestServer(make_app(cfg, store, Artifacts(tmp_path),
                                 ScriptRenderer(cfg.templates_dir), svc, guard),
                        host="127.0.0.1")
    await server.start_server()
    async with TestClient(server) as http:
        yield Env(store, svc, http, guard, clock)
    store.close()


def report(mac: MacAddress = MAC, **system: str) -> dict:
    d = copy.deepcopy(DOC)
    d["nics"][0]["mac"] = str(mac)
    d["system"].update(system)
    return d


async def test_unknown_mac_gets_the_discovery_boot_with_a_bound_token(env: Env) -> None:
    r = await env.http.get(f"/boot/{MAC.hyphen}.ipxe")
    text = await r.text()
    assert r.status == 200
    assert re.search(r"netbootd\.discovery=http://127\.0\.0\.1:\d+/api/v1/discovery ", text)
    assert "netbootd.discovery.action=poweroff" in text
    assert f"netbootd.boot={env.token()}" in text


@pytest.mark.parametrize("binding", ["dhcp"])
async def test_discovery_boot_without_its_dhcp_exchange_has_no_token(env: Env) -> None:
    r = await env.http.get(f"/boot/{MAC.hyphen}.ipxe")
    assert r.status == 200 and "netbootd.boot=" not in await r.text()
    env.guard.leases.observe(MAC, "127.0.0.1", env.svc.clock(), known=False)
    r = await env.http.get(f"/boot/{MAC.hyphen}.ipxe")
    assert f"netbootd.boot={env.token()}" in await r.text()


async def test_no_discovery_image_is_a_server_error(env: Env, tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path, advertise_address="127.0.0.1",
                 templates_dir=REPO / "ipxe-templates", dhcp={"unknown_policy": "discover"},
                 discovery={"role": "nothing"})
    app = make_app(cfg, env.store, Artifacts(tmp_path), ScriptRenderer(cfg.templates_dir),
                   env.svc, env.guard)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        r = await http.get(f"/boot/{MAC.hyphen}.ipxe")
        assert r.status == 500


async def test_report_without_a_valid_token_is_401_and_audited(env: Env) -> None:
    for body in ({"inventory": report()}, {"token": "garbage", "inventory": report()},
                 {"token": env.token(ip="10.9.9.9"), "inventory": report()}):
        r = await env.http.post("/api/v1/discovery", json=body)
        assert r.status == 401
    assert env.store.discovered() == []
    audits = [e for e in env.store.events() if e.event == "unauthenticated-report"]
    assert len(audits) == 1 and audits[0].mac is None  # one row per address and interval
    assert audits[0].detail["event"] == "discovery"


async def test_report_about_another_machine_is_403(env: Env) -> None:
    r = await env.http.post("/api/v1/discovery", json={
        "token": env.token(), "inventory": report(MacAddress.parse("52:54:00:00:00:99"))})
    assert r.status == 403 and env.store.discovered() == []


async def test_bad_and_big_reports(env: Env) -> None:
    r = await env.http.post("/api/v1/discovery", json={"token": env.token(),
                                                       "inventory": {"schema": "x"}})
    assert r.status == 400
    r = await env.http.post("/api/v1/discovery", data=b"{" + b" " * 9000 + b"}",
                            headers={"Content-Type": "application/json"})
    assert r.status == 413


async def test_report_is_stored_then_enroll_by_rule(env: Env) -> None:
    r = await env.http.post("/api/v1/discovery", json={"token": env.token(),
                                                       "inventory": report()})
    assert r.status == 200 and (await r.json())["discovered"] == "new"
    (d,) = env.store.discovered()
    assert d.mac == MAC and d.source_ip == "127.0.0.1"
    assert d.boot == tokens.boot_id(tokens.digest(env.token()))
    # a second machine, matched by a disk serial prefix: enrolled without an operator
    other = MacAddress.parse("52:54:00:de:00:07")
    env.store.add_rule("lab", {"disk_serial": "NBD-DISK-*"}, "web", "node-{n}", 0.0)
    r = await env.http.post("/api/v1/discovery", json={"token": env.token(other),
                                                       "inventory": report(other)})
    body = await r.json()
    assert r.status == 200 and body["enrolled"] and body["hostname"] == "node-1"
    host = env.store.host(other)
    assert host is not None and host.role == "web" and host.hostname == "node-1"
    assert [x.mac for x in env.store.discovered()] == [MAC]
    assert env.store.inventory(other) is not None  # its discovery became its first inventory
    assert env.store.rules()[0].enrolled == 1


async def test_enrolled_host_reports_build_a_history(env: Env) -> None:
    env.store.enroll(MAC, "web", hostname="web1")
    for serial in ("NBD-DISK-A", "NBD-DISK-A", "NBD-DISK-Z"):
        doc = report()
        doc["disks"][0]["serial"] = serial
        r = await env.http.post("/api/v1/discovery", json={"token": env.token(),
                                                           "inventory": doc})
        assert r.status == 200
    hist = env.store.inventory_history(MAC)
    assert len(hist) == 2 and any("NBD-DISK-Z" in c for c in hist[0].changes)
    assert env.store.discovered() == []
    # and its script's template context has it
    r = await env.http.get(f"/boot/{MAC.hyphen}.ipxe")
    assert r.status == 200


async def test_discovered_table_is_bounded(env: Env) -> None:
    codes = []
    for n in range(4):
        mac = MacAddress(bytes([2, 0, 0, 0, 1, n]))
        r = await env.http.post("/api/v1/discovery", json={"token": env.token(mac),
                                                           "inventory": report(mac)})
        codes.append(r.status)
        env.tick(2.0)
    assert codes == [200, 200, 503, 503] and len(env.store.discovered()) == 2


async def test_reports_are_rate_limited_per_address(env: Env) -> None:
    codes = [(await env.http.post("/api/v1/discovery", json={})).status for _ in range(8)]
    assert codes[:5] == [400] * 5 and 429 in codes[5:]
