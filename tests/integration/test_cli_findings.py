"""Issue #15's CLI findings, one test each, against the real CLI (a subprocess) and a temp
state directory: read-only listings, no state made by reading, a truthful `gc --dry-run`, a
closed pipe, global options after the subcommand, role show/remove, names spelled like MACs,
group MACs, one duration parser, explain by hostname and --json, one spelling of a host without
a hostname, `--kernel DIR`, --json on every listing, --version, completion, bulk enroll."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, start_daemon, stop_daemon

MAC = "52:54:00:15:00:01"
MAC2 = "52:54:00:15:00:02"


def _role(cli, role_files, name="web"):
    k, i = role_files
    cli.run("role", "add", name, "--kernel", str(k), "--initrd", str(i))


def _site_packages() -> str:
    import aiohttp

    return str(Path(aiohttp.__file__).resolve().parent.parent)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_read_only_listings_for_a_monitoring_account(cli, role_files):
    """A monitoring account with read access only (group nogroup, r-x) runs hosts, status
    --stale, events, role list and explain; the database is not written (no -shm/-wal made, same
    bytes); a writing command is refused with the store's message, exit 2, no traceback."""
    base = Path(tempfile.mkdtemp(prefix="nbdro-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"
        cli.state_dir = state
        _role(cli, role_files)
        cli.run("enroll", MAC, "web", "--hostname", "mon1", "--no-identity")
        for p in [state, *state.rglob("*")]:
            shutil.chown(p, group="nogroup")
            os.chmod(p, 0o750 if p.is_dir() else 0o640)
        db = state / "netbootd.sqlite3"
        assert not db.with_name(db.name + "-wal").exists()
        before = db.read_bytes()
        env = {"PATH": "/usr/bin:/bin", "NETBOOTD_STATE_DIR": str(state),
               "PYTHONPATH": f"{REPO}:{_site_packages()}", "HOME": "/nonexistent"}

        def as_monitor(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                 "/usr/bin/python3", "-m", "netbootd", *args],
                capture_output=True, text=True, env=env, timeout=60, cwd="/")

        p = as_monitor("hosts", "--json")
        assert p.returncode == 0, p.stderr
        assert [h["hostname"] for h in json.loads(p.stdout)] == ["mon1"]
        p = as_monitor("status", "--stale", "7d")
        assert (p.returncode, p.stdout) == (0, "1 host(s): 1 ok\nnothing stale\n"), p.stderr
        for args in (["events", "--json"], ["role", "list", "--json"], ["explain", "mon1"]):
            p = as_monitor(*args)
            assert p.returncode == 0, (args, p.stderr)
        p = as_monitor("enroll", MAC2, "web")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "netbootd: error:" in p.stderr
        assert db.read_bytes() == before
        assert not db.with_name(db.name + "-shm").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_reading_never_creates_a_state_dir(cli, tmp_path):
    for args in (["hosts"], ["status", "--stale", "1d"], ["events"], ["role", "list"],
                 ["explain", MAC], ["keys", "list"], ["images", "gc", "--dry-run"]):
        p = cli.run(*args, check=False)
        assert p.returncode == 2 and "no state directory" in p.stderr, (args, p.stderr)
        assert not cli.state_dir.exists(), args
    p = cli.run("role", "add", "web", "--kernel", "/nonexistent", "--initrd", "/x", check=False)
    assert p.returncode == 2


def test_writing_command_says_it_made_the_state_dir(cli, role_files):
    k, i = role_files
    p = cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    assert f"created state directory {cli.state_dir}" in p.stderr
    p = cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    assert "created state directory" not in p.stderr


def test_gc_dry_run_tells_what_the_real_run_does(cli, tmp_path):
    for n in range(3):  # 3 generations, each with its own files
        k, i = tmp_path / f"k{n}", tmp_path / f"i{n}"
        k.write_bytes(os.urandom(300_000))
        i.write_bytes(os.urandom(400_000))
        cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    dry = cli.json("images", "gc", "--keep", "1", "--grace", "0", "--dry-run")
    assert cli.json("role", "generations", "web")[0]["generation"] == 1  # nothing forgotten
    real = cli.json("images", "gc", "--keep", "1", "--grace", "0")
    assert dry["pruned"] == real["pruned"] == {"web": [1, 2]}
    assert dry["freed"] == real["freed"] == 1_400_000
    assert sorted(dry["artifacts"]) == sorted(real["artifacts"]) and len(real["artifacts"]) == 4
    assert dry["dry_run"] and not real["dry_run"]
    assert [g["generation"] for g in cli.json("role", "generations", "web")] == [3]
    text = cli.run("images", "gc", "--keep", "1", "--grace", "0", "--dry-run").stdout
    assert text.startswith("would free 0 B")  # all gone already


def test_closed_pipe_is_quiet(cli, role_files, tmp_path):
    _role(cli, role_files)
    rows = ["mac,role,hostname"] + [f"52:54:00:16:{n // 256:02x}:{n % 256:02x},web,h{n}"
                                    for n in range(3000)]
    (tmp_path / "hosts.csv").write_text("\n".join(rows) + "\n")
    cli.run("enroll", "--from", str(tmp_path / "hosts.csv"), "--no-identity")
    env = {**os.environ, "NETBOOTD_STATE_DIR": str(cli.state_dir)}
    p = subprocess.run(f"{sys.executable} -m netbootd hosts | head -1", shell=True,
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.startswith("MAC") and p.stdout.count("\n") == 1
    assert p.stderr == "", p.stderr
    # the command itself: ended by the pipe (141), not a traceback (1)
    p = subprocess.run(f"set -o pipefail; {sys.executable} -m netbootd hosts --json | head -c 10",
                       shell=True, capture_output=True, text=True, env=env, timeout=60,
                       executable="/bin/bash")
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)


def test_global_options_after_the_subcommand(cli, role_files, tmp_path):
    _role(cli, role_files)
    cli.run("enroll", MAC, "web", "--hostname", "g1", "--no-identity")
    env = {k: v for k, v in os.environ.items() if k != "NETBOOTD_STATE_DIR"}
    for argv in (["hosts", "--json", "--state-dir", str(cli.state_dir)],
                 ["--state-dir", str(cli.state_dir), "hosts", "--json"],
                 ["hosts", "-v", "--state-dir", str(cli.state_dir), "--json"]):
        p = subprocess.run([sys.executable, "-m", "netbootd", *argv], capture_output=True,
                           text=True, env=env, timeout=60)
        assert p.returncode == 0, (argv, p.stderr)
        assert json.loads(p.stdout)[0]["hostname"] == "g1"
    # `serve -v --config FILE` parses (the config's bad port proves the file was read)
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 99999\n")
    p = subprocess.run([sys.executable, "-m", "netbootd", "serve", "-v", "--config", str(bad)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "http.port" in p.stderr, p.stderr


def test_role_show_and_remove(cli, role_files):
    _role(cli, role_files)
    _role(cli, role_files, "db")
    cli.run("enroll", MAC, "web", "--hostname", "r1", "--no-identity")
    show = cli.json("role", "show", "web")
    assert show["name"] == "web" and show["generation"] == 1 and show["mode"] == "ramdisk"
    assert show["hosts"] == [{"mac": MAC, "hostname": "r1"}]
    assert "r1" in cli.run("role", "show", "web").stdout
    p = cli.run("role", "remove", "web", check=False)
    assert p.returncode == 2 and "still has 1 host(s): r1" in p.stderr
    assert "role db removed" in cli.run("role", "remove", "db").stdout
    assert [r["name"] for r in cli.json("role", "list")] == ["web"]
    p = cli.run("role", "show", "db", check=False)
    assert p.returncode == 2 and "unknown role 'db'" in p.stderr
    assert any(e["event"] == "role-removed" for e in cli.json("events"))


@pytest.mark.parametrize("name", ["525400150002", "5254.0015.0002", "52-54-00-15-00-02"])
def test_hostname_spelled_like_a_mac_is_refused(cli, role_files, name):
    _role(cli, role_files)
    cli.run("enroll", MAC2, "web", "--hostname", "victim", "--no-identity")
    # a dotted name is no hostname (one DNS label) but could be a canonical name
    option = "--canon" if "." in name else "--hostname"
    p = cli.run("enroll", MAC, "web", option, name, "--no-identity", check=False)
    assert p.returncode == 2 and "spelled like the MAC address 52:54:00:15:00:02" in p.stderr
    assert [h["hostname"] for h in cli.json("hosts")] == ["victim"]


@pytest.mark.parametrize(("mac", "why"), [("00:00:00:00:00:00", "all-zero"),
                                          ("ff:ff:ff:ff:ff:ff", "broadcast"),
                                          ("01:00:5e:00:00:01", "multicast"),
                                          ("33:33:00:00:00:01", "multicast")])
def test_group_and_zero_macs_are_refused(cli, role_files, mac, why):
    _role(cli, role_files)
    p = cli.run("enroll", mac, "web", "--no-identity", check=False)
    assert p.returncode == 2 and why in p.stderr
    assert cli.json("hosts") == []


def test_one_duration_parser_everywhere(cli, role_files, tmp_path):
    _role(cli, role_files)
    cli.run("enroll", MAC, "web", "--hostname", "d1", "--no-identity")
    conf = tmp_path / "netbootd.toml"
    conf.write_text('[provision]\nttl = "2h"\n')
    t0 = time.time()
    cli.run("--config", str(conf), "reprovision", "d1")
    (h,) = cli.json("hosts")
    from datetime import datetime

    left = datetime.fromisoformat(h["provision"]["expires"]).timestamp() - t0
    assert 7190 < left < 7210, left
    cli.run("reprovision", "d1", "--ttl", "90m")
    assert cli.run("status", "--stale", "1w").stdout == "1 host(s): 1 armed\nnothing stale\n"
    for grace in ("1h", "3600", "30m", "0"):
        assert cli.json("images", "gc", "--grace", grace)["freed"] == 0
    for bad in (["images", "gc", "--grace", "1x"], ["reprovision", "d1", "--ttl", "soon"],
                ["status", "--stale=-1d"], ["status", "--stale", "0d"]):
        p = cli.run(*bad, check=False)
        assert p.returncode == 2 and ("not a duration" in p.stderr
                                      or "must be more than 0" in p.stderr), (bad, p.stderr)
    conf.write_text('[identity]\ntoken_ttl = "10 minutes"\n')
    p = cli.run("--config", str(conf), "hosts", check=False)
    assert p.returncode == 2 and "identity.token_ttl" in p.stderr


def test_explain_by_hostname_and_json(cli, role_files):
    _role(cli, role_files)
    cli.run("enroll", MAC, "web", "--hostname", "x1", "--no-identity")
    by_name = cli.run("explain", "x1", "--advertise-address", "10.1.2.3").stdout
    by_mac = cli.run("explain", MAC, "--advertise-address", "10.1.2.3").stdout
    assert by_name == by_mac and "x1, role web" in by_name
    j = cli.json("explain", "x1", "--advertise-address", "10.1.2.3", "--arch", "uefi")
    assert j["mac"] == MAC and j["host"]["role"] == "web" and j["script"]["status"] == 200
    assert "kernel http://10.1.2.3/artifacts/" in j["script"]["text"]
    assert [s["reply"] is not None for s in j["dhcp"]] == [True, True]
    assert j["script"]["text"] in by_mac
    p = cli.run("explain", "nosuchhost", check=False)
    assert p.returncode == 2 and "no enrolled host 'nosuchhost'" in p.stderr


def test_a_host_without_a_hostname_is_named_one_way(cli, role_files):
    _role(cli, role_files)
    cli.run("enroll", MAC, "web", "--no-identity")
    outs = [cli.run("reprovision", MAC).stdout,
            cli.run("status", "--stale", "1s", check=False).stdout]
    time.sleep(1.1)
    outs.append(cli.run("status", "--stale", "1s", check=False).stdout)
    outs.append(cli.run("reprovision", "--cancel", MAC).stdout)
    outs.append(cli.run("unenroll", MAC).stdout)
    text = "\n".join(outs)
    assert MAC in text and MAC.replace(":", "-") not in text, text
    assert f"unenrolled {MAC}\n" in text and f"{MAC}: re-provision armed" in text


def test_kernel_directory_says_so(cli, tmp_path):
    (tmp_path / "kdir").mkdir()
    (tmp_path / "initrd").write_bytes(b"x" * 100)
    p = cli.run("role", "add", "web", "--kernel", str(tmp_path / "kdir"), "--initrd",
                str(tmp_path / "initrd"), check=False)
    assert p.returncode == 2 and "is a directory" in p.stderr and "no such file" not in p.stderr


def test_every_listing_has_json(cli, role_files):
    _role(cli, role_files)
    cli.run("enroll", MAC, "web", "--hostname", "j1")
    listings = [["hosts"], ["status"], ["events"], ["role", "list"], ["role", "show", "web"],
                ["role", "generations", "web"], ["role", "mode", "web"], ["keys", "list"],
                ["keys", "list", "j1"], ["nfs", "list"], ["iscsi", "gold", "list"],
                ["iscsi", "list"], ["images", "gc", "--dry-run"], ["explain", "j1"]]
    for args in listings:
        data = cli.json(*args)
        assert isinstance(data, list | dict) and data != {}, args


def test_version_names_the_schema(cli):
    from netbootd.store.migrations import MIGRATIONS

    out = cli.run("--version").stdout.strip()
    assert out.endswith(f"(state schema {len(MIGRATIONS)})") and out.startswith("netbootd ")


def test_bash_completion(cli):
    script = cli.run("completion", "bash").stdout

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        p = subprocess.run(["bash", "-c", f"{script}\nCOMP_WORDS=(netbootd {quoted}); "
                            f"COMP_CWORD={len(words)}; _netbootd; printf '%s\\n' "
                            '"${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    assert complete("ro") == ["role"]
    assert {"add", "list", "show", "remove", "build"} <= set(complete("role", ""))
    assert complete("hosts", "--j") == ["--json"]
    assert complete("explain", "x", "--arch", "ue") == ["uefi"]
    assert "--state-dir" in complete("hosts", "--st")  # global options after the subcommand


def test_bulk_enroll_csv_and_json_all_or_nothing(cli, role_files, tmp_path):
    _role(cli, role_files)
    _role(cli, role_files, "db")
    csv = tmp_path / "hosts.csv"
    csv.write_text("mac,role,hostname,canon,tags\n"
                   f"{MAC},web,b1,b1.example.org,rack1 rack2\n"
                   "52-54-00-15-00-02,db,,,\n")
    out = cli.run("enroll", "--from", str(csv)).stdout
    assert "2 host(s) enrolled, 0 updated" in out and "2 new identities armed" in out
    hosts = {h["mac"]: h for h in cli.json("hosts")}
    assert hosts[MAC]["tags"] == ["rack1", "rack2"] and hosts[MAC]["canon"] == "b1.example.org"
    assert hosts[MAC2]["hostname"] is None and hosts[MAC2]["role"] == "db"
    keys = cli.json("keys", "list")
    assert len(keys) == 2 and all(k["ssh_rsa_fingerprint"] is None and k["armed"] for k in keys)
    # a bad row anywhere: nothing from the file is written
    js = tmp_path / "more.json"
    js.write_text(json.dumps([{"mac": "52:54:00:15:00:03", "role": "web", "hostname": "b3"},
                              {"mac": "ff:ff:ff:ff:ff:ff", "role": "web"},
                              {"mac": "52:54:00:15:00:04", "role": "nope"}]))
    p = cli.run("enroll", "--from", str(js), check=False)
    assert p.returncode == 2 and "more.json entry 2" in p.stderr and "broadcast" in p.stderr
    js.write_text(json.dumps({"hosts": [{"mac": "52:54:00:15:00:03", "role": "nope"}]}))
    p = cli.run("enroll", "--from", str(js), check=False)
    assert p.returncode == 2 and "unknown role(s) nope" in p.stderr
    js.write_text(json.dumps([{"mac": "52:54:00:15:00:03", "role": "web", "hostname": "b1"}]))
    p = cli.run("enroll", "--from", str(js), check=False)
    assert p.returncode == 2 and f"hostname b1 belongs to {MAC}" in p.stderr
    assert len(cli.json("hosts")) == 2
    idir = cli.state_dir / "identity"
    assert sorted(d.name for d in idir.iterdir() if d.is_dir()) == \
        [MAC.replace(":", "-"), MAC2.replace(":", "-")]
    # re-importing the same file updates, keeps the identities
    out = cli.run("enroll", "--from", str(csv)).stdout
    assert "0 host(s) enrolled, 2 updated" in out and "identit" not in out


def test_serve_makes_pending_rsa_keys(cli, role_files, tmp_path):
    """Bulk enrollment leaves RSA pending; `serve`'s background job makes them (files 0600,
    the store's public half matches the file)."""
    _role(cli, role_files)
    csv = tmp_path / "hosts.csv"
    csv.write_text("mac,role\n" + "".join(f"52:54:00:15:01:{n:02x},web\n" for n in range(3)))
    cli.run("enroll", "--from", str(csv))
    assert all(k["ssh_rsa_fingerprint"] is None for k in cli.json("keys", "list"))
    d = start_daemon(cli, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            keys = cli.json("keys", "list")
            if all(k["ssh_rsa_fingerprint"] for k in keys):
                break
            time.sleep(0.5)
        assert all(k["ssh_rsa_fingerprint"] for k in keys), (tmp_path / "serve.log").read_text()
    finally:
        stop_daemon(d)
    for gen in (cli.state_dir / "identity").glob("*/*-*"):
        pub = (gen / "ssh_host_rsa_key.pub").read_text().split()[1]
        assert oct((gen / "ssh_host_rsa_key").stat().st_mode & 0o777) == "0o600"
        assert any(k["ssh_rsa_fingerprint"] for k in keys) and pub
    assert "made 3 pending RSA host key(s)" in (tmp_path / "serve.log").read_text() or \
        "pending RSA host key" in (tmp_path / "serve.log").read_text()
