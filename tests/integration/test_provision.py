"""One-shot re-provisioning with the real daemon and CLI on loopback: the flag on the served
script until a `provisioned` report with the latest flagged boot's token; surviving a boot that
never reports; the loop guard; TTL expiry; cancel; wrong and stale tokens refused and audited;
per-boot ids on events; the role's own flag name; groups by tag; `status --stale` exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time

import pytest

from netbootd import tokens
from netbootd.model import MacAddress
from tests.conftest import start_daemon, stop_daemon
from tests.integration.identity_helpers import curl, offer

MAC = "52:54:00:12:34:56"
MAC2 = "52:54:00:12:34:57"
MAC3 = "52:54:00:12:34:58"
FLAG = "netbootd.provision_disks=1"


def _setup(cli, role_files, *role_args):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline",
            "console=ttyS0", *role_args)
    cli.run("enroll", MAC, "web", "--hostname", "web1", "--no-identity", "--tag", "rack1")


def _script(daemon, mac=MAC) -> str:
    status, headers, body = daemon.get(f"/boot/{mac.replace(':', '-')}.ipxe")
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store", "every script carries a per-boot token"
    return body.decode()


def _kernel_words(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if ln.startswith("kernel ")]
    return line.split()


def _token(script: str) -> str:
    (word,) = [w for w in _kernel_words(script) if w.startswith("netbootd.boot=")]
    return word.split("=", 1)[1]


def _boot_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _flagged(script: str, flag: str = FLAG) -> bool:
    return flag in _kernel_words(script)


def _report(daemon, event="provisioned", token=None, mac=MAC, **extra):
    body: dict[str, object] = {"event": event, **extra}
    if token is not None:
        body["token"] = token
    return daemon.post_json(f"/api/v1/hosts/{mac.replace(':', '-')}/events", body)


def _host(cli, name="web1"):
    return next(h for h in cli.json("hosts") if h["hostname"] == name)


def _events(cli, *args):
    return cli.json("events", *args)


def test_flag_until_provisioned_and_survives_a_boot_that_never_reports(cli, role_files, daemon):
    _setup(cli, role_files)
    assert not _flagged(_script(daemon)), "nothing armed: no flag"
    out = cli.run("reprovision", "web1").stdout
    assert f"re-provision armed: `{FLAG}`" in out and "at most 3 boot(s)" in out
    assert _host(cli)["state"] == "armed"
    s1 = _script(daemon)  # boot 1 gets the flag ... and never reports (crashed mid-install)
    assert _flagged(s1)
    # fetching the script is not success: the next boot gets the flag again
    s2 = _script(daemon)
    assert _flagged(s2) and _token(s1) != _token(s2)
    h = _host(cli)
    assert h["state"] == "provisioning" and h["provision"]["boots"] == 2
    assert "provisioning (2/3)" in cli.run("hosts").stdout
    # the host of boot 2 reports: cleared, last_provisioned set; the next boot has no flag
    assert _report(daemon, "provision-started", _token(s2))[0] == 200
    status, reply = _report(daemon, token=_token(s2), marker="x")
    assert status == 200 and reply["boot"] == _boot_id(_token(s2)), reply
    h = _host(cli)
    assert h["state"] == "ok" and h["provision"] is None and h["last_provisioned"] is not None
    s3 = _script(daemon)
    assert not _flagged(s3)
    evs = _events(cli, "web1")
    kinds = [e["event"] for e in evs]
    assert kinds == ["provision-armed", "provision-offered", "provision-offered",
                     "provision-started", "provisioned"]
    offered = [e for e in evs if e["event"] == "provision-offered"]
    assert [e["boot"] for e in offered] == [_boot_id(_token(s1)), _boot_id(_token(s2))]
    assert all(e["source_ip"] == "127.0.0.1" for e in offered)
    prov = evs[-1]
    assert prov["boot"] == _boot_id(_token(s2)) and prov["detail"] == {"marker": "x",
                                                                      "boot_number": 2}
    assert "token" not in str(evs), "the token itself is never recorded"
    table = cli.run("hosts").stdout.splitlines()
    assert table[0].split() == ["MAC", "HOSTNAME", "ROLE", "GEN", "STATE", "TAGS", "LAST", "BOOT",
                                "LAST", "PROVISIONED"]
    assert "ok" in table[1].split() and table[1].rstrip().endswith("ago")


def test_loop_guard_trips_after_n_boots(cli, role_files, daemon):
    _setup(cli, role_files)
    cli.run("reprovision", "web1")  # default provision.max_boots = 3
    assert [_flagged(_script(daemon)) for _ in range(3)] == [True, True, True]
    s4 = _script(daemon)  # three boots carried the flag, none reported: not a fourth time
    assert not _flagged(s4)
    h = _host(cli)
    assert h["state"] == "failed" and "loop guard: 3 boot(s)" in h["provision"]["reason"]
    p = cli.run("hosts")
    assert "failed" in p.stdout.splitlines()[1].split()
    assert "re-provision FAILED" in p.stderr
    failed = _events(cli, "web1")[-1]
    assert failed["event"] == "provision-failed" and failed["boot"] == _boot_id(_token(s4))
    assert failed["detail"]["by"] == "loop guard"
    assert not any(_flagged(_script(daemon)) for _ in range(3)), "failed stays off"
    st = cli.run("status", "--failed", check=False)
    assert st.returncode == 1 and "web1" in st.stdout and "loop guard" in st.stdout
    # the operator re-arms (fixed the install): the count starts again, here with --max-boots 1
    cli.run("reprovision", "web1", "--max-boots", "1")
    assert _flagged(_script(daemon)) and not _flagged(_script(daemon))
    assert _host(cli)["state"] == "failed"
    assert cli.run("status", "--failed", check=False).returncode == 1


def test_ttl_expiry_clears_it(cli, role_files, daemon):
    _setup(cli, role_files)
    out = cli.run("reprovision", "web1", "--ttl", "2s").stdout
    assert "until" in out
    s1 = _script(daemon)
    assert _flagged(s1)
    time.sleep(2.2)
    assert _host(cli)["state"] == "expired"  # what the clock says, before anyone clears it
    s2 = _script(daemon)
    assert not _flagged(s2)
    assert _host(cli)["state"] == "ok"
    ev = _events(cli, "web1")[-1]
    assert ev["event"] == "provision-expired" and ev["boot"] == _boot_id(_token(s2))
    assert "the flag expired at" in ev["detail"]["reason"] and ev["detail"]["boots"] == 1
    # a report for the boot that had the flag now finds nothing pending
    assert _report(daemon, token=_token(s1))[0] == 403
    assert "no re-provision pending" in _events(cli, "web1")[-1]["detail"]["reason"]


def test_cancel_clears_it(cli, role_files, daemon):
    _setup(cli, role_files)
    cli.run("reprovision", "web1")
    s1 = _script(daemon)
    assert _flagged(s1)
    out = cli.run("reprovision", "--cancel", "web1").stdout
    assert "re-provision cancelled (was armed, 1 flagged boot(s))" in out
    assert not _flagged(_script(daemon)) and _host(cli)["state"] == "ok"
    assert _events(cli, "web1")[-1]["event"] == "provision-cancelled"
    assert "no re-provision pending" in cli.run("reprovision", "--cancel", "web1").stdout
    assert _report(daemon, token=_token(s1))[0] == 403, "its token cleared nothing"
    assert _host(cli)["last_provisioned"] is None


def test_provisioned_with_wrong_or_stale_token_is_refused_and_audited(cli, role_files, tmp_path):
    """Every refusal is a 403 (401 without a token) and an audit row with the reason, and
    changes nothing; the host's own latest flagged boot's token clears the flag once. The
    server here records every refusal (unauthenticated_interval = 0); the bounded default is
    tested in tests/unit/test_http_handlers.py."""
    conf = tmp_path / "netbootd.toml"
    conf.write_text("[security]\nunauthenticated_interval = 0\n")
    daemon = start_daemon(cli, tmp_path / "serve.log", config=conf)
    try:
        _check_refusals(cli, role_files, daemon)
    finally:
        stop_daemon(daemon)


def _check_refusals(cli, role_files, daemon) -> None:
    _setup(cli, role_files)
    cli.run("enroll", MAC2, "web", "--hostname", "web2", "--no-identity")
    cli.run("reprovision", "web1")
    s1, s2 = _script(daemon), _script(daemon)  # two flagged boots
    t1, t2 = _token(s1), _token(s2)
    other = _token(_script(daemon, MAC2))  # netbootd's, but web2's
    tampered = t2[:20] + ("A" if t2[20] != "A" else "B") + t2[21:]
    secret = (cli.state_dir / "identity" / "token.secret").read_bytes()
    ident = tokens.mint(secret, MacAddress.parse(MAC), bytes(16))  # another kind of token
    elsewhere = tokens.mint_boot(secret, MacAddress.parse(MAC), "10.0.0.9", time.time(), bytes(12))
    status, reply = _report(daemon)
    assert status == 401 and "nothing changed" in reply["error"]
    ev = _events(cli, "web1")[-1]
    assert ev["event"] == "unauthenticated-report" and ev["detail"]["event"] == "provisioned"
    cases = [
        ("not-a-token", "malformed per-boot token", None),
        (tampered, "tampered per-boot token", None),
        (ident, "malformed per-boot token", None),
        (other, f"the per-boot token is for {MAC2}", None),
        (elsewhere, "bound to 10.0.0.9, not 127.0.0.1", None),
        (t1, "stale token: flagged boot 1, the latest is boot 2", _boot_id(t1)),
    ]
    for token, reason, boot in cases:
        status, reply = _report(daemon, token=token)
        assert status == 403 and "refused" in reply["error"], (token, reply)
        ev = _events(cli, "web1")[-1]
        assert ev["event"] == "denied" and ev["source_ip"] == "127.0.0.1", ev
        assert reason in ev["detail"]["reason"] and ev["detail"]["event"] == "provisioned", ev
        assert ev["boot"] == boot
        assert _host(cli)["state"] == "provisioning", "a refusal changes nothing"
    assert _report(daemon, token=t2)[0] == 200
    # the same token again: nothing is pending any more
    assert _report(daemon, token=t2)[0] == 403
    assert "no re-provision pending" in _events(cli, "web1")[-1]["detail"]["reason"]
    kinds = [e["event"] for e in _events(cli, "web1")]
    assert kinds.count("denied") == len(cases) + 1 and kinds.count("provisioned") == 1
    # other events: a bad token or none is refused and changes nothing; this boot's is taken
    assert _report(daemon, "booted", tampered)[0] == 403
    assert _report(daemon, "booted")[0] == 401
    assert _host(cli)["last_boot"] is None
    assert _report(daemon, "booted", t2)[0] == 200 and _host(cli)["last_boot"] is not None


def test_events_carry_the_boot_id(cli, role_files, daemon):
    _setup(cli, role_files)
    t1, t2 = _token(_script(daemon)), _token(_script(daemon))
    assert _report(daemon, "booted", t1, marker="none")[0] == 200
    assert _report(daemon, "provision-failed", t2, step="sfdisk")[0] == 200
    evs = _events(cli, "web1")
    assert [(e["event"], e["boot"]) for e in evs] == [("booted", _boot_id(t1)),
                                                      ("provision-failed", _boot_id(t2))]
    assert evs[0]["detail"] == {"marker": "none"} and evs[1]["detail"] == {"step": "sfdisk"}
    assert [e["event"] for e in cli.json("events", "--boot", _boot_id(t2)[:6])] == \
        ["provision-failed"]
    table = cli.run("events", "web1").stdout
    assert table.splitlines()[0].split() == ["TIME", "HOST", "EVENT", "FROM", "BOOT", "DETAIL"]
    assert _boot_id(t1) in table
    assert _host(cli)["state"] == "ok", "a host's provision-failed report does not arm anything"


def test_role_flag_name(cli, role_files, daemon):
    _setup(cli, role_files, "--provision-flag", "homelab.provision_disks=true")
    assert cli.json("role", "list")[0]["provision_flag"] == "homelab.provision_disks=true"
    cli.run("reprovision", "web1")
    s = _script(daemon)
    assert _flagged(s, "homelab.provision_disks=true") and not _flagged(s)
    ex = cli.run("explain", MAC).stdout
    assert "netbootd.boot=<boot-token>" in ex and "homelab.provision_disks=true" in ex
    assert "is on the next bound boot's command line" in ex
    cli.run("reprovision", "--cancel", "web1")
    # back to the default; a flag baked into the role's command line is never served
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i), "--cmdline",
            f"console=ttyS0 {FLAG}")
    out = cli.run("role", "set", "web", "--default-provision-flag").stdout
    assert f"re-provision flag {FLAG} (the default" in out
    assert not _flagged(_script(daemon)), "the image's own copy of the flag is removed"
    assert FLAG not in cli.run("explain", MAC).stdout.split("== iPXE script")[1]
    for bad in (["role", "set", "web", "--provision-flag", "x;reboot"],
                ["role", "set", "web", "--provision-flag", "netbootd.boot=1"],
                ["role", "set", "nope", "--provision-flag", "x"],
                ["role", "set", "web"],
                ["reprovision", "web1", "--ttl", "soon"],
                ["reprovision"],
                ["reprovision", "web1", "--tag", "rack1"],
                ["reprovision", "nosuch"]):
        p = cli.run(*bad, check=False)
        assert p.returncode == 2 and p.stderr.startswith("netbootd: error:"), (bad, p.stderr)
    assert _host(cli)["state"] == "ok"


def test_tags_act_on_a_group(cli, role_files, daemon):
    _setup(cli, role_files)  # web1 in rack1
    cli.run("enroll", MAC2, "web", "--hostname", "web2", "--no-identity", "--tag", "rack1")
    cli.run("enroll", MAC3, "web", "--hostname", "web3", "--no-identity", "--tag", "rack2")
    out = cli.run("reprovision", "--tag", "rack1", "--ttl", "2h").stdout
    assert "web1: re-provision armed" in out and "web2: re-provision armed" in out
    assert "web3" not in out
    assert {h["hostname"]: h["state"] for h in cli.json("hosts")} == \
        {"web1": "armed", "web2": "armed", "web3": "ok"}
    assert [h["hostname"] for h in cli.json("hosts", "--tag", "rack1")] == ["web1", "web2"]
    assert _flagged(_script(daemon, MAC2)) and not _flagged(_script(daemon, MAC3))
    cli.run("reprovision", "--cancel", "--tag", "rack1")
    assert {h["state"] for h in cli.json("hosts")} == {"ok"}
    p = cli.run("reprovision", "--tag", "rack9", check=False)
    assert p.returncode == 2 and "no hosts tagged 'rack9'" in p.stderr


def _age(cli, mac, created_days=None, boot_days=None, provisioned_days=None):
    now = time.time()
    db = sqlite3.connect(cli.state_dir / "netbootd.sqlite3")
    with db:
        for col, days in (("created", created_days), ("last_boot", boot_days),
                          ("last_provisioned", provisioned_days)):
            if days is not None:
                db.execute(f"UPDATE hosts SET {col}=? WHERE mac=?", (now - days * 86400, mac))
    db.close()


def test_status_stale_exit_codes_and_output(cli, role_files):
    p = cli.run("status", "--stale", "7d", check=False)  # no state: an error, nothing made
    assert p.returncode == 2 and "no state directory" in p.stderr
    assert not cli.state_dir.exists()
    k, i = role_files
    cli.run("role", "add", "other", "--kernel", str(k), "--initrd", str(i))
    p = cli.run("status", "--stale", "7d", check=False)
    assert (p.returncode, p.stdout) == (0, "0 host(s): none\nnothing stale\n")
    _setup(cli, role_files)  # web1, rack1
    cli.run("enroll", MAC2, "web", "--hostname", "web2", "--no-identity", "--tag", "rack1")
    cli.run("enroll", MAC3, "web", "--hostname", "web3", "--no-identity", "--tag", "rack2")
    # all enrolled just now, never booted: not stale yet
    p = cli.run("status", "--stale", "7d", check=False)
    assert p.returncode == 0 and p.stdout == "3 host(s): 3 ok\nnothing stale\n"
    _age(cli, MAC, created_days=30, boot_days=8, provisioned_days=40)  # booted 8 days ago
    _age(cli, MAC2, created_days=30, boot_days=1, provisioned_days=2)  # fine
    _age(cli, MAC3, created_days=10)  # never booted, enrolled 10 days ago
    p = cli.run("status", "--stale", "7d", check=False)
    assert p.returncode == 1, p
    lines = p.stdout.splitlines()
    assert lines[0] == "3 host(s): 3 ok"
    assert lines[1] == f"web1 ({MAC}, role web): not booted within 7d (last boot 8d ago)"
    assert lines[2] == f"web3 ({MAC3}, role web): not booted within 7d (last boot never)"
    assert len(lines) == 3
    assert cli.run("status", "--stale", "9d", check=False).returncode == 1  # web3 (10 d)
    assert cli.run("status", "--stale", "11d", check=False).returncode == 0
    # deploys: web1 provisioned 40 days ago, web3 never (enrolled 10 days ago)
    p = cli.run("status", "--stale-deploy", "30d", check=False)
    assert p.returncode == 1 and p.stdout.splitlines()[1:] == [
        f"web1 ({MAC}, role web): not provisioned within 30d (last provisioned 40d ago)"]
    p = cli.run("status", "--stale", "7d", "--stale-deploy", "30d", "--json", check=False)
    assert p.returncode == 1
    data = json.loads(p.stdout)
    assert data["hosts"] == 3 and data["states"] == {"ok": 3}
    assert {h["hostname"]: len(h["reasons"]) for h in data["listed"]} == {"web1": 2, "web3": 1}
    # groups
    p = cli.run("status", "--stale", "7d", "--tag", "rack1", check=False)
    assert p.returncode == 1 and "web1" in p.stdout and "web3" not in p.stdout
    assert p.stdout.startswith("2 host(s) tagged rack1: 2 ok\n")
    assert cli.run("status", "--stale", "7d", "--tag", "rack2", check=False).returncode == 1
    _age(cli, MAC3, boot_days=0)
    assert cli.run("status", "--stale", "7d", "--tag", "rack2", check=False).returncode == 0
    # no check asked: a summary, exit 0; a bad duration is an error (2), not "stale" (1)
    p = cli.run("status", check=False)
    assert (p.returncode, p.stdout) == (0, "3 host(s): 3 ok\n")
    for bad in ("7", "0d", "a week", "-1d"):
        p = cli.run("status", f"--stale={bad}", check=False)
        assert p.returncode == 2 and "--stale" in p.stderr and "not a duration" in p.stderr


def test_reprovision_json_state_in_hosts(cli, role_files):
    _setup(cli, role_files)
    cli.run("reprovision", "web1", "--ttl", "1w", "--max-boots", "5")
    p = _host(cli)["provision"]
    assert p["state"] == "armed" and p["boots"] == 0 and p["max_boots"] == 5 and p["via"] == "cli"
    from datetime import datetime

    span = datetime.fromisoformat(p["expires"]) - datetime.fromisoformat(p["armed"])
    assert abs(span.total_seconds() - 7 * 86400) <= 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_identity_events_carry_the_boot_id(cli, role_files, daemon, tmp_path):
    """The identity token issued with a script belongs to that script's boot: identity-issued and
    identity-delivered (and a refused reuse) carry its boot id."""
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("enroll", MAC, "web", "--hostname", "web1")  # identity generated and armed
    s = _script(daemon)
    o = offer(s)
    assert o is not None
    assert curl(o.url, o.pin, tmp_path / "id.tgz").code == 200
    assert curl(o.url, o.pin, tmp_path / "again.tgz").code == 403
    boot = _boot_id(_token(s))
    evs = [(e["event"], e["boot"]) for e in _events(cli, "web1") if e["event"] != "keys-generated"]
    assert evs == [("identity-issued", boot), ("identity-delivered", boot),
                   ("identity-denied", boot)]
