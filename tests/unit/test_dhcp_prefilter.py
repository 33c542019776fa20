"""`codec.dhcp.prefilter`, the flood's first look at a datagram (issue #13, finding 14), against
the full parser: it must pass every request the adapter acts on -- the real clients' packets in
tests/data/pcaps and Hypothesis-generated requests -- and drop junk without walking its options.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netbootd.codec import dhcp as codec
from netbootd.errors import DhcpDropped
from tests.unit.test_dhcp_codec import client_packets, udp_payloads

PCAPS = ("seabios-ipxe-rom.pcap", "ovmf-efi-ipxe-rom.pcap", "ovmf-native-pxe.pcap")
KNOWN = bytes.fromhex("525400123456")  # the MAC of the captured QEMU clients
OTHER = bytes.fromhex("0242deadbeef")
PORTS: dict[int, codec.PortKind] = {67: "dhcp", 4011: "pxe"}


def acted_on(data: bytes, kind: codec.PortKind) -> bool:
    """Whether the adapter does anything with `data` on this port: answers it, or (a REQUEST)
    records the address the client's DHCP exchange uses (servers/dhcp.py `_observe`)."""
    try:
        req = codec.parse(data)
    except DhcpDropped:
        return False
    return codec.ignore_reason(req, kind) is None or req.message_type == codec.REQUEST


def test_every_captured_client_request_passes() -> None:
    seen = 0
    for name in PCAPS:
        for dport, kind in PORTS.items():
            for data in client_packets(name, dport):
                assert codec.parse(data).mac.packed == KNOWN
                for k in ("dhcp", "pxe"):
                    if acted_on(data, k):  # type: ignore[arg-type]
                        assert codec.prefilter(data, k, {KNOWN}) is None, (name, k)  # type: ignore[arg-type]
                        seen += 1
                assert codec.prefilter(data, kind, {OTHER}) == codec.PRE_UNKNOWN_MAC
    assert seen >= 12


def test_captured_non_pxe_traffic_is_dropped() -> None:
    """The guest initramfs' udhcpc (same MAC, no PXEClient) and the servers' replies."""
    reasons = set()
    for name in PCAPS:
        for _s, dport, data in udp_payloads(name):
            kind = PORTS.get(dport, "dhcp")
            why = codec.prefilter(data, kind, {KNOWN})
            if not acted_on(data, kind):
                reasons.add(why)
    assert codec.PRE_NOT_PXE in reasons and codec.PRE_NOT_REQUEST in reasons


# -- generated requests -----------------------------------------------------------------------


def _tlvs(code: int, value: bytes, split: int | None) -> bytes:
    """One option, as one TLV or (RFC 3396) as two parts split at `split`."""
    if split is None or not 0 < split < len(value):
        return bytes((code, len(value))) + value
    a, b = value[:split], value[split:]
    return bytes((code, len(a))) + a + bytes((code, len(b))) + b


VENDOR = st.sampled_from([b"PXEClient:Arch:00000:UNDI:002001", b"PXEClient:Arch:00007:UNDI:003000",
                          b"HTTPClient:Arch:00016:UNDI:003001", b"PXEClient", b"MSFT 5.0",
                          b"udhcp 1.36.1", b"PXECl", b""]) | st.binary(max_size=40)
OPTION = st.one_of(
    st.tuples(st.just(53), st.sampled_from([b"\x01", b"\x03", b"\x08", b"\x02", b"\x05",
                                            b"\x07", b"", b"\x01\x01"]) | st.binary(max_size=2)),
    st.tuples(st.just(60), VENDOR),
    st.tuples(st.just(93), st.sampled_from([b"\x00\x00", b"\x00\x07", b"\x00\x10", b"\x00\x0b",
                                            b"\x00\x02", b"\x00", b"\x00\x07\x00\x09"])),
    st.tuples(st.just(97), st.sampled_from([bytes(17), b"\x00" + bytes(range(16)), b""])),
    st.tuples(st.just(77), st.sampled_from([b"iPXE", b"other"])),
    st.tuples(st.just(175), st.binary(max_size=8)),
    st.tuples(st.just(50), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just(43), st.binary(max_size=12)),
    st.tuples(st.integers(1, 254), st.binary(max_size=20)),
)


CORE = st.tuples(
    st.tuples(st.just(53), st.sampled_from([b"\x01", b"\x03", b"\x08"])),
    st.tuples(st.just(93), st.sampled_from([b"\x00\x00", b"\x00\x07", b"\x00\x10",
                                            b"\x00\x07\x00\x09"])),
    st.tuples(st.just(60), st.sampled_from([b"PXEClient:Arch:00000:UNDI:002001",
                                            b"PXEClient:Arch:00007:UNDI:003000",
                                            b"HTTPClient:Arch:00016:UNDI:003001", b"PXEClient"])),
)


@st.composite
def requests(draw: Any) -> bytes:
    """Mostly well-formed PXE requests (the options a real client sends, in any order, some
    split into RFC 3396 parts, with pads and others between), some of them broken."""
    valid = draw(st.booleans())
    op = 1 if valid else draw(st.sampled_from([1, 1, 2]))
    htype, hlen = (1, 6) if valid else draw(st.sampled_from([(1, 6), (1, 6), (6, 6), (1, 16)]))
    mac = draw(st.sampled_from([KNOWN, KNOWN, KNOWN, OTHER]))
    header = bytes((op, htype, hlen, 0)) + draw(st.binary(min_size=8, max_size=8))
    header += draw(st.sampled_from([bytes(16), bytes(12) + b"\x0a\x00\x00\x01",
                                    bytes(4) + bytes(8) + b"\x0a\x00\x00\x01"]))
    header += mac + bytes(10) + bytes(192)
    cookie = codec.MAGIC_COOKIE if valid else draw(
        st.sampled_from([codec.MAGIC_COOKIE] * 5 + [b"\x63\x82\x53\x64"]))
    options = list(draw(CORE)) if valid else []
    options += draw(st.lists(OPTION, max_size=6 if valid else 9))
    options = draw(st.permutations(options))
    opts = b""
    for code, value in options:
        if draw(st.integers(0, 9)) == 0:
            opts += b"\x00"  # a pad
        opts += _tlvs(code, value, draw(st.none() | st.none() | st.integers(1, 30)))
    opts += draw(st.sampled_from([b"\xff", b"\xff", b"", b"\xff" + b"\x00" * 40]))
    data = header + cookie + opts
    cut = None if valid else draw(st.none() | st.integers(0, len(data)))
    return data if cut is None else data[:cut]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests(), kind=st.sampled_from(["dhcp", "pxe"]))
def test_generated_requests_the_adapter_acts_on_pass(data: bytes, kind: codec.PortKind) -> None:
    why = codec.prefilter(data, kind, {KNOWN})
    assert why is None or why in codec.PREFILTER_REASONS
    if acted_on(data, kind):
        assert why == (None if data[28:34] == KNOWN else codec.PRE_UNKNOWN_MAC), data.hex()
    if data[28:34] == OTHER and len(data) >= 240 and why is not None:
        assert why in (codec.PRE_UNKNOWN_MAC, codec.PRE_NOT_REQUEST, codec.PRE_NO_COOKIE)


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=600), kind=st.sampled_from(["dhcp", "pxe"]))
def test_arbitrary_bytes_never_raise(data: bytes, kind: codec.PortKind) -> None:
    why = codec.prefilter(data, kind, {KNOWN, data[28:34]})
    assert why is None or why in codec.PREFILTER_REASONS


# -- junk is dropped cheaply ------------------------------------------------------------------


def _request(mac: bytes = KNOWN, mtype: int = codec.DISCOVER,
             vendor: bytes = b"PXEClient:Arch:00007:UNDI:003000") -> bytes:
    opts = bytes((53, 1, mtype)) + bytes((93, 2, 0, 7)) + bytes((60, len(vendor))) + vendor
    return (bytes((1, 1, 6, 0)) + bytes(24) + mac + bytes(10 + 192) + codec.MAGIC_COOKIE
            + opts + b"\xff")


@pytest.fixture
def no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walking the options is what the pre-filter saves: make it fail the test."""
    def walk(*_a: object) -> None:
        raise AssertionError("the pre-filter walked the options")

    monkeypatch.setattr(codec, "_options", walk)


@pytest.mark.usefixtures("no_walk")
@pytest.mark.parametrize(("data", "kind", "why"), [
    (b"", "dhcp", codec.PRE_TRUNCATED),
    (_request()[:239], "dhcp", codec.PRE_TRUNCATED),
    (bytes([2]) + _request()[1:], "dhcp", codec.PRE_NOT_REQUEST),
    (_request()[:1] + b"\x06" + _request()[2:], "dhcp", codec.PRE_NOT_REQUEST),
    (_request()[:236] + b"\x00" * 4 + _request()[240:], "dhcp", codec.PRE_NO_COOKIE),
    (_request(mac=OTHER), "dhcp", codec.PRE_UNKNOWN_MAC),
    (_request(mac=OTHER, vendor=b"MSFT 5.0"), "dhcp", codec.PRE_UNKNOWN_MAC),
    (_request(mtype=codec.DISCOVER), "pxe", codec.PRE_MESSAGE_TYPE),
    (_request(mtype=codec.INFORM), "dhcp", codec.PRE_MESSAGE_TYPE),
    (_request(mtype=7), "dhcp", codec.PRE_MESSAGE_TYPE),  # a RELEASE
    (_request(mtype=codec.REQUEST), "dhcp", None),  # the address the client takes (leases)
    (_request(), "dhcp", None),
    (_request(mtype=codec.REQUEST), "pxe", None),
    (_request(vendor=b"HTTPClient:Arch:00016:UNDI:003001"), "dhcp", None),
])
def test_junk_is_dropped_without_walking_the_options(
    data: bytes, kind: codec.PortKind, why: str | None
) -> None:
    assert codec.prefilter(data, kind, frozenset({KNOWN})) == why


def test_a_known_mac_without_pxeclient_is_walked_exactly() -> None:
    """No "PXEClient" anywhere: the options are walked, as parse would (a split option 60)."""
    assert codec.prefilter(_request(vendor=b"MSFT 5.0"), "dhcp", {KNOWN}) == codec.PRE_NOT_PXE
    split = _request(vendor=b"PXE")[:-1] + bytes((60, 6)) + b"Client" + b"\xff"
    assert codec.parse(split).vendor_class == "PXEClient"
    assert codec.prefilter(split, "dhcp", {KNOWN}) is None
    broken = _request(vendor=b"MSFT 5.0")[:-1] + bytes((12, 40)) + b"host"
    assert codec.prefilter(broken, "dhcp", {KNOWN}) == codec.PRE_MALFORMED


def test_random_junk_from_unknown_macs_never_reaches_the_parser() -> None:
    dropped = sum(codec.prefilter(os.urandom(300), "dhcp", {KNOWN}) is not None
                  for _ in range(2000))
    assert dropped == 2000
