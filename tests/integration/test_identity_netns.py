"""ARP verification for real: the daemon in one network namespace, a client in another, joined
by a veth pair (one L2 segment). The client's interface has a chosen MAC.

- the enrolled MAC asks for its own identity: ARP answers with that MAC -> 200;
- the same machine fetches ANOTHER host's script (anyone can) and redeems that token from its
  own IP: the token's IP binding holds, but ARP answers with the wrong MAC -> 403;
- a machine that does not answer ARP at all -> 403.

Needs root and `ip netns`; SKIPs otherwise (FAILs with NETBOOTD_REQUIRE_E2E=1). Namespaces are
named after this process (`nbdid-<pid>-<starttime>-<n>-{s,c}`, testbed.netns), deleted afterwards
even on failure; stale ones from killed runs (owner gone) are removed first. Processes are
stopped by their PID only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import REPO
from testbed.netns import Env, cleanup_stale, ip, list_netns, veth
from testbed.procs import netns_argv, run
from testbed.skips import netns_lab, require
from tests.conftest import Cli
from tests.integration.identity_helpers import assert_no_key_material, curl, offer, unpack

PREFIX = "nbdid"
SRV_IP, CLI_IP = "10.213.7.1", "10.213.7.2"
CLIENT_MAC = "52:54:00:7a:00:01"  # the client namespace's eth0
OTHER_MAC = "52:54:00:7a:00:02"  # enrolled, but no such machine on the segment
MUTE_MAC = "52:54:00:7a:00:03"
HTTP, HTTPS = 8080, 8443


@dataclass
class Lab:
    env: Env
    srv: str
    cli_ns: str
    cli: Cli
    log: Path | None = None

    def in_cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run(netns_argv(self.cli_ns, argv), check=False)

    def script(self, mac: str) -> str:
        p = self.in_cli("curl", "-sS", "--max-time", "20",
                        f"http://{SRV_IP}:{HTTP}/boot/{mac.replace(':', '-')}.ipxe")
        assert p.returncode == 0, p.stderr
        return p.stdout

    def events(self, host: str) -> list[dict]:
        return self.cli.json("events", host)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require(netns_lab(PREFIX, {"curl": "curl"}))
    cleanup_stale(PREFIX)
    tmp = tmp_path_factory.mktemp("identity-netns")
    env = Env(PREFIX, tmp, stop_timeout=10.0)
    lab = Lab(env, env.netns("s"), env.netns("c"), Cli(tmp / "state"))
    try:
        veth(lab.srv, lab.cli_ns, f"{SRV_IP}/24", f"{CLI_IP}/24")
        ip("link", "set", "eth0", "address", CLIENT_MAC, ns=lab.cli_ns)
        # the state: a role and three hosts, each with an identity (the CLI needs no network)
        k, i = tmp / "k", tmp / "i"
        k.write_bytes(os.urandom(4096))
        i.write_bytes(os.urandom(4096))
        lab.cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
        for mac, name in ((CLIENT_MAC, "real"), (OTHER_MAC, "victim"), (MUTE_MAC, "mute")):
            lab.cli.run("enroll", mac, "web", "--hostname", name)
            lab.cli.run("keys", "arm", name, "--every-boot")
        lab.log = tmp / "serve.log"
        senv = {**os.environ, "NETBOOTD_STATE_DIR": str(lab.cli.state_dir)}
        senv.pop("NETBOOTD_CONFIG", None)
        # stopped by PID at env.close() (`ip netns exec` execs the server itself)
        argv = [sys.executable, "-m", "netbootd", "serve", "--no-dhcp", "--no-tftp",
                "--http-port", str(HTTP), "--https-port", str(HTTPS)]
        proc = env.spawn("serve", argv, ns=lab.srv, env=senv, cwd=REPO)
        deadline = time.monotonic() + 20
        while lab.in_cli("curl", "-s", "-o", "/dev/null", f"http://{SRV_IP}:{HTTP}/healthz").returncode:
            if not proc.alive() or time.monotonic() > deadline:
                raise AssertionError(f"netbootd did not start:\n{lab.log.read_text()}")
            time.sleep(0.1)
        yield lab
    finally:
        env.close()
    leftovers = [n for n in (lab.srv, lab.cli_ns) if n in list_netns()]
    assert not leftovers, f"namespaces not removed: {leftovers}"
    if lab.log is not None:
        assert_no_key_material(lab.cli.state_dir, lab.log.read_text(), *lab.cli.transcript)


def _redeem(lab: Lab, mac: str, tmp_path: Path):
    o = offer(lab.script(mac))
    assert o is not None and o.url.startswith(f"https://{SRV_IP}:{HTTPS}/identity/")
    return curl(o.url, o.pin, tmp_path / "id.tgz", netns=lab.cli_ns)


def test_arp_answer_from_the_enrolled_mac_delivers(lab: Lab, tmp_path: Path) -> None:
    f = _redeem(lab, CLIENT_MAC, tmp_path)
    assert f.code == 200, f.stderr
    assert "etc/ssh/ssh_host_ed25519_key" in unpack(f.body)[0]
    ev = lab.events("real")[-1]
    assert ev["event"] == "identity-delivered" and ev["source_ip"] == CLI_IP
    assert ev["detail"]["arp"] == f"match ({CLIENT_MAC} on eth0)"


def test_another_machine_cannot_take_a_hosts_identity(lab: Lab, tmp_path: Path) -> None:
    """The client fetches the victim's script itself, so the token is bound to the client's own
    IP; only ARP can tell that this IP is not the victim's machine."""
    f = _redeem(lab, OTHER_MAC, tmp_path)
    assert f.code == 403 and f.body.startswith(b"identity refused")
    ev = lab.events("victim")[-1]
    assert ev["event"] == "identity-denied" and ev["source_ip"] == CLI_IP
    assert ev["detail"]["reason"] == (
        f"ARP: {CLI_IP} answered with another MAC (answered by {CLIENT_MAC})"
    )


def test_no_arp_answer_is_refused(lab: Lab, tmp_path: Path) -> None:
    # The client stops answering ARP requests (TCP still works: the server learnt the client's
    # MAC from the client's own ARP request for the server).
    for conf in ("all", "eth0"):
        assert lab.in_cli("sysctl", "-qw", f"net.ipv4.conf.{conf}.arp_ignore=8").returncode == 0
    try:
        f = _redeem(lab, MUTE_MAC, tmp_path)
    finally:
        for conf in ("all", "eth0"):
            lab.in_cli("sysctl", "-qw", f"net.ipv4.conf.{conf}.arp_ignore=0")
    assert f.code == 403
    ev = lab.events("mute")[-1]
    assert ev["detail"]["reason"] == f"ARP: {CLI_IP} did not answer on the shared segment"
