"""The shim directory `/uki/<mac>/` (servers/chain_http.py), in process: aiohttp's test server
on a temporary store, the real UKI pipeline (systemd's stub, objcopy, sbsign). shimx64.efi is
boot.shim as is (HEAD with its Content-Length), grubx64.efi (also as shim asks for it,
`<dir>//grubx64.efi`) is the per-boot signed UKI of /uki/<mac>.efi, shim's optional probes and
every other name are 404; refused without signing keys, without the shim binary, over plain
HTTP for a transport-https role; no directory for a role whose loader is not shim."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from netbootd.cli import main
from netbootd.codec import pe
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.identity import secureboot, tls
from netbootd.identity.arp import ArpVerifier
from netbootd.identity.tls import ServerTls
from netbootd.identity.vault import Vault
from netbootd.leases import Leases
from netbootd.model import Loader, MacAddress, RoleChain, Transport
from netbootd.roles.artifacts import Artifacts
from netbootd.roles.uki import UkiBuilder
from netbootd.servers import chain_http
from netbootd.servers.chain_http import PROBES, ChainService
from netbootd.servers.http import make_app
from netbootd.servers.web import GUARD, Guard, IdentityService
from netbootd.store import Store

REPO = Path(__file__).resolve().parents[2]
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
MAC = MacAddress.parse("52:54:00:12:34:56")
DIR = f"/uki/{MAC.hyphen}"
SHIM_BYTES = b"MZ" + b"shim, Microsoft-signed" * 5000
pytestmark = pytest.mark.skipif(not STUB.exists() or shutil.which("sbsign") is None,
                                reason="needs systemd-boot-efi and sbsigntool (make deps)")


@dataclass
class Env:
    state: Path
    store: Store
    shim: Path
    http: TestClient

    def denied(self) -> list[str]:
        return [str(e.detail.get("reason")) for e in self.store.events() if e.event == "denied"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    state = tmp_path / "state"
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"MZ" + bytes(range(256)) * 4000)  # objcopy does not look inside
    initrd.write_bytes(b"070701" + b"x" * 30_001)
    assert main(["--state-dir", str(state), "role", "add", "web", "--kernel", str(kernel),
                 "--initrd", str(initrd), "--cmdline", "console=ttyS0"]) == 0
    store = Store(state)
    store.enroll(MAC, "web", hostname="web1")
    store.set_role_chain(RoleChain("web", loader=Loader.SHIM))
    shim = tmp_path / "shimx64.efi.signed"
    shim.write_bytes(SHIM_BYTES)
    tls.ensure(state, ["127.0.0.1"])
    keys = Vault(state)
    svc = IdentityService(keys=keys, tls=ServerTls(state), arp=ArpVerifier("never"),
                          secret=keys.token_secret(), token_ttl=600, clock=lambda: time.time())
    cfg = Config(state_dir=state, advertise_address="127.0.0.1",
                 templates_dir=REPO / "ipxe-templates", security={"boot_binding": "requester"},
                 boot={"shim": str(shim)})
    app = make_app(cfg, store, Artifacts(state), ScriptRenderer(cfg.templates_dir), svc,
                   Guard(Leases(cfg.security.dhcp_window)))
    chain_http.register(app, ChainService(UkiBuilder(state, Artifacts(state)), STUB, state,
                                          None, shim))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    svc.https_port = None
    async with TestClient(server) as http:
        yield Env(state, store, shim, http)
    store.close()


async def get(env: Env, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    r = await env.http.request(method, URL(path, encoded=True))
    return r.status, dict(r.headers), await r.read()


async def test_refused_without_signing_keys(env: Env) -> None:
    for name in ("shimx64.efi", "grubx64.efi", "shimx64.efi", "shimx64.efi"):
        status, _, body = await get(env, f"{DIR}/{name}")
        assert status == 403 and b"refused" in body
    # one row per kind and reason an interval (the guard counts the rest for its summary)
    assert len(env.denied()) == 2 and all("no signing keys" in r for r in env.denied())
    status, _, _ = await get(env, f"/uki/{MAC.hyphen}.efi")
    assert status == 200  # the plain UKI path has no such rule (it is served unsigned)


async def test_shim_as_is_and_the_signed_uki_as_grubx64(env: Env, tmp_path: Path) -> None:
    secureboot.init(env.state)
    status, head, body = await get(env, f"{DIR}/shimx64.efi", "HEAD")
    assert status == 200 and body == b""
    assert head["Content-Type"] == "application/efi"
    assert head["Content-Length"] == str(len(SHIM_BYTES))
    status, head, body = await get(env, f"{DIR}/shimx64.efi")
    assert status == 200 and body == SHIM_BYTES  # served as is, never signed by netbootd
    status, head, _ = await get(env, f"{DIR}//grubx64.efi", "HEAD")
    assert status == 200 and head["Content-Type"] == "application/efi"
    for path in (f"{DIR}//grubx64.efi", f"{DIR}/grubx64.efi"):  # what shim asks, and plainly
        status, got, uki = await get(env, path)
        assert status == 200 and got["Content-Type"] == "application/efi"
        assert str(len(uki)) == head["Content-Length"]
        sec = pe.parse(uki).section(".cmdline")
        cmdline = uki[sec.raw_offset : sec.raw_offset + sec.raw_size].decode().strip()
        assert "netbootd.boot=" in cmdline and "console=ttyS0" in cmdline  # a bound boot
        (tmp_path / "uki.efi").write_bytes(uki)
        r = subprocess.run(["sbverify", "--cert", str(secureboot.sb_dir(env.state) / "db.crt"),
                            str(tmp_path / "uki.efi")], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    # the same handler as /uki/<mac>.efi: one more boot's UKI, the same size
    status, _, plain = await get(env, f"/uki/{MAC.hyphen}.efi")
    assert status == 200 and len(plain) == len(uki)
    assert env.denied() == []


@pytest.mark.parametrize("path", [
    *(f"{DIR}/{p}" for p in sorted(PROBES)),
    f"{DIR}/mmx64.efi", f"{DIR}/fbx64.efi",
    f"{DIR}/", f"{DIR}//", f"{DIR}/grubx64.efi/", f"{DIR}/shimx64.efi.signed",
    f"{DIR}/sub/grubx64.efi", f"{DIR}/../../etc/passwd", f"{DIR}/%2e%2e/shimx64.efi",
    f"{DIR}/..%2fshimx64.efi", f"{DIR}/%2fetc%2fpasswd", f"{DIR}/GRUBX64.EFI",
    f"{DIR}/grubx64.efi%00", f"{DIR}/{'a' * 4000}",
    "/uki/not-a-mac/shimx64.efi", "/uki/52-54-00-00-00-01/grubx64.efi",
])
async def test_only_the_two_names_exist(env: Env, path: str) -> None:
    secureboot.init(env.state)
    status, _, body = await get(env, path)
    assert status == 404, (path, status)
    assert b"shim" not in body and not body.startswith(b"MZ")
    assert env.denied() == []


async def test_refused_without_the_shim_binary_or_over_plain_http(env: Env) -> None:
    secureboot.init(env.state)
    env.shim.unlink()
    status, _, _ = await get(env, f"{DIR}/shimx64.efi")
    assert status == 403 and "missing" in env.denied()[-1]
    status, _, _ = await get(env, f"{DIR}/grubx64.efi")
    assert status == 403 and len(env.denied()) == 2
    env.store.set_role_chain(RoleChain("web", Transport.HTTPS, loader=Loader.SHIM))
    env.shim.write_bytes(SHIM_BYTES)
    status, _, _ = await get(env, f"{DIR}/shimx64.efi")
    assert status == 403 and "HTTPS is off" in env.denied()[-1]


async def test_plain_http_refusals_write_one_row_an_interval(env: Env) -> None:
    """Anyone on the LAN can send a transport-https host's requests over plain HTTP: each is
    refused, one `denied` row per host, kind and reason an interval, the rest in its summary."""
    secureboot.init(env.state)
    env.store.set_role_chain(RoleChain("web", Transport.HTTPS, loader=Loader.SHIM))
    for _ in range(25):
        status, _, _ = await get(env, f"{DIR}/shimx64.efi")
        assert status == 403
    for _ in range(5):
        status, _, _ = await get(env, f"/uki/{MAC.hyphen}.efi")  # another kind: its own row
        assert status == 403
    rows = [e for e in env.store.events() if e.event == "denied"]
    assert [(e.detail["what"], e.detail["count"]) for e in rows] == [("shim", 1), ("uki", 1)]
    guard = env.http.server.app[GUARD]
    assert guard.flush(env.store, time.time() + 3600) == 2
    summary = {e.detail["what"]: e.detail["count"] for e in env.store.events()
               if e.event == "denied" and e.detail.get("summary")}
    assert summary == {"shim": 24, "uki": 4}


async def test_no_shim_directory_for_other_roles(env: Env) -> None:
    secureboot.init(env.state)
    env.store.set_role_chain(RoleChain("web"))
    for name in ("shimx64.efi", "grubx64.efi"):
        status, _, _ = await get(env, f"{DIR}/{name}")
        assert status == 404
    status, _, _ = await get(env, f"/uki/{MAC.hyphen}.efi")
    assert status == 200 and env.denied() == []


def test_the_loader_is_stored_and_shown(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert env.store.role_chain("web").loader is Loader.SHIM
    args = ["--state-dir", str(env.state)]
    assert main([*args, "role", "chain", "web", "--loader", "default"]) == 0
    assert env.store.role_chain("web").loader is None
    assert main([*args, "role", "chain", "web", "--loader", "shim"]) == 0
    out = capsys.readouterr().out
    assert "loader shim" in out and "http boot uki" in out
    assert "shim: /usr/lib/shim/shimx64.efi.signed" in out  # the default boot.shim
    assert main([*args, "explain", str(MAC), "--arch", "http", "--advertise-address",
                 "10.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert "UEFI HTTP boot gets shim, then its UKI" in out
    assert "-> grubx64.efi: the per-boot UKI, unsigned (verified by shim against MokList" in out
    assert "REFUSED now: loader shim but netbootd has no signing keys" in out
    assert "file                 http://10.0.0.1/uki/52-54-00-12-34-56/shimx64.efi" in out
    secureboot.init(env.state)
    assert main([*args, "secureboot", "show"]) == 0
    out = capsys.readouterr().out
    assert "db   sha256 " in out and "mokutil --import" in out and "PRIVATE" not in out
    assert main([*args, "secureboot", "export", str(env.state / "out")]) == 0
    out = capsys.readouterr().out
    assert "mokutil --import" in out and "--add-mok " in out


async def test_probes_are_quiet_and_other_names_one_line(env: Env,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    secureboot.init(env.state)
    caplog.set_level("DEBUG", logger="netbootd.http")
    for p in sorted(PROBES):
        assert (await get(env, f"{DIR}/{p}"))[0] == 404
    loud = [r for r in caplog.records if r.levelno >= 20]
    assert loud == [] and sum("shim probed" in r.getMessage() for r in caplog.records) == 3
    for i in range(3):
        assert (await get(env, f"{DIR}/x{i}.efi"))[0] == 404
    assert sum("in its shim directory" in r.getMessage() for r in caplog.records) == 1
    assert (await get(env, f"{DIR}/mmx64.efi"))[0] == 404
    assert any(r.levelname == "WARNING" and "MokManager" in r.getMessage()
               for r in caplog.records)
