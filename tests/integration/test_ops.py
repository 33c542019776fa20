"""Running netbootd as a service (issue #15): the shipped systemd unit checked by Debian's own
systemd (`systemd-analyze verify` and `security --offline`; systemd is not PID 1 here, so the
unit is never started by systemd -- tests/e2e/test_e2e_service.py runs the server the way the
unit does, as its user with its two capabilities), `install --systemd` into a root with
systemd-sysusers, backup/restore round trip, and the log formats."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from testbed.skips import missing_tools, require
from tests.conftest import REPO, start_daemon, stop_daemon

SHIPPED = REPO / "contrib" / "systemd" / "netbootd.service"
MAC, MAC2 = "52:54:00:15:0b:01", "52:54:00:15:0b:02"


def _netbootd_bin(tmp_path: Path) -> Path:
    """An executable `netbootd` for ExecStart= (the venv's entry point)."""
    b = Path(sys.executable).with_name("netbootd")
    assert b.is_file(), b
    return b


def test_install_systemd_and_verify_the_unit(cli, tmp_path):
    require(missing_tools({"systemd-analyze": "systemd", "systemd-sysusers": "systemd"}))
    root = tmp_path / "root"
    binary = _netbootd_bin(tmp_path)
    out = cli.run("install", "--systemd", "--root", str(root), "--bin", str(binary),
                  "--link").stdout
    unit = root / "etc/systemd/system/netbootd.service"
    assert f"wrote {unit}" in out and "systemctl daemon-reload" in out
    # the installed unit is the shipped one with ExecStart= naming this netbootd
    shipped, installed = SHIPPED.read_text().splitlines(), unit.read_text().splitlines()
    diff = [(a, b) for a, b in zip(shipped, installed, strict=True) if a != b]
    assert diff == [("ExecStart=/usr/local/bin/netbootd serve", f"ExecStart={binary} serve")]
    text = unit.read_text()
    assert re.search(r"^AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW$", text, re.M)
    assert re.search(r"^CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW$", text, re.M)
    for line in ("User=netbootd", "StateDirectory=netbootd", "LimitNOFILE=65536",
                 "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert re.search(rf"^{line}$", text, re.M), line
    # Debian's systemd: no warning at all (an unknown key is only a warning, rc 0)
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert (v.returncode, v.stdout.strip(), v.stderr.strip()) == (0, "", ""), v.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for netbootd.service: ([\d.]+) (\w+)", s.stdout)
    assert m and float(m.group(1)) <= 2.0, s.stdout[-500:]
    print(f"systemd-analyze security --offline: {m.group(1)} {m.group(2)}")
    # a unit that names a missing binary fails verify: the check above can fail
    bad = tmp_path / "netbootd.service"
    bad.write_text(text.replace(str(binary), "/nonexistent/netbootd"))
    v = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert v.returncode != 0 and "not executable" in v.stderr
    # the user, made by systemd-sysusers in that root; the example config; the sudo link
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^netbootd:x:\d+:\d+:.*:/var/lib/netbootd:/usr/sbin/nologin$", passwd,
                     re.M), passwd
    assert (root / "etc/netbootd/netbootd.toml").is_file()
    assert (root / "usr/local/bin/netbootd").resolve() == binary.resolve()
    (root / "etc/netbootd/netbootd.toml").write_text("# mine\n")
    out = cli.run("install", "--systemd", "--root", str(root), "--bin", str(binary)).stdout
    assert "kept" in out and (root / "etc/netbootd/netbootd.toml").read_text() == "# mine\n"


def _tree(d: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.name.startswith((".", "netbootd.sqlite3", "images.lock")):
            out[p.relative_to(d).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                p.stat().st_mode & 0o777)
    return out


def test_backup_restore_round_trip(cli, role_files, tmp_path):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("enroll", MAC, "web", "--hostname", "b1", "--tag", "rack1")
    cli.run("enroll", MAC2, "web", "--no-identity")
    (tmp_path / "bmc.pw").write_text("ops-bmc-pw\n")
    cli.run("bmc", "set", "b1", "--ipmi", "127.0.0.1:6230", "--user", "admin",
            "--password-file", str(tmp_path / "bmc.pw"))
    d = start_daemon(cli, tmp_path / "serve.log")  # makes the CA, the certificate, the secret
    try:
        cli.run("reprovision", "b1")
        backup = tmp_path / "nb.tgz"
        out = cli.run("backup", str(backup), "--artifacts").stdout  # while serve runs
    finally:
        stop_daemon(d)
    assert "backup" in out and oct(backup.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(backup) as tar:
        names = tar.getnames()
    assert "netbootd.sqlite3" in names and "identity/token.secret" in names
    assert "tls/ca.key" in names and any(n.startswith("artifacts/") for n in names)
    assert f"bmc/{MAC.replace(':', '-')}/password" in names
    # nothing secret is readable by others inside the archive either
    with tarfile.open(backup) as tar:
        for m in tar.getmembers():
            if m.name.endswith((".key", "token.secret", "password")) or "_key" in m.name:
                assert m.mode & 0o077 == 0, m.name
    before = {a: cli.json(*a.split()) for a in ("hosts", "keys list", "tls show",
                                                "role generations web", "events", "bmc show b1")}
    src_tree = _tree(cli.state_dir)
    other = type(cli)(tmp_path / "restored")
    out = other.run("restore", str(backup)).stdout
    assert "restored" in out
    for a, data in before.items():
        got = other.json(*a.split())
        if a == "tls show":  # paths name the state directory
            got, data = ({k: v for k, v in x.items() if k != "ca_cert"} for x in (got, data))
        assert got == data, a
    assert _tree(other.state_dir) == src_tree
    assert (other.state_dir / "identity").stat().st_mode & 0o777 == 0o700
    # the restored state serves: the same script for b1 (same role, artifacts, flag)
    assert other.run("explain", "b1").stdout == cli.run("explain", "b1").stdout
    # a live state dir is not overwritten without --force; with it, the old one is kept
    p = cli.run("restore", str(backup), check=False)
    assert p.returncode == 2 and "--force" in p.stderr
    cli.run("unenroll", MAC2)
    out = cli.run("restore", str(backup), "--force").stdout
    assert "previous state kept in" in out
    assert len(cli.json("hosts")) == 2
    kept = [p for p in cli.state_dir.parent.iterdir() if ".before-restore-" in p.name]
    assert len(kept) == 1 and (kept[0] / "netbootd.sqlite3").is_file()
    # a damaged backup is refused, nothing replaced
    bad = tmp_path / "bad.tgz"
    with tarfile.open(backup) as tar, tarfile.open(bad, "w:gz") as out_tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            data = f.read() if f else b""
            if m.name == "tls/ca.key":
                data = data[:-10] + b"0123456789"
            m.size = len(data)
            import io
            out_tar.addfile(m, io.BytesIO(data) if f else None)
    third = type(cli)(tmp_path / "third")
    p = third.run("restore", str(bad), check=False)
    assert p.returncode == 2 and "tls/ca.key is missing or damaged" in p.stderr
    assert not third.state_dir.exists()


def test_backup_without_artifacts_lists_them(cli, role_files, tmp_path):
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    out = cli.run("backup", str(tmp_path / "b.tgz")).stdout
    assert "2 artifact(s) listed, not included" in out
    other = type(cli)(tmp_path / "r")
    p = other.run("restore", str(tmp_path / "b.tgz"))
    assert "2 artifact(s) the generations name are not in the backup" in p.stderr
    shutil.copytree(cli.state_dir / "artifacts", other.state_dir / "artifacts")
    assert other.json("role", "list") == cli.json("role", "list")


@pytest.mark.parametrize("fmt", ["json", "journal"])
def test_log_formats(cli, tmp_path, fmt):
    d = start_daemon(cli, tmp_path / "serve.log", "--log-format", fmt)
    stop_daemon(d)
    lines = [ln for ln in (tmp_path / "serve.log").read_text().splitlines() if ln.strip()]
    assert any("netbootd serving" in ln for ln in lines)
    for ln in lines:
        if fmt == "json":
            rec = json.loads(ln)
            assert set(rec) >= {"time", "level", "logger", "message"}
        else:
            assert re.match(r"^<[2-7]>netbootd", ln), ln


def test_log_format_auto_is_journal_under_systemd(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")  # what systemd sets for its services
    d = start_daemon(cli, tmp_path / "serve.log")
    stop_daemon(d)
    first = (tmp_path / "serve.log").read_text().splitlines()[0]
    assert first.startswith("<6>netbootd"), first
