"""The real daemon's HTTP side on loopback."""

import hashlib
import re
import subprocess
import sys
import time

MAC = "52:54:00:12:34:56"


def _setup(cli, role_files, mac=MAC):
    k, i = role_files
    cli.run(
        "role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline", "console=ttyS0"
    )
    cli.run("enroll", mac, "web", "--hostname", "web1")


def test_script_kernel_initrd_and_range(cli, role_files, daemon):
    _setup(cli, role_files)
    k, i = role_files
    for form in ("52-54-00-12-34-56", MAC):
        status, headers, body = daemon.get(f"/boot/{form}.ipxe")
        assert status == 200, body
        script = body.decode()
        assert script.startswith("#!ipxe\n")
    kernel_url = re.search(r"^kernel (\S+)", script, re.M).group(1)
    initrd_url = re.search(r"^initrd --name initrd0 (\S+)", script, re.M).group(1)
    assert kernel_url.startswith(daemon.base + "/artifacts/")
    assert f"netbootd.events={daemon.base}/api/v1/hosts/52-54-00-12-34-56/events" in script
    path = kernel_url[len(daemon.base) :]
    status, headers, body = daemon.get(path)
    assert status == 200 and body == k.read_bytes()
    assert headers["Content-Length"] == str(len(body))
    assert "immutable" in headers["Cache-Control"] and headers.get("ETag")
    assert hashlib.sha256(body).hexdigest() in path
    status, headers, body = daemon.get(path, {"Range": "bytes=1000-1999"})
    assert status == 206 and body == k.read_bytes()[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{k.stat().st_size}"
    status, _, _ = daemon.get(path, {"If-None-Match": headers["ETag"]})
    assert status == 304
    status, _, body = daemon.get(initrd_url[len(daemon.base) :])
    assert status == 200 and body == i.read_bytes()


def test_unknown_and_bad_mac(daemon):
    status, _, body = daemon.get("/boot/52-54-00-00-00-01.ipxe")
    assert status == 404 and body.startswith(b"#!ipxe\n") and b"not enrolled" in body
    status, _, body = daemon.get("/boot/not-a-mac.ipxe")
    assert status == 400 and body.startswith(b"#!ipxe\n")
    assert daemon.get("/artifacts/" + "0" * 64)[0] == 404
    assert daemon.get("/artifacts/../../etc/passwd")[0] == 404
    assert daemon.get("/ipxe/../../../etc/passwd")[0] == 404


def test_enroll_while_running_takes_effect(cli, role_files, daemon):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    assert daemon.get(f"/boot/{MAC}.ipxe")[0] == 404
    cli.run("enroll", MAC, "web")
    status, _, body = daemon.get(f"/boot/{MAC}.ipxe")
    assert status == 200 and b"kernel http://" in body
    cli.run("unenroll", MAC)
    assert daemon.get(f"/boot/{MAC}.ipxe")[0] == 404


def test_booted_event_updates_last_boot(cli, role_files, daemon):
    """Only a report carrying this boot's token moves last_boot (finding 4 of issue #13: a
    forged `booted` without one moved it, and the host's known_hosts address with it)."""
    _setup(cli, role_files)
    url = "/api/v1/hosts/52-54-00-12-34-56/events"
    assert cli.json("hosts")[0]["last_boot"] is None
    status, body = daemon.post_json(url, {"event": "booted"})
    assert status == 401 and "nothing changed" in body["error"]
    assert cli.json("hosts")[0]["last_boot"] is None
    script = daemon.get("/boot/52-54-00-12-34-56.ipxe")[2].decode()
    token = re.search(r"netbootd\.boot=(\S+)", script).group(1)
    status, body = daemon.post_json(url, {"event": "booted", "token": token})
    assert status == 200 and body["ok"]
    (h,) = cli.json("hosts")
    assert h["last_boot"] is not None and h["last_boot_ip"] == "127.0.0.1"
    assert [e["event"] for e in cli.json("events")].count("unauthenticated-report") == 1


def test_bad_events_refused(cli, role_files, daemon):
    _setup(cli, role_files)
    url = "/api/v1/hosts/52-54-00-12-34-56/events"
    assert daemon.post_json(url, {"event": "rm -rf"})[0] == 400
    assert daemon.post_json(url, b"{not json")[0] == 400
    assert daemon.post_json(url, [1, 2])[0] == 400
    assert daemon.post_json(url, b"x" * 100_000)[0] == 413
    assert daemon.post_json("/api/v1/hosts/52-54-00-00-00-09/events", {"event": "booted"})[0] == 404
    assert daemon.post_json("/api/v1/hosts/zz/events", {"event": "booted"})[0] == 400
    assert cli.json("hosts")[0]["last_boot"] is None
    assert daemon.get("/healthz")[0] == 200, "the server keeps serving"


def test_render_error_is_500_not_404(cli, role_files, tmp_path):
    """A broken template is a server error, never disguised as an unknown machine."""
    from tests.conftest import free_port

    _setup(cli, role_files)
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "default.ipxe.j2").write_text("#!ipxe\n{{ undefined_thing }}\n")
    (tdir / "unknown.ipxe.j2").write_text("#!ipxe\nexit 1\n")
    conf = tmp_path / "c.toml"
    port = free_port()
    conf.write_text(
        f'templates_dir = "{tdir}"\n[http]\nport = {port}\nlisten = "127.0.0.1"\n'
        f'[https]\nport = {free_port()}\nlisten = "127.0.0.1"\n'
    )
    log = tmp_path / "log"
    import os
    import urllib.error
    import urllib.request

    env = {**os.environ, "NETBOOTD_STATE_DIR": str(cli.state_dir)}
    with log.open("w") as f:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netbootd",
                "--config",
                str(conf),
                "serve",
                "--no-dhcp",
                "--no-tftp",
            ],
            stdout=f,
            stderr=f,
            env=env,
        )
    try:
        code = None
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/boot/{MAC}.ipxe", timeout=5)
                code = 200
                break
            except urllib.error.HTTPError as e:
                code = e.code
                break
            except OSError:
                time.sleep(0.05)
        assert code == 500
    finally:
        p.terminate()
        p.wait(10)
    text = log.read_text()
    assert "cannot serve script" in text and "undefined_thing" in text


def test_ipxe_binaries_over_http(daemon):
    """UEFI HTTP boot fetches the configured iPXE binary by URL; nothing else is served."""
    import pathlib

    import pytest

    root = pathlib.Path("/usr/lib/ipxe")
    if not (root / "ipxe.efi").exists():
        pytest.skip("Debian's ipxe package is not installed")
    status, _, body = daemon.get("/ipxe/ipxe.efi")  # a symlink out of the root on Debian
    assert status == 200 and body == (root / "ipxe.efi").read_bytes()
    status, _, body = daemon.get("/ipxe/undionly.kpxe")
    assert status == 200 and body == (root / "undionly.kpxe").read_bytes()
    for name in ("ipxe.lkrn", "snponly.efi", "qemu/efi-virtio.rom", "%2e%2e/%2e%2e/etc/passwd"):
        assert daemon.get(f"/ipxe/{name}")[0] == 404, name
