"""The admin API against the real `netbootd serve` (HTTPS on loopback): every route answers 401
without a token, 403 with a read-only token on a write, 403 on the plain-HTTP port, and its happy
path; the OpenAPI document validates (openapi-spec-validator) and lists every route; tokens are
stored hashed, revocable, audited; a browser's writes need the same origin and the CSRF token;
no answer carries key material; the remote CLI prints what the local CLI prints."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from netbootd.servers.api import ROUTES
from tests.conftest import start_daemon, stop_daemon

MAC, MAC2, MAC3 = "52:54:00:15:aa:01", "52:54:00:15:aa:02", "52:54:00:15:aa:03"
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE  # the pinned path is the remote CLI's, tested below


def call(base: str, method: str, path: str, token: str | None = None, body: object = None,
         headers: dict[str, str] | None = None) -> tuple[int, object, dict[str, str]]:
    h = {"Accept": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=CTX) as r:
            raw = r.read()
            return r.status, json.loads(raw or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null"), dict(e.headers)
        except ValueError:
            return e.code, raw.decode(errors="replace"), dict(e.headers)


@pytest.fixture
def site(cli, role_files, tmp_path):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline", "x=1")
    cli.run("enroll", MAC, "web", "--hostname", "api1", "--tag", "rack1")
    cli.run("enroll", MAC2, "web", "--no-identity", "--tag", "rack1")
    cli.run("api-token", "create", "--name", "admin", "-o", str(tmp_path / "admin.tok"))
    cli.run("api-token", "create", "--name", "mon", "--read-only", "-o", str(tmp_path / "ro.tok"))
    d = start_daemon(cli, tmp_path / "serve.log")
    try:
        yield {"d": d, "https": d.https_base, "http": d.base,
               "admin": (tmp_path / "admin.tok").read_text().strip(),
               "ro": (tmp_path / "ro.tok").read_text().strip(), "tmp": tmp_path}
    finally:
        stop_daemon(d)


def _concrete(path: str) -> str:
    return path.replace("{host}", "api1").replace("{role}", "web")


# one happy-path request per route (method, path) -> body, and what the answer must show
HAPPY = {
    ("GET", "/api/v1/whoami"): (None, lambda a: a["name"] == "admin" and a["csrf"]),
    ("GET", "/api/v1/hosts"): (None, lambda a: {h["mac"] for h in a} == {MAC, MAC2}),
    ("POST", "/api/v1/hosts"): ({"mac": MAC3, "role": "web", "hostname": "api3",
                                 "identity": False},
                                lambda a: a["result"]["created"] and "enrolled api3" in
                                a["messages"][0]),
    ("GET", "/api/v1/hosts/{host}"): (None, lambda a: a["hostname"] == "api1" and
                                      a["identity"]["ssh_ed25519"].startswith("ssh-ed25519")),
    ("DELETE", "/api/v1/hosts/{host}"): (None, lambda a: a["result"]["mac"] == MAC),
    ("GET", "/api/v1/hosts/{host}/keys"): (None, lambda a: a["generations"][0]["generation"]
                                           == 1),
    ("GET", "/api/v1/hosts/{host}/events"): (None, lambda a: any(
        e["event"] == "keys-generated" for e in a)),
    ("POST", "/api/v1/hosts/{host}/reprovision"): ({"ttl": "2h", "max_boots": 2}, lambda a:
                                                   a["result"]["hosts"][0]["max_boots"] == 2),
    ("POST", "/api/v1/reprovision"): ({"tag": "rack1", "cancel": True},
                                      lambda a: len(a["result"]["hosts"]) == 2),
    ("POST", "/api/v1/hosts/{host}/identity/arm"): ({"every_boot": True},
                                                    lambda a: a["result"]["every_boot"]),
    ("GET", "/api/v1/roles"): (None, lambda a: a[0]["name"] == "web"),
    ("GET", "/api/v1/roles/{role}"): (None, lambda a: a["generations"] == 2),
    ("GET", "/api/v1/roles/{role}/generations"): (None, lambda a: len(a) == 2),
    ("POST", "/api/v1/roles/{role}/switch"): ({"generation": 2},
                                              lambda a: a["result"]["to"] == 2),
    ("POST", "/api/v1/roles/{role}/rollback"): ({}, lambda a: "rolled back" in a["messages"][0]),
    ("GET", "/api/v1/keys"): (None, lambda a: len(a) == 1 and a[0]["hostname"] == "api1"),
    ("GET", "/api/v1/events"): (None, lambda a: any(e["event"] == "api-token-created"
                                                    for e in a)),
    ("GET", "/api/v1/status"): (None, lambda a: a["hosts"] >= 2),
    ("GET", "/api/v1/discovered"): (None, lambda a: a == []),
    ("GET", "/api/v1/discovery/rules"): (None, lambda a: a == []),
    ("GET", "/api/v1/hosts/{host}/inventory"): (None, lambda a: a["host"]["hostname"] == "api1"
                                                and a["inventory"] is None),
    # power (issue 16): api1's BMC is sushy-tools' Redfish emulator (fake systems)
    ("GET", "/api/v1/hosts/{host}/bmc"): (None, lambda a: a["bmc"]["kind"] == "redfish" and
                                          a["bmc"]["password"] == "set"),
    ("GET", "/api/v1/hosts/{host}/power"): (None, lambda a: a["result"]["state"] in
                                            ("on", "off")),
    ("POST", "/api/v1/hosts/{host}/power"): ({"action": "on"}, lambda a:
                                             "power on sent" in a["messages"][0]),
    ("POST", "/api/v1/hosts/{host}/boot-once"): ({"device": "pxe"}, lambda a:
                                                 "next boot (once): PXE" in a["messages"][0]),
}


def test_every_route_401_403_and_happy_path(site, cli):
    from testbed.bmc import SushyEmulator

    redfish = SushyEmulator(site["tmp"] / "redfish").start()
    pw = site["tmp"] / "bmc.pw"
    pw.write_text("api-bmc-pw\n")
    cli.run("bmc", "set", "api1", "--redfish", redfish.base, "--user", "admin",
            "--password-file", str(pw))
    try:
        _every_route(site, cli)
    finally:
        redfish.stop()


def _every_route(site, cli) -> None:
    assert {(r.method, r.path) for r in ROUTES} == set(HAPPY)
    https, http, admin, ro = site["https"], site["http"], site["admin"], site["ro"]
    # the DELETE goes last (it unenrolls api1); the switch (back to 2) after the rollback
    order = sorted(ROUTES, key=lambda r: (r.method == "DELETE", r.path.endswith("switch")))
    for r in order:
        path = _concrete(r.path)
        body, check = HAPPY[(r.method, r.path)]
        status, answer, headers = call(https, r.method, path, None, body)
        assert status == 401, (r.method, path, status, answer)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert call(https, r.method, path, "nbd_" + "x" * 43, body)[0] == 401
        assert call(http, r.method, path, admin, body)[0] == 403, (r.method, path)
        if str(r.scope) == "admin":
            status, answer, _ = call(https, r.method, path, ro, body)
            assert status == 403 and "read-only" in answer["error"], (r.method, path)
        else:
            status, answer, _ = call(https, r.method, path, ro, body)
            assert status == 200, (r.method, path, answer)
        status, answer, _ = call(https, r.method, path, admin, body)
        assert status == 200 and check(answer), (r.method, path, status, answer)
    events = [e["event"] for e in cli.json("events")]
    assert "api-call" in events and "api-denied" in events


def test_openapi_document_validates_and_lists_every_route(site):
    status, doc, _ = call(site["https"], "GET", "/api/v1/openapi.json")
    assert status == 200
    validate(doc)  # raises on an invalid OpenAPI 3 document
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    from aiohttp import web

    from netbootd.servers import api, dashboard, metrics

    app = web.Application()
    api.register(app)
    metrics.register(app)
    dashboard.register(app)
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/")
              and r.method != "HEAD"}
    assert served == listed
    # and the document can fail: a broken one is refused by the same validator
    broken = json.loads(json.dumps(doc))
    broken["paths"]["/api/v1/hosts"]["get"]["responses"] = "nope"
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_tokens_hashed_revocable_and_never_shown(site, cli, tmp_path):
    db = (cli.state_dir / "netbootd.sqlite3").read_bytes()
    for token in (site["admin"], site["ro"]):
        assert token.encode() not in db
        assert token not in cli.run("api-token", "list").stdout
        assert token not in (tmp_path / "serve.log").read_text()
    tokens = cli.json("api-token", "list")
    assert {t["name"]: t["scope"] for t in tokens} == {"admin": "admin", "mon": "read"}
    assert oct((tmp_path / "admin.tok").stat().st_mode & 0o777) == "0o600"
    assert call(site["https"], "GET", "/api/v1/hosts", site["ro"])[0] == 200
    cli.run("api-token", "revoke", "mon")
    assert call(site["https"], "GET", "/api/v1/hosts", site["ro"])[0] == 401
    assert {t["name"]: bool(t["revoked"]) for t in cli.json("api-token", "list")} == \
        {"admin": False, "mon": True}
    kinds = {e["event"] for e in cli.json("events")}
    assert {"api-token-created", "api-token-revoked", "api-denied"} <= kinds


def test_browser_writes_need_same_origin_and_csrf(site):
    https, admin = site["https"], site["admin"]
    path = f"/api/v1/hosts/{MAC}/reprovision"
    host = https.removeprefix("https://")
    csrf = call(https, "GET", "/api/v1/whoami", admin)[1]["csrf"]
    evil = {"Origin": "https://evil.example"}
    same = {"Origin": f"https://{host}"}
    assert call(https, "POST", path, admin, {}, evil | {"X-CSRF-Token": csrf})[0] == 403
    status, answer, _ = call(https, "POST", path, admin, {}, same)
    assert status == 403 and "CSRF" in answer["error"]
    assert call(https, "POST", path, admin, {}, same | {"X-CSRF-Token": "0" * 32})[0] == 403
    assert call(https, "POST", path, admin, {}, same | {"X-CSRF-Token": csrf})[0] == 200
    # a CLI (no Origin, no Sec-Fetch-*) needs only its token
    assert call(https, "POST", path, admin, {"cancel": True})[0] == 200


def test_no_key_material_in_answers(site, cli):
    https, admin = site["https"], site["admin"]
    privates = []
    for f in (cli.state_dir / "identity").rglob("*"):
        if f.is_file() and f.name in ("ssh_host_ed25519_key", "wireguard.key", "token.secret"):
            privates.append(f.read_bytes().strip())
    privates.append((cli.state_dir / "tls" / "ca.key").read_bytes().strip())
    assert len(privates) >= 4
    for r in ROUTES:
        if r.method == "GET":
            status, answer, _ = call(https, "GET", _concrete(r.path), admin)
            text = json.dumps(answer)
            if r.path.endswith("/power"):  # api1 has no BMC here: asking its power is a 404
                assert status == 404 and "no BMC settings" in answer["error"], answer
                continue
            assert status == 200 and "PRIVATE KEY" not in text, r.path
            for p in privates:
                for line in p.decode(errors="replace").splitlines():
                    if len(line) > 20 and "-----" not in line:
                        assert line not in text, r.path


def _remote(cli, site, ca: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.run("--server", site["https"], "--token-file", str(site["tmp"] / "admin.tok"),
                   "--ca-sha256", ca, *args, check=False)


def test_remote_cli_prints_what_the_local_cli_prints(site, cli):
    ca = cli.json("tls", "show")["ca_sha256"]
    for args in (["hosts"], ["hosts", "--json"], ["hosts", "--tag", "rack1"], ["status"],
                 ["status", "--stale", "1s", "--json"], ["role", "list"], ["role", "show", "web"],
                 ["role", "generations", "web"], ["keys", "list"], ["keys", "list", "api1"],
                 ["keys", "list", "--json"], ["events", "api1"], ["events", "--json"]):
        local = cli.run(*args, check=False)
        remote = _remote(cli, site, ca, *args)
        if args[0] == "events":  # the remote calls add api-call/api-denied rows to the log
            keep = [ln for ln in remote.stdout.splitlines() if "api-" not in ln]
            assert all(ln in local.stdout for ln in keep if '"event"' not in ln), args
            continue
        assert (remote.returncode, remote.stdout) == (local.returncode, local.stdout), args
    # writes: the same lines (cancel: no times in them)
    cli.run("reprovision", "api1")
    local = cli.run("reprovision", "--cancel", "api1").stdout
    cli.run("reprovision", "api1")
    remote = _remote(cli, site, ca, "reprovision", "--cancel", "api1")
    assert remote.returncode == 0 and remote.stdout == local
    remote = _remote(cli, site, ca, "reprovision", "api1", "--ttl", "1h")
    assert re.fullmatch(r"api1: re-provision armed: `netbootd.provision_disks=1` on its boots "
                        r"until it reports provisioned; at most 3 boot\(s\), until \S+\n",
                        remote.stdout), remote.stdout
    remote = _remote(cli, site, ca, "enroll", MAC3, "web", "--hostname", "api3", "--no-identity")
    assert remote.stdout == f"enrolled api3 ({MAC3}) -> role web\n", remote.stderr
    # a local-only command, a wrong pin and plain HTTP are refused, with the reason
    p = _remote(cli, site, ca, "images", "gc")
    assert p.returncode == 2 and "local state only" in p.stderr
    p = _remote(cli, site, "00" * 32, "hosts")
    assert p.returncode == 2 and "not the pinned" in p.stderr
    p = cli.run("--server", site["http"], "--token-file", str(site["tmp"] / "admin.tok"),
                "--ca-sha256", ca, "hosts", check=False)
    assert p.returncode == 2 and "not an https:// URL" in p.stderr


def test_events_follow_streams_new_events(site, cli):
    ca = cli.json("tls", "show")["ca_sha256"]
    argv = [sys.executable, "-m", "netbootd", "--state-dir", str(cli.state_dir), "--server",
            site["https"], "--token-file", str(site["tmp"] / "admin.tok"), "--ca-sha256", ca,
            "events", "--follow", "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        time.sleep(2.5)  # the stream is open
        cli.run("reprovision", "api1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("provision-armed" in ln for ln in lines):
            time.sleep(0.2)
    finally:
        p.terminate()
        p.wait(10)
    got = [json.loads(ln) for ln in lines if ln.strip()]
    assert any(e["event"] == "provision-armed" and e["mac"] == MAC for e in got), lines


def test_metrics_parse_and_need_a_token(site):
    from prometheus_client.parser import text_string_to_metric_families

    https = site["https"]
    assert call(https, "GET", "/metrics")[0] == 401
    assert call(site["http"], "GET", "/metrics", site["ro"])[0] == 403
    req = urllib.request.Request(https + "/metrics",
                                 headers={"Authorization": f"Bearer {site['ro']}"})
    with urllib.request.urlopen(req, timeout=30, context=CTX) as r:
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("netbootd_dhcp_requests", "netbootd_tftp_transfers", "netbootd_http_requests",
                 "netbootd_boots", "netbootd_identity_delivered", "netbootd_hosts",
                 "netbootd_hosts_stale", "netbootd_reprovisions",
                 "netbootd_artifact_store_bytes", "netbootd_build_seconds"):
        assert name in fams, name
    hosts = {s.labels["state"]: s.value for s in fams["netbootd_hosts"].samples}
    assert hosts["ok"] == 2
    assert [s.value for s in fams["netbootd_artifact_store_bytes"].samples] == [(1 << 20) + 300_000]


def test_dashboard_only_on_https(site):
    with urllib.request.urlopen(site["http"] + "/", timeout=10) as r:
        assert r.status == 200 and b"HTTPS port" in r.read()
    req = urllib.request.Request(site["http"] + "/ui/")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
    with urllib.request.urlopen(site["https"] + "/ui/", timeout=10, context=CTX) as r:
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert b"<script src=\"/ui/app.js\"" in r.read()
    with urllib.request.urlopen(site["https"] + "/", timeout=10, context=CTX) as r:
        assert r.url.endswith("/ui/")  # / on HTTPS is the dashboard
