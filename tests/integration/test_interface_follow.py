"""`serve --interface eth0` follows its interface (finding 6 of issue #13: proxyDHCP went silent
for good when its interface was recreated -- the socket stayed bound to the old ifindex, nothing
logged -- and an address change was never picked up: offers and scripts kept the old address).

The real `netbootd serve` in a server namespace, a client namespace on a veth pair; the server's
eth0 is re-addressed, then deleted and created again with another address."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from testbed import REPO
from testbed.netns import Env, cleanup_stale, in_netns, ip, veth
from testbed.procs import Proc
from testbed.skips import netns_lab, require
from tests.integration.test_dhcp_server import expect_one, pxe_request

PREFIX = "nbdif"
NET = "10.213.9"
MAC = "52:54:00:aa:09:01"
HTTP_PORT = 8080


@dataclass
class Site:
    env: Env
    srv: str
    cli: str
    serve: Proc
    socks: dict[str, socket.socket]

    def open_client(self) -> None:
        def make() -> dict[str, socket.socket]:
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            raw.bind(("eth0", 0))
            bootpc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bootpc.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            bootpc.bind(("0.0.0.0", 68))
            return {"raw": raw, "bootpc": bootpc}

        for s in self.socks.values():
            s.close()
        self.socks = in_netns(self.cli, make)

    def offer_url(self) -> str:
        """Broadcast an iPXE DISCOVER from the client; the script URL of the proxy offer."""
        xid, data = pxe_request(mac=MAC, ipxe=True)
        frame = (Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / data)
        self.socks["raw"].send(bytes(frame))
        return expect_one(self.socks["bootpc"], xid).file

    def script(self, server: str) -> str:
        def get() -> str:
            url = f"http://{server}:{HTTP_PORT}/boot/{MAC.replace(':', '-')}.ipxe"
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()

        return in_netns(self.cli, get)

    def log(self) -> str:
        assert self.serve.log_path is not None
        return self.serve.log_path.read_text()


def _netbootd(state: Path, *args: str) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "netbootd", "--state-dir", str(state), *args],
                   check=True, capture_output=True, cwd=REPO, timeout=60)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require(netns_lab(PREFIX))
    cleanup_stale(PREFIX)
    env = Env(PREFIX, tmp_path / "lab", stop_timeout=5.0)
    try:
        srv, cli = env.netns("s"), env.netns("c")
        veth(srv, cli, f"{NET}.1/24", f"{NET}.2/24")
        state = tmp_path / "state"
        (tmp_path / "k").write_bytes(os.urandom(4096))
        (tmp_path / "i").write_bytes(os.urandom(4096))
        _netbootd(state, "role", "add", "web", "--kernel", str(tmp_path / "k"), "--initrd",
                  str(tmp_path / "i"))
        _netbootd(state, "enroll", MAC, "web", "--no-identity")
        serve = env.spawn("serve", [sys.executable, "-m", "netbootd", "--state-dir", str(state),
                                    "serve", "--interface", "eth0", "--no-tftp", "--http-port",
                                    str(HTTP_PORT), "--https-port", "8443"], ns=srv, cwd=REPO)
        s = Site(env, srv, cli, serve, {})
        s.open_client()
        deadline = time.monotonic() + 20
        while "proxyDHCP listening" not in s.log():
            assert serve.alive() and time.monotonic() < deadline, s.log()
            time.sleep(0.1)
        yield s
        for sock in s.socks.values():
            sock.close()
    finally:
        env.close()


def _wait_log(site: Site, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in site.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{site.log()}"
        time.sleep(0.05)


def test_serve_follows_a_readdressed_and_a_recreated_interface(site: Site) -> None:
    url = f"http://{NET}.1:{HTTP_PORT}/boot/52-54-00-aa-09-01.ipxe"
    assert site.offer_url() == url
    assert f"http://{NET}.1:{HTTP_PORT}/artifacts/" in site.script(f"{NET}.1")

    # a new address on the same interface: offers and scripts name it at once
    ip("addr", "flush", "dev", "eth0", ns=site.srv)
    ip("addr", "add", f"{NET}.5/24", "dev", "eth0", ns=site.srv)
    _wait_log(site, f"interface eth0 address changed: {NET}.1 -> ")
    assert site.offer_url() == url.replace(f"{NET}.1", f"{NET}.5")
    assert f"http://{NET}.5:{HTTP_PORT}/artifacts/" in site.script(f"{NET}.5")

    # the interface deleted and created again (a new ifindex): proxyDHCP rebinds and answers
    ip("link", "del", "eth0", ns=site.srv)  # (takes the client's end with it)
    _wait_log(site, "proxyDHCP paused: interface eth0 is gone")
    veth(site.srv, site.cli, f"{NET}.6/24", f"{NET}.2/24")
    site.open_client()
    _wait_log(site, "proxyDHCP listening again on eth0")
    assert site.offer_url() == url.replace(f"{NET}.1", f"{NET}.6")
    assert f"http://{NET}.6:{HTTP_PORT}/artifacts/" in site.script(f"{NET}.6")
    assert re.search(r"interface eth0 is back as ifindex \d+", site.log())
    assert "Traceback" not in site.log()
