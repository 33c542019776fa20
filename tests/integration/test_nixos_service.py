"""netbootd.service as nixos/module.nix renders it, started the way systemd would start it as far
as this machine can without systemd as PID 1: its ExecStart and Environment=, as its User= (a
numeric stand-in, there is no `netbootd` user here), with exactly its AmbientCapabilities= and
CapabilityBoundingSet=, NoNewPrivileges=, UMask= and LimitNOFILE= (util-linux setpriv and
prlimit; the file limit capped at this machine's hard limit when lower), inside a network
namespace on the ports a site uses (67, 69, 80, 443, 4011). It comes up with only those two
capabilities. Then the operator's `netbootd` command the module installs, run as root, writes as
the service user (a mount namespace lends /etc/passwd a `netbootd`), and the service serves what
it wrote: an enrolled host's script with its identity offered.

Not emulated (systemd does them): ProtectSystem=, the other sandboxing, SystemCallFilter=. The
package is this checkout run by Debian's python3 with the venv's libraries (the venv's own
interpreter may sit where the service user cannot reach).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import nixenv, nixos
from testbed.netns import Env, cleanup_stale, http_get, veth
from testbed.nixos import SERVER, SERVER_HOST, build, builds, system_expr, unit_exec, unit_fields
from testbed.procs import netns_argv, wait_for
from testbed.skips import netns_lab, require, unavailable

PREFIX = "nbdsvc"
UID = 64123  # the service user's stand-in
SRV, CLI = "10.77.0.1", "10.77.0.2"
MAC = "52:54:00:5e:71:01"
CAPS = "+net_bind_service,+net_raw"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Env, Path]]:
    """A namespace pair, and a work directory others may traverse (the service user reads its
    package, configuration and state there)."""
    why = nixos.missing()
    if why:
        unavailable(why)
    require(netns_lab(PREFIX, {"setpriv": "util-linux", "prlimit": "util-linux",
                               "unshare": "util-linux"}))
    cleanup_stale(PREFIX)
    env = Env(PREFIX, stop_timeout=5.0)
    env.workdir.chmod(0o755)
    try:
        veth(env.netns("srv"), env.netns("cli"), f"{SRV}/24", f"{CLI}/24")
        with nixenv.exported(env.workdir / "nix"):
            yield env, env.workdir
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(env.workdir)], check=False)
        env.close()


def caps(values: list[str]) -> str:
    names = sorted({c.lower().removeprefix("cap_") for v in values for c in v.split()})
    return ",".join(f"+{n}" for n in names)


def test_service_runs_as_its_user_with_two_capabilities(lab: tuple[Env, Path]) -> None:
    env, work = lab
    state = work / "state"
    system = system_expr(str(SERVER), f"""{{ pkgs, ... }}: {{
      services.netbootd = {{
        enable = true; package = {nixos.checkout_package(any_user=True)}; stateDir = "{state}";
        settings = {{ interface = "eth0"; advertise_address = "{SRV}"; http.port = 80;
                     https.port = 443;
                     # the test's client fetches its script without a DHCP exchange first
                     security.boot_binding = "requester"; }};
      }};
      {SERVER_HOST}
    }}""")
    units = build(f"({system}).config.system.build.units", work / "nix")
    u = unit_fields(units / "netbootd.service")
    assert u["User"] == ["netbootd"] and u["Group"] == ["netbootd"]
    assert caps(u["AmbientCapabilities"]) == caps(u["CapabilityBoundingSet"]) == CAPS
    assert u["NoNewPrivileges"] == ["true"] and u["UMask"] == ["0077"]
    start, env_vars = unit_exec(units / "netbootd.service")
    # what the tmpfiles rules make before the service starts
    state.mkdir(mode=0o700)
    os.chown(state, UID, UID)

    # LimitNOFILE=, or this machine's hard limit when that is lower (a sandbox here caps it at
    # 20000 and root cannot raise it)
    nofile = min(int(u["LimitNOFILE"][0]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    argv = ["prlimit", f"--nofile={nofile}", "--",
            "setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
            f"--inh-caps=-all,{CAPS}", f"--ambient-caps=-all,{CAPS}",
            f"--bounding-set=-all,{CAPS}", "--no-new-privs", "--",
            "env", "-i", *env_vars, "/bin/sh", "-c", f'umask {u["UMask"][0]} && exec "$@"', "sh",
            *start]
    srv = env.namespaces[0]
    proc = env.spawn("netbootd", netns_argv(srv, argv))

    def healthy() -> bool:
        if not proc.alive():
            raise AssertionError(f"netbootd serve exited:\n{proc.log_tail()}")
        try:
            return http_get(srv, f"http://{SRV}/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    wait_for(healthy, 30, "netbootd /healthz on port 80")
    pid = proc.pid  # prlimit, setpriv, env and sh each exec the next: this is netbootd
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":\t" in line)
    assert status["Uid"].split()[0] == str(UID) and status["NoNewPrivs"].strip() == "1"
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert f"Max open files            {nofile:<21}{nofile:<21}files" in limits, limits
    # CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13), nothing else
    assert {status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} \
        == {f"{(1 << 10) | (1 << 13):016x}"}
    listening = subprocess.run(netns_argv(srv, ["ss", "-H", "-lntup"]), capture_output=True,
                               text=True, check=True).stdout
    for proto, port in (("udp", 67), ("udp", 69), ("udp", 4011), ("tcp", 80), ("tcp", 443)):
        assert any(line.startswith(proto) and f":{port} " in line and f"pid={pid}," in line
                   for line in listening.splitlines()), (proto, port, listening)
    db = state / "netbootd.sqlite3"
    assert db.stat().st_uid == UID and db.stat().st_mode & 0o077 == 0

    # the operator's `netbootd` (the wrapper the module installs), called by root
    (wrapper,) = builds(f"({system}).config.environment.systemPackages", work / "nix")
    files = work / "files"
    files.mkdir(mode=0o755)
    for name in ("vmlinuz", "initrd"):
        (files / name).write_bytes(os.urandom(4096))
        (files / name).chmod(0o644)
    conf = start[2]  # netbootd --config <file> serve
    as_operator(work, wrapper / "bin" / "netbootd", "--config", conf, "role", "add", "web",
                "--kernel", str(files / "vmlinuz"), "--initrd", str(files / "initrd"))
    as_operator(work, wrapper / "bin" / "netbootd", "--config", conf, "enroll", MAC, "web",
                "--hostname", "svc1")
    owners = {p.stat().st_uid for p in state.rglob("*")}
    assert owners == {UID}, owners  # nothing the service cannot read
    mid = json.loads(as_operator(work, wrapper / "bin" / "netbootd", "--config", conf, "keys",
                                 "list", "--json"))[0]["machine_id"]
    status_, body = http_get(env.namespaces[1], f"http://{SRV}/boot/{MAC.replace(':', '-')}.ipxe")
    script = body.decode()
    assert status_ == 200 and "netbootd.identity=https://" in script, script
    assert f"systemd.machine_id={mid}" in script


def as_operator(work: Path, *argv: object) -> str:
    """Run as root in a mount namespace whose /etc/passwd and /etc/group also name the service
    user `netbootd` (uid/gid UID), as a NixOS host's do."""
    passwd, group = work / "passwd", work / "group"
    if not passwd.exists():
        passwd.write_text(Path("/etc/passwd").read_text()
                          + f"netbootd:x:{UID}:{UID}::/nonexistent:/usr/sbin/nologin\n")
        group.write_text(Path("/etc/group").read_text() + f"netbootd:x:{UID}:\n")
    script = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && '
              'exec "$@"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        "sh", str(passwd), str(group), *map(str, argv)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                            f"{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    return r.stdout

