"""Binding a boot to its machine: what the DHCP adapter records (leases.py), the policy's
verdicts on a script fetch (boot_binding) and on a report (report_token), the audit limiter
(ratelimit.py) and the escaping of client-supplied text (fmt.printable)."""

from __future__ import annotations

import pytest

from netbootd import policy, tokens
from netbootd.fmt import printable
from netbootd.leases import Leases
from netbootd.model import Lease, MacAddress
from netbootd.ratelimit import PerKey

MAC = MacAddress.parse("52:54:00:12:34:56")
SECRET = bytes(range(32))


def test_leases_remember_the_exchange_address_within_the_window() -> None:
    leases = Leases(window=300)
    assert leases.lookup(MAC, 1000) is None
    leases.observe(MAC, "10.0.0.5", 1000)
    assert leases.lookup(MAC, 1200) == Lease("10.0.0.5", 1000)
    assert leases.lookup(MAC, 1301) is None  # the window passed
    leases.observe(MAC, "10.0.0.5", 2000)
    leases.observe(MAC, "10.0.0.6", 2010)  # a second address within the window: a conflict
    assert leases.lookup(MAC, 2020) == Lease("10.0.0.6", 2010, ("10.0.0.5",))
    assert leases.lookup(MAC, 2305) == Lease("10.0.0.6", 2010)  # the older claim aged out


def test_leases_are_bounded() -> None:
    leases = Leases(window=300, max_macs=100)
    for i in range(1000):
        leases.observe(MacAddress(i.to_bytes(6, "big")), "10.0.0.1", 1000)
    assert len(leases) == 100
    leases.observe(MAC, "10.0.0.9", 1000)
    for _ in range(50):
        leases.observe(MAC, f"10.1.0.{_}", 1000)
    assert len(leases.lookup(MAC, 1000).others) < 4  # addresses per MAC are bounded too


@pytest.mark.parametrize(("dhcp", "lease", "requester", "ok", "why"), [
    (False, None, "10.0.0.5", True, "requester binding"),
    (True, None, "10.0.0.5", False, "no DHCP exchange"),
    (True, Lease("10.0.0.5", 0), "10.0.0.5", True, "the address of its DHCP exchange"),
    (True, Lease("10.0.0.5", 0), "10.0.0.66", False, "its DHCP exchange used 10.0.0.5"),
    (True, Lease("10.0.0.5", 0, ("10.0.0.66",)), "10.0.0.5", False, "several addresses"),
    (False, None, "fe80::1", False, "IPv4 only"),
    (False, None, None, False, "cannot be bound"),
])
def test_boot_binding(dhcp: bool, lease: Lease | None, requester: str | None, ok: bool,
                      why: str) -> None:
    verdict = policy.boot_binding(dhcp, lease, requester)
    assert verdict.ok is ok and why in verdict.reason


def test_report_token() -> None:
    good = tokens.parse_boot(SECRET, tokens.mint_boot(SECRET, MAC, "10.0.0.5", 1000, bytes(12)))
    other = MacAddress.parse("52:54:00:00:00:02")
    cases = [
        (None, MAC, "10.0.0.5", 1000, False, "no per-boot token"),
        (good, MAC, "10.0.0.5", 1000, True, "valid"),
        (good, other, "10.0.0.5", 1000, False, f"is for {MAC}"),
        (good, MAC, "10.0.0.6", 1000, False, "bound to 10.0.0.5, not 10.0.0.6"),
        (good, MAC, "10.0.0.5", 1000 + 3601, False, "expired"),
        (good, MAC, "10.0.0.5", 1000 - 301, False, "in the future"),
        (tokens.parse_boot(SECRET, "x" * 56), MAC, "10.0.0.5", 1000, False, "tampered"),
        (tokens.parse_boot(SECRET, "x" * 55), MAC, "10.0.0.5", 1000, False, "malformed"),
    ]
    for claim, mac, peer, now, ok, why in cases:
        verdict = policy.report_token(claim, mac, peer, now, ttl=3600)
        assert verdict.ok is ok and why in verdict.reason, (claim, mac, peer, now, verdict)


def test_per_key_limiter_counts_what_it_suppresses() -> None:
    limit = PerKey(interval=60, max_keys=3)
    assert limit.admit("a", 0) == 1
    assert [limit.admit("a", t) for t in (1, 2, 59)] == [None, None, None]
    assert limit.admit("a", 61) == 4  # itself and the three suppressed
    assert limit.admit("b", 61) == 1
    for k in "cde":
        limit.admit(k, 62)
    assert limit.admit("a", 63) == 1  # forgotten (bounded table): counted afresh


@pytest.mark.parametrize(("raw", "shown"), [
    ("web1", "web1"),
    ("x\nidentity-delivered", "x\\nidentity-delivered"),
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("a\u202eb", "a\\u202eb"),
    ("\r", "\\r"),
])
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw).isprintable()


def test_printable_is_bounded() -> None:
    assert printable("y" * 1000, 50) == "y" * 50 + "..."
