"""Host identity with the real daemon on loopback: delivery once over pinned HTTPS (the real
curl), every refusal (403 + an audit event with the source IP), 20 concurrent redemptions
across two servers, exports checked with ssh-keygen and age, files at rest, and no key
material in any server or CLI log."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from netbootd import tokens
from netbootd.identity import hostkeys
from netbootd.model import MacAddress
from tests.conftest import start_daemon, stop_daemon
from tests.integration.identity_helpers import (
    HYPHEN,
    MAC,
    assert_no_key_material,
    curl,
    get,
    offer,
    script,
    unpack,
)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
LOCAL = "127.0.0.1"


def _setup(cli, role_files, *extra):
    k, i = role_files
    cli.run(
        "role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline", "console=ttyS0"
    )
    return cli.run(
        "enroll", MAC, "web", "--hostname", "web1", "--canon", "web1.example.org", *extra
    )


def tokens_in(text: str) -> dict[str, str]:
    """The netbootd.* parameters of a script's kernel line."""
    return dict(w.split("=", 1) for w in text.split() if w.startswith("netbootd.") and "=" in w)


def _offer(daemon, mac=MAC, source=None):
    o = offer(script(LOCAL, daemon.port, mac, source))
    assert o is not None, "an armed host's script carries netbootd.identity= and netbootd.pin="
    return o


def _events(cli, *args):
    return cli.json("events", *args)


def _last(cli, host="web1"):
    return _events(cli, host)[-1]


def _denied(cli, reason, source=LOCAL, host="web1"):
    ev = _last(cli, host)
    assert ev["event"] == "identity-denied" and ev["source_ip"] == source, ev
    assert reason in ev["detail"]["reason"], ev
    return ev


@pytest.fixture
def clean(cli, daemon):
    """After the test: no key material in the server log or any CLI output."""
    yield
    assert_no_key_material(cli.state_dir, daemon.log.read_bytes(), *cli.transcript)


def _state_files(cli) -> dict[str, bytes]:
    gen = max((cli.state_dir / "identity" / HYPHEN).iterdir())
    return {p.name: p.read_bytes() for p in gen.iterdir()}


def test_delivered_once_over_pinned_https(cli, role_files, daemon, tmp_path, clean):
    out = _setup(cli, role_files).stdout
    assert "identity generation 1: ssh-ed25519 SHA256:" in out and "armed" in out
    o = _offer(daemon)
    assert o.url.startswith(f"https://127.0.0.1:{daemon.https_port}/identity/")
    assert o.pin == cli.json("tls", "show")["pin"]
    if shutil.which("openssl"):  # the pin is that of the key the HTTPS port really presents
        pem = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{daemon.https_port}"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        der = subprocess.run(
            "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der",
            shell=True,
            input=pem.encode(),
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        import hashlib

        assert o.pin == "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()

    f = curl(o.url, o.pin, tmp_path / "id.tgz")
    assert (f.rc, f.code) == (0, 200), f.stderr
    files, modes = unpack(f.body)
    at_rest = _state_files(cli)
    assert files["etc/ssh/ssh_host_ed25519_key"] == at_rest["ssh_host_ed25519_key"]
    assert files["etc/ssh/ssh_host_rsa_key"] == at_rest["ssh_host_rsa_key"]
    assert files["etc/machine-id"] == at_rest["machine-id"]
    assert files["etc/hostid"] == hostkeys.hostid_bytes(at_rest["machine-id"][:8].decode())
    assert files["etc/wireguard/private.key"] == at_rest["wireguard.key"]
    assert (
        modes["etc/ssh/ssh_host_ed25519_key"] == 0o600
        and modes["etc/wireguard/private.key"] == 0o600
    )
    assert modes["etc/ssh/ssh_host_ed25519_key.pub"] == 0o644 and modes["etc/machine-id"] == 0o644

    # the fingerprint of what arrived == what the operator's known_hosts says
    pub = tmp_path / "received.pub"
    pub.write_bytes(files["etc/ssh/ssh_host_ed25519_key.pub"])
    received = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    kh = tmp_path / "known_hosts"
    cli.run("keys", "export", "known_hosts", "-o", str(kh))
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(kh)], capture_output=True, text=True, check=True
    ).stdout
    assert received in listed and received == cli.json("keys", "list")[0]["ssh_ed25519_fingerprint"]

    # a second use of the same token
    again = curl(o.url, o.pin, tmp_path / "again.tgz")
    assert again.code == 403 and b"PRIVATE" not in again.body
    _denied(cli, "token already used")
    kinds = [e["event"] for e in _events(cli, "web1")]
    assert kinds == ["keys-generated", "identity-issued", "identity-delivered", "identity-denied"]
    delivered = _events(cli, "web1")[2]
    assert delivered["source_ip"] == LOCAL and delivered["detail"]["generation"] == 1
    # delivered: disarmed, so the next script carries no identity
    assert offer(script(LOCAL, daemon.port)) is None
    assert cli.json("keys", "list")[0]["armed"] is False


def test_wrong_pin_fails_and_leaves_the_token(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon)
    wrong = "sha256//" + base64.b64encode(bytes(32)).decode()
    f = curl(o.url, wrong, tmp_path / "x")
    assert f.rc == 90 and f.body == b"", "curl refuses a server whose key does not match the pin"
    assert curl(o.url, o.pin, tmp_path / "x").code == 200


def test_plain_http_refused(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon)
    status, body = get(LOCAL, daemon.port, f"/identity/{o.token}")
    assert status == 403 and body == b"the identity is served over HTTPS only\n"
    _denied(cli, "plain HTTP")
    status, _ = get(LOCAL, daemon.port, f"/keys/web1.tar.gz?token={o.token}")
    assert status == 403
    assert curl(o.url, o.pin, tmp_path / "x").code == 200, "the refusal did not burn the token"


def test_wrong_source_ip(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon, source="127.0.0.2")  # the script was fetched from 127.0.0.2
    f = curl(o.url, o.pin, tmp_path / "x", source=LOCAL)
    assert f.code == 403
    _denied(cli, "wrong source IP (token issued to 127.0.0.2)", source=LOCAL)
    assert curl(o.url, o.pin, tmp_path / "x", source="127.0.0.2").code == 200


def test_expired(cli, role_files, tmp_path):
    _setup(cli, role_files)
    conf = tmp_path / "ttl.toml"
    conf.write_text("[identity]\ntoken_ttl = 1\n")
    d = start_daemon(cli, tmp_path / "serve.log", config=conf)
    try:
        o = _offer(d)
        time.sleep(1.2)
        assert curl(o.url, o.pin, tmp_path / "x").code == 403
        _denied(cli, "token expired")
        assert curl(_offer(d).url, o.pin, tmp_path / "x").code == 200, "a fresh one works"
    finally:
        stop_daemon(d)
    assert_no_key_material(cli.state_dir, d.log.read_text(), *cli.transcript)


def test_disarmed(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon)
    assert "disarmed" in cli.run("keys", "disarm", "web1").stdout
    assert curl(o.url, o.pin, tmp_path / "x").code == 403
    _denied(cli, "identity not armed")
    assert offer(script(LOCAL, daemon.port)) is None, "no token for a disarmed host"
    cli.run("keys", "arm", "web1")
    assert curl(o.url, o.pin, tmp_path / "x").code == 200


def test_tampered_unknown_malformed(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon)
    t = o.token
    tampered = t[:10] + ("A" if t[10] != "A" else "B") + t[11:]
    base = o.url.rsplit("/", 1)[0]
    assert curl(f"{base}/{tampered}", o.pin, tmp_path / "x").code == 403
    _denied(cli, "tampered token")  # held against the host it claims to be for
    # well-formed and correctly signed, but never issued (made with the server's own secret)
    secret = (cli.state_dir / "identity" / "token.secret").read_bytes()
    unknown = tokens.mint(secret, MacAddress.parse(MAC), bytes(16))
    assert curl(f"{base}/{unknown}", o.pin, tmp_path / "x").code == 403
    _denied(cli, "unknown token")
    # not a token at all: audited against no host
    assert curl(f"{base}/not-a-token", o.pin, tmp_path / "x").code == 403
    ev = _events(cli)[-1]
    assert (ev["mac"], ev["event"], ev["source_ip"]) == (None, "identity-denied", LOCAL)
    assert ev["detail"]["reason"] == "malformed token"
    assert all(e["mac"] == MAC for e in _events(cli, "web1"))
    assert curl(o.url, o.pin, tmp_path / "x").code == 200, "the real token still works"


def _https_get(url: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_20_concurrent_requests_one_200_across_two_servers(cli, role_files, tmp_path, clean):
    """Two servers share the state (database + token secret); 20 requests race for one token.
    Exactly one gets the bundle; the 19 refusals are all counted in the audit: a race lost
    inside the redemption is one row, a refusal of the first look is limited to one row per
    server and token per interval, the rest in the summary row the server writes when the
    interval is over (1 s here)."""
    _setup(cli, role_files)
    cli.run("keys", "arm", "web1", "--every-boot")  # so only the token's single use decides
    conf = tmp_path / "netbootd.toml"
    conf.write_text("[security]\nunauthenticated_interval = 1\n")
    servers = [start_daemon(cli, tmp_path / f"serve{i}.log", config=conf) for i in (1, 2)]
    try:
        o = _offer(servers[0])
        path = "/identity/" + o.token
        urls = [f"https://127.0.0.1:{d.https_port}{path}" for d in servers] * 10
        barrier = threading.Barrier(20)

        def go(url):
            barrier.wait()
            return _https_get(url)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(go, urls))
        assert sorted(codes) == [200] + [403] * 19

        def denied() -> list[dict]:
            return [e for e in _events(cli, "web1") if e["event"] == "identity-denied"]

        def refusals() -> int:  # a lost race is refused inside the redemption: one row each
            return sum(e["detail"].get("count", 1) for e in denied())

        deadline = time.monotonic() + 15
        while refusals() < 19 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for d in servers:
            stop_daemon(d)
    kinds = [e["event"] for e in _events(cli, "web1")]
    assert kinds.count("identity-delivered") == 1
    assert refusals() == 19
    for d in servers:
        assert_no_key_material(cli.state_dir, d.log.read_text())


def test_compat_keys_path(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    cli.run("keys", "arm", "web1", "--every-boot")
    base = f"https://127.0.0.1:{daemon.https_port}/keys"
    o = _offer(daemon)
    assert curl(f"{base}/web2.tar.gz?token={o.token}", o.pin, tmp_path / "x").code == 403
    _denied(cli, "token is for web1, not web2")
    for name in ("web1", "web1.example.org", HYPHEN):
        o = _offer(daemon)
        f = curl(f"{base}/{name}.tar.gz?token={o.token}", o.pin, tmp_path / "x")
        assert f.code == 200, name
        assert "etc/ssh/ssh_host_ed25519_key" in unpack(f.body)[0]
    assert curl(f"{base}/web1.tar.gz", o.pin, tmp_path / "x").code == 403  # no token at all


def test_every_boot_stays_armed_tokens_stay_single_use(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    assert "at every boot" in cli.run("keys", "arm", "web1", "--every-boot").stdout
    bodies = []
    for _ in range(2):
        o = _offer(daemon)
        f = curl(o.url, o.pin, tmp_path / "x")
        assert f.code == 200
        bodies.append(f.body)
        assert curl(o.url, o.pin, tmp_path / "x").code == 403
    assert bodies[0] == bodies[1]
    assert cli.json("keys", "list")[0]["every_boot"] is True


def test_rotate_delivers_the_new_generation_and_keeps_the_old(
    cli, role_files, daemon, tmp_path, clean
):
    _setup(cli, role_files)
    o = _offer(daemon)
    assert curl(o.url, o.pin, tmp_path / "x").code == 200
    first = cli.json("keys", "list")[0]
    out = cli.run("keys", "rotate", "web1").stdout
    assert "generation 2 replaces 1" in out
    f = curl(_offer(daemon).url, o.pin, tmp_path / "x")
    files, _ = unpack(f.body)
    now = cli.json("keys", "list", "web1")
    assert [g["generation"] for g in now["generations"]] == [1, 2] and now["armed"] is False
    assert (
        files["etc/ssh/ssh_host_ed25519_key.pub"].decode().split()[1]
        == now["generations"][1]["ssh_ed25519"].split()[1]
    )
    assert now["generations"][1]["machine_id"] != first["machine_id"]
    assert len(list((cli.state_dir / "identity" / HYPHEN).iterdir())) == 2
    p = cli.run("keys", "generate", "web1", check=False)
    assert p.returncode == 2 and "keys rotate web1" in p.stderr


def test_tls_rotate_while_running(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    cli.run("keys", "arm", "web1", "--every-boot")
    old = _offer(daemon)
    new_pin = cli.run("tls", "rotate").stdout.split("pin ")[1].split()[0]
    assert new_pin != old.pin
    o = _offer(daemon)
    assert o.pin == new_pin, "the next script carries the new pin"
    assert curl(o.url, old.pin, tmp_path / "x").rc == 90, "the old key is no longer served"
    assert curl(o.url, new_pin, tmp_path / "x").code == 200


def test_arp_always_refuses_what_it_cannot_check(cli, role_files, tmp_path):
    _setup(cli, role_files)
    conf = tmp_path / "arp.toml"
    conf.write_text('[identity]\nverify_arp = "always"\n')
    d = start_daemon(cli, tmp_path / "serve.log", config=conf)
    try:
        o = _offer(d)
        assert curl(o.url, o.pin, tmp_path / "x").code == 403
    finally:
        stop_daemon(d)
    _denied(cli, "ARP verification required but not possible (the requester is this host)")


@pytest.mark.skipif(shutil.which("age") is None, reason="Debian's age package is not installed")
def test_age_recipients_decrypt_with_the_delivered_host_key(
    cli, role_files, daemon, tmp_path, clean
):
    _setup(cli, role_files)
    o = _offer(daemon)
    files, _ = unpack(curl(o.url, o.pin, tmp_path / "x").body)
    host_key = tmp_path / "ssh_host_ed25519_key"
    host_key.write_bytes(files["etc/ssh/ssh_host_ed25519_key"])
    host_key.chmod(0o600)
    recipients = tmp_path / "recipients.txt"
    cli.run("keys", "export", "age-recipients", "-o", str(recipients))
    assert cli.run("keys", "age-recipients").stdout == recipients.read_text()
    plain = tmp_path / "secret"
    plain.write_bytes(b"database password\n")
    subprocess.run(
        ["age", "-R", str(recipients), "-o", str(tmp_path / "s.age"), str(plain)],
        check=True,
        timeout=30,
    )
    out = subprocess.run(
        ["age", "-d", "-i", str(host_key), str(tmp_path / "s.age")],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert out == plain.read_bytes()
    as_json = cli.json("keys", "age-recipients")
    line = [x for x in recipients.read_text().splitlines() if not x.startswith("#")]
    assert as_json == {"web1": line[0]} and line[0].startswith("ssh-ed25519 ")
    enc = subprocess.run(
        ["age", "-r", as_json["web1"]], input=b"x", capture_output=True, check=True, timeout=30
    ).stdout
    (tmp_path / "x.age").write_bytes(enc)
    assert (
        subprocess.run(
            ["age", "-d", "-i", str(host_key), str(tmp_path / "x.age")],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        == b"x"
    )
    age1 = cli.json("keys", "age-recipients", "--age1")["web1"]
    assert age1.startswith("age1")


def test_known_hosts_names_hostname_canon_and_last_seen_ip(
    cli, role_files, daemon, tmp_path, clean
):
    _setup(cli, role_files)
    before = cli.run("keys", "known-hosts").stdout
    assert "web1,web1.example.org ssh-ed25519 " in before
    boot = tokens_in(script(LOCAL, daemon.port, MAC))["netbootd.boot"]
    daemon.post_json(f"/api/v1/hosts/{HYPHEN}/events", {"event": "booted", "token": boot})
    kh = tmp_path / "known_hosts"
    kh.write_text(cli.run("keys", "export", "known-hosts").stdout)
    assert "web1,web1.example.org,127.0.0.1 ssh-ed25519 " in kh.read_text()
    for name in ("web1", "web1.example.org", "127.0.0.1"):
        found = subprocess.run(
            ["ssh-keygen", "-F", name, "-f", str(kh)], capture_output=True, text=True, check=True
        ).stdout
        assert "ssh-ed25519" in found and "ssh-rsa" in found, name


def test_key_files_at_rest_are_0600(cli, role_files, daemon, clean):
    _setup(cli, role_files)
    cli.run("enroll", "52:54:00:00:00:02", "web", "--hostname", "web2")
    secrets = [*cli.state_dir.glob("identity/**/*"), *cli.state_dir.glob("tls/*")]
    assert len([p for p in secrets if p.is_file()]) >= 2 * 7 + 1 + 4
    for p in [cli.state_dir / "identity", cli.state_dir / "tls", *secrets]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.suffix == ".crt":
            assert mode == 0o644, p  # certificates are public
        else:
            assert mode == 0o600, (p, oct(mode))


def test_no_key_material_in_debug_logs(cli, role_files, tmp_path):
    """The whole flow with debug logging, every refusal included; then scan every log."""
    _setup(cli, role_files)
    d = start_daemon(cli, tmp_path / "serve.log", verbose=True)
    try:
        o = _offer(d)
        curl(o.url, o.pin, tmp_path / "x")
        curl(o.url, o.pin, tmp_path / "x")
        get(LOCAL, d.port, f"/identity/{o.token}")
        curl(o.url[:-3] + "xyz", o.pin, tmp_path / "x")
        cli.run("keys", "rotate", "web1")
        o = _offer(d)
        curl(o.url, o.pin, tmp_path / "x", source="127.0.0.2")
        cli.run("tls", "rotate")
        curl(o.url, cli.json("tls", "show")["pin"], tmp_path / "x")
        for args in (
            ["keys", "list"],
            ["keys", "list", "web1", "--json"],
            ["keys", "known-hosts"],
            ["keys", "age-recipients"],
            ["events", "--json"],
            ["events"],
            ["hosts"],
            ["explain", MAC],
            ["tls", "show"],
            ["-v", "keys", "list"],
        ):
            cli.run(*args)
    finally:
        stop_daemon(d)
    log = d.log.read_text()
    assert "DEBUG" in log or "identity delivered" in log
    assert log.count("identity delivered") == 2 and "identity refused" in log
    assert_no_key_material(cli.state_dir, log, *cli.transcript)


def test_events_cli(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files)
    o = _offer(daemon)
    curl(o.url, o.pin, tmp_path / "x")
    table = cli.run("events", "web1").stdout
    assert table.splitlines()[0].split() == ["TIME", "HOST", "EVENT", "FROM", "BOOT", "DETAIL"]
    assert "identity-delivered" in table and "127.0.0.1" in table
    assert len(cli.json("events", "--since", "1h")) == 3
    assert cli.json("events", "web1", "--since", "2000-01-01") == cli.json("events", "web1")
    assert cli.json("events", "--since", "2999-01-01") == []
    assert "no events" in cli.run("events", "--since", "2999-01-01").stdout
    assert cli.json("events", MAC) == cli.json("events", "web1.example.org")
    p = cli.run("events", "--since", "yesterday", check=False)
    assert p.returncode == 2 and "--since" in p.stderr
    p = cli.run("events", "nosuchhost", check=False)
    assert p.returncode == 2 and "no enrolled host" in p.stderr
    # an unenrolled host's history stays readable by MAC
    cli.run("unenroll", "web1")
    assert len(cli.json("events", MAC)) == 3


def test_enroll_without_identity_then_generate(cli, role_files, daemon, tmp_path, clean):
    _setup(cli, role_files, "--no-identity")
    assert offer(script(LOCAL, daemon.port)) is None
    assert cli.json("keys", "list") == []
    out = cli.run("keys", "generate", "web1", "--no-arm").stdout
    assert "not armed" in out and offer(script(LOCAL, daemon.port)) is None
    cli.run("keys", "arm", "web1")
    o = _offer(daemon)
    assert curl(o.url, o.pin, tmp_path / "x").code == 200
    # explain shows where the identity would come from, without minting a token
    ex = cli.run("explain", MAC).stdout
    assert "netbootd.identity" not in ex  # delivered: disarmed
    cli.run("keys", "arm", "web1")
    ex = cli.run("explain", MAC, "--advertise-address", "10.0.0.1").stdout
    assert "netbootd.identity=https://10.0.0.1/identity/<per-boot-token>" in ex
    assert f"netbootd.pin={o.pin}" in ex
    assert [e["event"] for e in _events(cli, "web1")].count("identity-issued") == 1
    assert json.loads(cli.run("hosts", "--json").stdout)[0]["hostname"] == "web1"


def test_bulk_enrolled_host_gets_its_rsa_key_on_first_need(cli, role_files, tmp_path):
    """`enroll --from` leaves the RSA key pending; with the background job off
    (identity.rsa_fill_interval = 0) the first delivery makes it: the bundle has it, its files
    are 0600 at rest, the store records the same public key, a second token gets the same key."""
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    rows = tmp_path / "hosts.csv"
    rows.write_text(f"mac,role,hostname\n{MAC},web,bulk1\n")
    cli.run("enroll", "--from", str(rows))
    (pending,) = cli.json("keys", "list")
    assert pending["ssh_rsa_fingerprint"] is None
    conf = tmp_path / "netbootd.toml"
    conf.write_text("[identity]\nrsa_fill_interval = 0\n")
    d = start_daemon(cli, tmp_path / "serve.log", config=conf)
    try:
        o = offer(script("127.0.0.1", d.port))
        assert o is not None
        f = curl(o.url, o.pin, tmp_path / "id.tgz")
        assert (f.rc, f.code) == (0, 200), f.stderr
        files, modes = unpack(f.body)
        (done,) = cli.json("keys", "list")
        assert done["ssh_rsa_fingerprint"] is not None
        pub = files["etc/ssh/ssh_host_rsa_key.pub"].decode().strip()
        assert hostkeys.fingerprint(pub) == done["ssh_rsa_fingerprint"]
        assert files["etc/ssh/ssh_host_rsa_key"].startswith(b"-----BEGIN OPENSSH PRIVATE KEY")
        assert modes["etc/ssh/ssh_host_rsa_key"] == 0o600
        assert _state_files(cli)["ssh_host_rsa_key"] == files["etc/ssh/ssh_host_rsa_key"]
        assert "RSA host key made on first need" in (tmp_path / "serve.log").read_text()
        cli.run("keys", "arm", "bulk1")
        o2 = offer(script("127.0.0.1", d.port))
        assert o2 is not None
        f2 = curl(o2.url, o2.pin, tmp_path / "id2.tgz")
        assert unpack(f2.body)[0]["etc/ssh/ssh_host_rsa_key"] == files["etc/ssh/ssh_host_rsa_key"]
    finally:
        stop_daemon(d)
    assert_no_key_material(cli.state_dir, (tmp_path / "serve.log").read_text(),
                           *cli.transcript)
