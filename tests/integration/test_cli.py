"""The real CLI against a temp state dir: role add / enroll / unenroll / hosts / explain."""

import json
import sqlite3

import pytest

MAC = "52:54:00:12:34:56"


def _dump(cli):
    db = sqlite3.connect(cli.state_dir / "netbootd.sqlite3")
    return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("roles", "generations", "hosts", "host_tags")]


def test_role_add_and_list(cli, role_files):
    k, i = role_files
    out = cli.run(
        "role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline", "console=ttyS0"
    ).stdout
    assert "role web: generation 1 is current" in out
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--initrd", str(i))
    (r,) = cli.json("role", "list")
    assert r["name"] == "web" and r["generation"] == 2 and r["generations"] == 2
    assert len(r["initrds"]) == 2 and r["cmdline"] == ""
    assert "web" in cli.run("role", "list").stdout


def test_role_add_missing_file(cli, role_files):
    k, _ = role_files
    p = cli.run("role", "add", "web", "--kernel", str(k), "--initrd", "/nonexistent", check=False)
    assert p.returncode == 2 and "no such file: /nonexistent" in p.stderr
    assert cli.json("role", "list") == []


@pytest.mark.parametrize(
    "form",
    [
        "52:54:00:12:34:56",
        "52-54-00-12-34-56",
        "5254.0012.3456",
        "525400123456",
        "52:54:00:12:34:56".upper(),
    ],
)
def test_enroll_any_mac_form(cli, role_files, form):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run(
        "enroll",
        form,
        "web",
        "--hostname",
        "web1",
        "--canon",
        "web1.rack1.example.org",
        "--tag",
        "rack1",
    )
    (h,) = cli.json("hosts")
    assert h["mac"] == MAC and h["hostname"] == "web1" and h["role"] == "web"
    assert (
        h["last_boot"] is None and h["canon"] == "web1.rack1.example.org" and h["tags"] == ["rack1"]
    )


def test_reenroll_changes_role_and_unenroll(cli, role_files):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("role", "add", "db", "--kernel", str(k), "--initrd", str(i))
    assert "enrolled" in cli.run("enroll", MAC, "web", "--hostname", "node1").stdout
    assert "updated" in cli.run("enroll", MAC, "db").stdout
    (h,) = cli.json("hosts")
    assert h["role"] == "db" and h["hostname"] == "node1"
    assert "node1" in cli.run("hosts").stdout
    cli.run("unenroll", "node1")
    assert cli.json("hosts") == []
    p = cli.run("unenroll", MAC, check=False)
    assert p.returncode == 2 and "no enrolled host" in p.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["enroll", "52:54:00:12:34", "web"], "not a MAC address"),
        (["enroll", "zz:54:00:12:34:56", "web"], "not a MAC address"),
        (["enroll", MAC, "nope"], "unknown role 'nope'"),
        (["enroll", MAC, "web", "--hostname", "web_1"], "not a valid hostname"),
        (["enroll", MAC, "web", "--hostname", "x\nchain http://evil/"], "not a valid hostname"),
        (["enroll", MAC, "web", "--hostname", "${net0/mac}"], "not a valid hostname"),
        (["enroll", MAC, "web", "--tag", "a b"], "not a valid tag"),
        (["enroll", MAC, "web", "--canon", "a..b"], "not a valid canonical name"),
        (
            ["role", "add", "evil", "--kernel", "K", "--initrd", "I", "--cmdline", "x\nshell"],
            "command line",
        ),
        (
            ["role", "add", "evil", "--kernel", "K", "--initrd", "I", "--cmdline", "a || shell"],
            "command line",
        ),
        (["role", "add", "Bad/Name", "--kernel", "K", "--initrd", "I"], "not a valid role name"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(cli, role_files, args, message):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    before = _dump(cli)
    args = [str(k) if a == "K" else str(i) if a == "I" else a for a in args]
    p = cli.run(*args, check=False)
    assert p.returncode != 0
    assert message in p.stderr
    assert p.stderr.startswith("netbootd: error:") and "Traceback" not in p.stderr
    assert _dump(cli) == before


def test_explain_enrolled(cli, role_files):
    k, i = role_files
    cli.run(
        "role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline", "console=ttyS0"
    )
    cli.run("enroll", MAC, "web", "--hostname", "web1")
    out = cli.run("explain", MAC, "--arch", "uefi", "--advertise-address", "10.9.8.7").stdout
    assert "web1, role web" in out
    assert "ipxe.efi" in out and "10.9.8.7" in out
    assert "http://10.9.8.7/boot/52-54-00-12-34-56.ipxe" in out
    script = out.split("== iPXE script: GET /boot/52-54-00-12-34-56.ipxe ==\n", 1)[1]
    assert script.startswith("#!ipxe\n")
    assert "kernel http://10.9.8.7/artifacts/" in script and "console=ttyS0" in script
    bios = cli.run("explain", MAC, "--advertise-address", "10.9.8.7").stdout
    assert "undionly.kpxe" in bios


def test_explain_unknown(cli, role_files):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))  # a state to read
    out = cli.run("explain", MAC, "--advertise-address", "10.9.8.7").stdout
    assert "not enrolled" in out and "no reply" in out and "HTTP 404" in out


def test_hosts_json_is_a_list_of_objects(cli, role_files):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))  # a state to read
    assert json.loads(cli.run("hosts", "--json").stdout) == []
    assert "no hosts enrolled" in cli.run("hosts").stdout


def test_broken_config_names_field(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'eighty'\n")
    p = cli.run("--config", str(bad), "serve", check=False)
    assert p.returncode == 2 and "http.port" in p.stderr and "Traceback" not in p.stderr


def test_build_image_honours_the_policy(cli, role_files, tmp_path):
    """build-image renders through policy.boot_plan and static.ipxe.j2: the re-provision flag
    word in the image's own command line (or the role's own flag) never reaches a static store,
    which could never clear it."""
    k, i = role_files
    cli.run(
        "role",
        "add",
        "web",
        "--kernel",
        str(k),
        "--initrd",
        str(i),
        "--initrd",
        str(i),
        "--cmdline",
        "console=ttyS0 netbootd.provision_disks=1 homelab.wipe=yes quiet",
    )
    store = tmp_path / "static"
    cli.run(
        "build-image", "--role", "web", "--mac", MAC, "--store", str(store), "--cmdline", "extra=1"
    )
    d = store / "by-mac" / MAC.replace(":", "-")
    assert (d / "netboot.ipxe").read_text() == (
        "#!ipxe\n"
        "# netbootd build-image: role web generation 1\n"
        "kernel kernel initrd=initrd0 console=ttyS0 homelab.wipe=yes quiet extra=1\n"
        "initrd --name initrd0 initrd\n"
        "boot\n"
    )
    assert (d / "initrd").read_bytes() == i.read_bytes() * 2
    # the role's own flag name is the one removed
    cli.run("role", "set", "web", "--provision-flag", "homelab.wipe=yes")
    cli.run("build-image", "--role", "web", "--canon", "n1.example.org", "--store", str(store))
    text = (store / "by-canon" / "n1.example.org" / "netboot.ipxe").read_text()
    assert "homelab.wipe" not in text and "netbootd.provision_disks=1" in text
    assert "00:00:00" not in text and "00-00-00" not in text
    # a bad extra command line writes nothing
    p = cli.run(
        "build-image",
        "--role",
        "web",
        "--mac",
        "52:54:00:00:00:09",
        "--store",
        str(store),
        "--cmdline",
        "a;reboot",
        check=False,
    )
    assert p.returncode == 2 and not (store / "by-mac" / "52-54-00-00-00-09").exists()


def test_events_never_print_what_a_client_sent_raw(cli, role_files, daemon):
    """Finding 11 of issue #13: attacker-supplied text in an event reached the operator's
    terminal raw (a forged "identity-delivered" line, a screen clear)."""
    import re as _re

    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("enroll", MAC, "web", "--hostname", "web1", "--no-identity")
    script = daemon.get("/boot/52-54-00-12-34-56.ipxe")[2].decode()
    token = _re.search(r"netbootd\.boot=(\S+)", script).group(1)
    evil = "x\n2026-01-01T00:00:00Z  web1  identity-delivered  10.6.6.6\x1b[2J\x1b]0;pwned\x07"
    status, _ = daemon.post_json("/api/v1/hosts/52-54-00-12-34-56/events",
                                 {"event": "booted", "token": token, evil: evil})
    assert status == 200
    out = cli.run("events", "web1").stdout
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("\n") == 2  # the header and the one booted event: no forged line
    assert "\\x1b[2J" in out and "x\\n2026" in out
    assert json.loads(cli.run("events", "web1", "--json").stdout)[-1]["detail"]  # JSON escapes


def test_enroll_killed_leaves_no_host_without_identity_and_enroll_repairs(cli, role_files):
    """Finding 5 of issue #13: an enroll killed during key generation left an enrolled host
    without an identity, and enrolling it again printed "updated" and did not repair it."""
    import os as _os
    import signal as _signal
    import subprocess as _subprocess
    import sys as _sys
    import time as _time

    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    env = {**_os.environ, "NETBOOTD_STATE_DIR": str(cli.state_dir)}
    for n, delay in enumerate((0.05, 0.2, 0.4, 0.7, 1.0, 1.5)):
        mac = f"52:54:00:00:01:{n:02x}"
        p = _subprocess.Popen([_sys.executable, "-m", "netbootd", "enroll", mac, "web"], env=env,
                              stdout=_subprocess.DEVNULL, stderr=_subprocess.DEVNULL)
        _time.sleep(delay)
        p.send_signal(_signal.SIGKILL)
        p.wait()
        hosts = {h["mac"] for h in cli.json("hosts")}
        keys = {r["mac"] for r in cli.json("keys", "list")}
        assert hosts <= keys, f"killed after {delay}s: a host without identity: {hosts - keys}"
    # a host that has none (enrolled with --no-identity) gets one from a plain enroll
    cli.run("enroll", MAC, "web", "--no-identity")
    out = cli.run("enroll", MAC, "web").stdout
    assert "updated" in out and "(it had none: made now)" in out
    assert MAC in {r["mac"] for r in cli.json("keys", "list")}
    # a failing enroll (hostname taken) leaves no row and no key files behind
    cli.run("enroll", "52:54:00:00:02:01", "web", "--hostname", "taken", "--no-identity")
    before = sorted(p.name for p in (cli.state_dir / "identity").iterdir())
    r = cli.run("enroll", "52:54:00:00:02:02", "web", "--hostname", "taken", check=False)
    assert r.returncode == 2 and "already used" in r.stderr
    assert sorted(p.name for p in (cli.state_dir / "identity").iterdir()) == before
    assert "52:54:00:00:02:02" not in {h["mac"] for h in cli.json("hosts")}
