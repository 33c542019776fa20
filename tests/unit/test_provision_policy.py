"""The re-provision decisions, as tables over values (no store, no clock): policy.provision_flag
(armed? expired? loop guard?), policy.provision_report (which token clears it), the flag on the
command line (boot_plan), host_state, stale, the flag-name validator and the boot token."""

from __future__ import annotations

import base64

import pytest

from netbootd import policy, tokens
from netbootd.errors import InvalidInput
from netbootd.model import (
    Artifact,
    Flag,
    FlagAction,
    Host,
    HostState,
    Image,
    MacAddress,
    Provision,
    ProvisionBoot,
    ProvisionState,
    Urls,
    provision_flag,
)

MAC = MacAddress.parse("52:54:00:12:34:56")
T0 = 1_000_000.0
ARMED = Provision(MAC, ProvisionState.ARMED, armed=T0, expires=T0 + 3600, max_boots=3)


def _a(**kw: object) -> Provision:
    from dataclasses import replace

    return replace(ARMED, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arming,now,action,number,reason",
    [
        (None, T0, FlagAction.NONE, 0, "no re-provision armed"),
        (_a(), T0 + 1, FlagAction.SERVE, 1, "flagged boot 1 of at most 3"),
        (_a(boots=1, last_boot="d1"), T0 + 60, FlagAction.SERVE, 2, "flagged boot 2 of at most 3"),
        (_a(boots=2, last_boot="d2"), T0 + 60, FlagAction.SERVE, 3, "flagged boot 3 of at most 3"),
        # the loop guard: three boots carried it, none reported -> the fourth does not get it
        (_a(boots=3, last_boot="d3"), T0 + 60, FlagAction.TRIP, 0,
         "loop guard: 3 boot(s) carried the flag and none reported provisioned"),
        (_a(max_boots=1, boots=1), T0 + 60, FlagAction.TRIP, 0, "loop guard: 1 boot(s)"),
        # the TTL: at the deadline exactly it is over; expiry is reported before the guard
        (_a(), T0 + 3600, FlagAction.EXPIRE, 0, "the flag expired at"),
        (_a(boots=3), T0 + 7200, FlagAction.EXPIRE, 0, "after 3 boot(s) without"),
        (_a(state=ProvisionState.FAILED, boots=3, reason="loop guard: x"), T0 + 60,
         FlagAction.NONE, 0, "re-provision failed earlier: loop guard: x"),
        (_a(state=ProvisionState.FAILED, reason="r"), T0 + 9999, FlagAction.NONE, 0, "failed"),
    ],
)
def test_provision_flag(arming, now, action, number, reason):
    d = policy.provision_flag(arming, now)
    assert (d.action, d.number) == (action, number)
    assert reason in d.reason


def test_provision_flag_is_pure_and_idempotent():
    a = _a(boots=1, last_boot="d1")
    assert policy.provision_flag(a, T0 + 5) == policy.provision_flag(a, T0 + 5)
    assert a.boots == 1  # the policy never counts: the store does, in its transaction


def _boot(digest: str, number: int, armed: float = T0) -> ProvisionBoot:
    return ProvisionBoot(digest, MAC, armed, number, T0 + number)


@pytest.mark.parametrize(
    "arming,boot,ok,reason",
    [
        (_a(boots=2, last_boot="d2"), _boot("d2", 2), True, "provisioned on flagged boot 2"),
        (_a(boots=1, last_boot="d1"), _boot("d1", 1), True, "provisioned on flagged boot 1"),
        # a token from an earlier boot of the same re-provision: that install was superseded
        (_a(boots=2, last_boot="d2"), _boot("d1", 1), False,
         "stale token: flagged boot 1, the latest is boot 2"),
        # a token from a boot of a previous arming (re-armed since)
        (_a(armed=T0 + 100, boots=1, last_boot="d9"), _boot("d1", 1, armed=T0), False,
         "stale token: flagged boot 1 of an earlier re-provision"),
        # a valid token of a boot that never carried the flag
        (_a(boots=1, last_boot="d1"), None, False, "stale token: its boot did not carry the flag"),
        (_a(), None, False, "its boot did not carry the flag"),
        # nothing pending: already provisioned (a replay), cancelled or expired
        (None, _boot("d1", 1), False, "no re-provision pending"),
        (None, None, False, "no re-provision pending"),
        (_a(state=ProvisionState.FAILED, boots=3, last_boot="d3", reason="loop guard: x"),
         _boot("d3", 3), False, "re-provision failed (loop guard: x)"),
    ],
)
def test_provision_report(arming, boot, ok, reason):
    r = policy.provision_report(arming, boot)
    assert r.ok is ok and reason in r.reason, r


K = Artifact("a" * 64, 1)
HOST = Host(MAC, "web", hostname="web1")
URLS = Urls("http://10.0.0.1:8080")
EVENTS = "netbootd.events=http://10.0.0.1:8080/api/v1/hosts/52-54-00-12-34-56/events"


def _img(cmdline: str) -> Image:
    return Image("web", 1, K, (K,), cmdline, 0.0)


def test_boot_plan_flag_on_and_off():
    flag = Flag("homelab.provision_disks=true", on=True)
    assert flag.name == "homelab.provision_disks"
    on = policy.boot_plan(HOST, _img("console=ttyS0"), URLS, None, "TOKEN", flag).cmdline
    assert on == (f"initrd=initrd0 console=ttyS0 {EVENTS} netbootd.hostname=web1 "
                  "netbootd.boot=TOKEN homelab.provision_disks=true")
    off = policy.boot_plan(HOST, _img("console=ttyS0"), URLS, None, "TOKEN",
                           Flag(flag.word, on=False)).cmdline
    assert off == (f"initrd=initrd0 console=ttyS0 {EVENTS} netbootd.hostname=web1 "
                   "netbootd.boot=TOKEN")


def test_boot_plan_drops_a_flag_that_came_with_the_image():
    """A role whose own command line carries the flag (a --cmdline, NixOS kernelParams) would
    wipe on every boot: the flag's name is removed unless this boot is served it."""
    img = _img("console=ttyS0 homelab.provision_disks=true quiet homelab.provision_disks")
    off = policy.boot_plan(
        HOST, img, URLS, provision=Flag("homelab.provision_disks=true", on=False)
    ).cmdline
    assert "provision_disks" not in off and "console=ttyS0 quiet" in off
    on = policy.boot_plan(
        HOST, img, URLS, provision=Flag("homelab.provision_disks=true", on=True)
    ).cmdline
    assert on.count("homelab.provision_disks") == 1 and on.endswith(" homelab.provision_disks=true")
    # a bare-word flag, and a name that only shares a prefix is kept
    img2 = _img("wipe wipe_not=1 x")
    assert policy.boot_plan(HOST, img2, URLS, provision=Flag("wipe", False)).cmdline.startswith(
        "initrd=initrd0 wipe_not=1 x "
    )
    # callers that pass no flag (build-image) get the image's command line untouched
    assert "homelab.provision_disks=true" in policy.boot_plan(HOST, img, URLS).cmdline


def test_flag_word():
    assert policy.flag_word(None, "netbootd.provision_disks=1") == "netbootd.provision_disks=1"
    assert policy.flag_word("homelab.provision_disks=true", "x") == "homelab.provision_disks=true"


@pytest.mark.parametrize(
    "arming,now,state",
    [
        (None, T0, HostState.OK),
        (_a(), T0, HostState.ARMED),
        (_a(boots=2), T0, HostState.PROVISIONING),
        (_a(boots=3), T0, HostState.PROVISIONING),  # tripped only when the 4th boot asks
        (_a(), T0 + 3600, HostState.EXPIRED),
        (_a(state=ProvisionState.FAILED), T0 + 99999, HostState.FAILED),
    ],
)
def test_host_state(arming, now, state):
    assert policy.host_state(arming, now) is state


def test_stale():
    day = 86400.0
    now = T0 + 100 * day
    assert policy.stale(now - 8 * day, T0, now, 7 * day)
    assert not policy.stale(now - 6 * day, T0, now, 7 * day)
    assert not policy.stale(now - 7 * day, T0, now, 7 * day)  # exactly the window: not yet
    assert policy.stale(None, now - 8 * day, now, 7 * day)  # never, enrolled 8 days ago
    assert not policy.stale(None, now - 3600, now, 7 * day)  # never, enrolled an hour ago


@pytest.mark.parametrize(
    "good",
    ["netbootd.provision_disks=1", "homelab.provision_disks=true", "wipe", "a.b-c_d=x,y:z/1+2"],
)
def test_flag_names_accepted(good):
    assert provision_flag(f" {good} ") == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a b",
        "x=1;reboot",
        "x=${net0/mac}",
        "x=`id`",
        "x\ny",
        "netbootd.boot=1",
        "netbootd.events=http://evil/",
        "init=/bin/sh",
        "initrd=x",
        "x=" + "a" * 201,
        "=1",
    ],
)
def test_flag_names_refused(bad):
    with pytest.raises(InvalidInput, match="not a usable provision flag"):
        provision_flag(bad)


def test_boot_tokens_are_not_identity_tokens():
    secret = bytes(range(32))
    boot = tokens.mint_boot(secret, MAC, "192.168.1.50", 1_700_000_000, bytes(12))
    ident = tokens.mint(secret, MAC, bytes(16))
    assert len(boot) == tokens.BOOT_TOKEN_CHARS and len(ident) == tokens.TOKEN_CHARS
    claim = tokens.parse_boot(secret, boot)
    assert claim.status is tokens.TokenStatus.VALID and claim.mac == MAC
    assert (claim.ip, claim.issued) == ("192.168.1.50", 1_700_000_000.0)
    assert tokens.boot_id(claim.digest or "") == tokens.digest(boot)[:12]
    # neither passes for the other
    assert tokens.parse(secret, boot).status is tokens.TokenStatus.MALFORMED
    assert tokens.parse_boot(secret, ident).status is tokens.TokenStatus.MALFORMED
    # the address and the time are under the HMAC: change either and the token is refused
    raw = bytearray(base64.urlsafe_b64decode(boot + "=" * (-len(boot) % 4)))
    for offset in (9, 13):  # the last byte of the address, of the issue time
        forged = bytearray(raw)
        forged[offset] ^= 1
        text = base64.urlsafe_b64encode(bytes(forged)).decode().rstrip("=")
        assert tokens.parse_boot(secret, text).status is tokens.TokenStatus.TAMPERED
