"""policy.identity_release as a table, and what an armed host's script carries."""

from __future__ import annotations

from dataclasses import replace

import pytest

from netbootd import policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.model import (
    ARP_NOT_CHECKED,
    ArpCheck,
    ArpResult,
    Artifact,
    Host,
    IdentityOffer,
    IdentityState,
    IdentityToken,
    Image,
    MacAddress,
    Release,
    Urls,
    https_base,
)

MAC = MacAddress.parse("52:54:00:12:34:56")
HOST = Host(MAC, "web", hostname="web1", canon="web1.example.org")
NOW = 1_800_000_000.0
TOKEN = IdentityToken("ab" * 32, MAC, "10.0.0.5", NOW - 60, NOW + 540)
ARMED = IdentityState(MAC, 2, armed=True, every_boot=False, changed=NOW - 3600)
IP = "10.0.0.5"
MATCH = ArpCheck(ArpResult.MATCH, True, "on eth0")


def release(token=TOKEN, host=HOST, state=ARMED, ip=IP, now=NOW, arp=ARP_NOT_CHECKED, name=None):
    return policy.identity_release(token, host, state, ip, now, arp, requested_name=name)


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"token": None}, "unknown token"),
        ({"token": replace(TOKEN, used=NOW - 5, used_ip=IP)}, "token already used"),
        ({"now": TOKEN.expires}, "token expired"),
        ({"now": TOKEN.expires + 1}, "token expired"),
        ({"ip": "10.0.0.6"}, "wrong source IP (token issued to 10.0.0.5)"),
        ({"host": None}, "host not enrolled"),
        ({"host": replace(HOST, mac=MacAddress.parse("52:54:00:00:00:01"))}, "host not enrolled"),
        ({"state": None}, "host has no identity"),
        ({"state": replace(ARMED, armed=False)}, "identity not armed"),
        (
            {"arp": ArpCheck(ArpResult.MISMATCH, True, "answered by 02:00:00:00:00:01")},
            "another MAC",
        ),
        ({"arp": ArpCheck(ArpResult.NO_ANSWER, True, "asked on eth0")}, "did not answer"),
        (
            {"arp": ArpCheck(ArpResult.NOT_CHECKED, True, "cannot send ARP")},
            "required but not possible",
        ),
        ({"name": "web2"}, "token is for web1, not web2"),
    ],
)
def test_refusals(kwargs, reason):
    r = release(**kwargs)
    assert not r.ok and reason in r.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"arp": MATCH},
        {"arp": ArpCheck(ArpResult.NOT_CHECKED, False, "not on a shared segment")},
        {"state": replace(ARMED, every_boot=True)},
        {"name": "web1"},
        {"name": "web1.example.org"},
        {"name": "52-54-00-12-34-56"},
        {"now": TOKEN.expires - 0.001},
    ],
)
def test_allowed(kwargs):
    assert release(**kwargs) == Release(True, "delivered")


def test_replay_reported_before_expiry_and_ip():
    r = release(
        token=replace(TOKEN, used=NOW - 5, used_ip="10.0.0.5"), ip="10.9.9.9", now=NOW + 9999
    )
    assert "already used" in r.reason and "10.0.0.5" in r.reason


URLS = Urls("http://10.0.0.1:8080")
IMAGE = Image("web", 2, Artifact("a" * 64, 1), (Artifact("b" * 64, 1),), "console=ttyS0", 0.0)
OFFER = IdentityOffer(
    "https://10.0.0.1:8443/identity/UlQAEjRWUO4VzW2p2g6MaX2lKRa7K0oE3gFSro8GVoTCp0Xv4BA",
    "sha256//LAul/y36inoInK6knsTPj3xAIPKxhDMxjjUxtoadB3w=",
)


def test_script_of_an_armed_host_whole():
    text = ScriptRenderer(Config().templates_dir).host_script(
        policy.boot_plan(HOST, IMAGE, URLS, OFFER)
    )
    assert text.splitlines()[4] == (
        f"kernel http://10.0.0.1:8080/artifacts/{'a' * 64}/kernel initrd=initrd0 console=ttyS0 "
        "netbootd.events=http://10.0.0.1:8080/api/v1/hosts/52-54-00-12-34-56/events "
        "netbootd.hostname=web1 "
        "netbootd.identity=https://10.0.0.1:8443/identity/"
        "UlQAEjRWUO4VzW2p2g6MaX2lKRa7K0oE3gFSro8GVoTCp0Xv4BA "
        "netbootd.pin=sha256//LAul/y36inoInK6knsTPj3xAIPKxhDMxjjUxtoadB3w= || goto failed"
    )
    plain = policy.boot_plan(HOST, IMAGE, URLS)
    assert "netbootd.identity" not in plain.cmdline and "netbootd.pin" not in plain.cmdline


def test_https_base():
    assert https_base("10.0.0.1", 443) == "https://10.0.0.1"
    assert https_base("10.0.0.1", 8443) == "https://10.0.0.1:8443"
