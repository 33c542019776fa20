"""Property tests (Hypothesis) of every codec (issue #13): where both directions exist,
parse(build(x)) == x; arbitrary input gives a value or the codec's declared error (DhcpDropped,
TftpDropped, CpioError, TgtParseError, ExportError, RenderError) and never anything else.

CI runs the "ci" profile (~100 examples a property, a few seconds for the file); `make fuzz`
runs NETBOOTD_HYPOTHESIS=fuzz (many more; see bench/fuzz.py). No example database is written:
a failure prints the example and the seed that reproduces it.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from netbootd import policy
from netbootd.codec import cpio, dhcp, nfs, tftp, tgt
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import (
    CpioError,
    DhcpDropped,
    ExportError,
    NetbootdError,
    RenderError,
    TftpDropped,
    TgtParseError,
)
from netbootd.model import Arch, Artifact, DhcpBoot, Host, Image, MacAddress, Urls

settings.register_profile("ci", max_examples=100, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=int(os.environ.get("NETBOOTD_FUZZ_EXAMPLES",
                                                                  "5000")),
                          deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NETBOOTD_HYPOTHESIS", "ci"))

SERVER = IPv4Address("192.168.77.1")
ARCH_CODES = {0: Arch.BIOS, 6: Arch.UEFI, 7: Arch.UEFI, 9: Arch.UEFI, 11: Arch.ARM64,
              16: Arch.HTTP}

# -- DHCP -------------------------------------------------------------------------------------


def _tlvs(code: int, value: bytes, cut: int) -> bytes:
    """`value` as RFC 3396 parts: cut into pieces of `cut` bytes (or 255) each."""
    size = max(1, min(cut, 255))
    if not value:
        return bytes((code, 0))
    return b"".join(bytes((code, len(value[i:i + size]))) + value[i:i + size]
                    for i in range(0, len(value), size))


@st.composite
def pxe_requests(draw: st.DrawFn) -> tuple[dhcp.PxeRequest, bytes]:
    """A request value and the bytes a client would send for it (options in any order, long
    ones split over several TLVs, pads between them)."""
    arch_code = draw(st.sampled_from(sorted(ARCH_CODES)))
    prefix = draw(st.sampled_from([b"PXEClient", b"HTTPClient"]))
    vc = prefix + draw(st.binary(max_size=300).map(lambda b: bytes(c & 0x7F for c in b)))
    guid = draw(st.none() | st.binary(min_size=17, max_size=17))
    item = draw(st.none() | st.binary(min_size=4, max_size=4))
    ipxe = draw(st.sampled_from(["no", "user-class", "175"]))
    req = dhcp.PxeRequest(
        xid=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.integers(0, 2**16 - 1)),
        ciaddr=IPv4Address(draw(st.integers(0, 2**32 - 1))),
        giaddr=IPv4Address(draw(st.integers(0, 2**32 - 1))),
        mac=MacAddress(draw(st.binary(min_size=6, max_size=6))),
        message_type=draw(st.sampled_from([dhcp.DISCOVER, dhcp.REQUEST, dhcp.INFORM])),
        arch_code=arch_code, arch=ARCH_CODES[arch_code],
        vendor_class=vc.decode("ascii"), ipxe=ipxe != "no",
        client_guid=guid,
        boot_item=item,
    )
    opts = [bytes((dhcp.OPT_MESSAGE_TYPE, 1, req.message_type)),
            _tlvs(dhcp.OPT_VENDOR_CLASS, vc, draw(st.integers(1, 255))),
            _tlvs(dhcp.OPT_CLIENT_ARCH, arch_code.to_bytes(2, "big"), 255)]
    if guid is not None:
        opts.append(_tlvs(dhcp.OPT_CLIENT_GUID, guid, draw(st.integers(1, 17))))
    if item is not None:
        opts.append(_tlvs(dhcp.OPT_VENDOR_SPECIFIC, bytes((71, 4)) + item + b"\xff", 255))
    if ipxe == "user-class":
        opts.append(_tlvs(dhcp.OPT_USER_CLASS, b"iPXE", 255))
    elif ipxe == "175":
        opts.append(_tlvs(dhcp.OPT_IPXE_ENCAP, b"\x13\x01\x01", 255))
    opts = draw(st.permutations(opts))
    body = b"".join(o + b"\x00" * draw(st.integers(0, 2)) for o in opts)
    raw = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, req.xid, 0, req.flags,
                      req.ciaddr.packed, bytes(4), bytes(4), req.giaddr.packed,
                      req.mac.packed, b"", b"") + dhcp.MAGIC_COOKIE + body + b"\xff"
    return req, raw


@given(pxe_requests())
def test_dhcp_parse_of_encoded_request_is_the_request(pair: tuple[dhcp.PxeRequest, bytes]) -> None:
    req, raw = pair
    assert dhcp.parse(raw) == req


def _dhcp_parse_or_drop(data: bytes) -> dhcp.PxeRequest | None:
    try:
        return dhcp.parse(data)
    except DhcpDropped:
        return None


BOOTS = st.builds(
    DhcpBoot,
    filename=st.sampled_from(["undionly.kpxe", "ipxe.efi", "x" * 127, "y" * 128]) | st.text(
        st.characters(codec="ascii", exclude_characters="\0"), max_size=700),
    next_server=st.integers(0, 2**32 - 1).map(IPv4Address),
    vendor_class=st.sampled_from(["PXEClient", "HTTPClient"]),
)


def _mutated(data: bytes, draw: st.DrawFn) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        kind = draw(st.sampled_from(["byte", "cut", "insert", "dup"]))
        if kind == "byte":
            raw[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=300))
        else:
            raw[pos:pos] = raw[pos:pos + draw(st.integers(1, 64))]
    return bytes(raw)


@st.composite
def dhcp_datagrams(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid request mutated: truncated, bytes changed, bits inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=700))
    _, raw = draw(pxe_requests())
    return _mutated(raw, draw)


@given(dhcp_datagrams(), BOOTS, st.sampled_from(["dhcp", "pxe"]))
@example(b"\x01\x01\x06" + bytes(233) + dhcp.MAGIC_COOKIE + b"\x35\x01\x01"
         b"\x3c\x09PXEClient\x5d\x02\x00\x00" + b"\x61\xff" + bytes(255) + b"\x61\x2d" + bytes(45),
         DhcpBoot("ipxe.efi", SERVER), "dhcp")  # finding 10: a 300-byte option 97
def test_dhcp_arbitrary_bytes_drop_or_answer(data: bytes, boot: DhcpBoot,
                                             port_kind: dhcp.PortKind) -> None:
    """Whatever parses gets a reply built without an exception, and that reply reads back
    (reply_summary) with the request's xid, MAC, GUID and the boot file."""
    req = _dhcp_parse_or_drop(data)
    if req is None:
        return
    reply = dhcp.build_reply(req, boot, SERVER, port_kind)
    rows = dict(dhcp.reply_summary(reply))
    assert rows["xid"] == f"0x{req.xid:08x}" and rows["chaddr"] == str(req.mac)
    assert rows["siaddr (next server)"] == str(boot.next_server)
    assert rows["op"].endswith("DHCPOFFER" if port_kind == "dhcp" else "DHCPACK")
    if req.client_guid is not None:
        assert rows["opt 97 client-guid"] == req.client_guid.hex()
    if len(boot.filename) < dhcp.FILE_FIELD_LEN:
        assert rows["file"] == (boot.filename or "(empty)")
    else:
        assert rows["opt 67 bootfile"] == boot.filename


# -- TFTP -------------------------------------------------------------------------------------

FIELD = st.text(st.characters(codec="ascii", exclude_characters="\0"), min_size=1, max_size=40)


@given(st.sampled_from([tftp.OP_RRQ, tftp.OP_WRQ]),
       st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=300),
       FIELD, st.dictionaries(FIELD, FIELD, max_size=6))
def test_tftp_parse_of_encoded_request_is_the_request(opcode: int, name: str, mode: str,
                                                      options: dict[str, str]) -> None:
    raw = bytes((0, opcode)) + b"".join(f"{f}\0".encode() for f in (
        name, mode, *(x for kv in options.items() for x in kv)))
    assert tftp.parse_request(raw) == (opcode, name, options)


@st.composite
def tftp_datagrams(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    opts = draw(st.dictionaries(FIELD, FIELD, max_size=4))
    raw = b"\x00\x01" + draw(FIELD).encode() + b"\0octet\0" + b"".join(
        f"{k}\0{v}\0".encode() for k, v in opts.items())
    return _mutated(raw, draw)


@given(tftp_datagrams(), st.integers(0, 2**40))
def test_tftp_arbitrary_bytes_drop_or_parse_then_negotiate(data: bytes, size: int) -> None:
    try:
        parsed = tftp.parse_request(data)
    except TftpDropped:
        return
    if parsed is None:
        assert data[:2] not in (b"\x00\x01", b"\x00\x02")
        return
    _, name, options = parsed
    tftp.name_refusal(name)  # any name: a verdict, never an exception
    granted = tftp.negotiate(options, size)
    assert set(granted) <= {"blksize", "tsize", "windowsize"}
    blk = granted.get("blksize", tftp.DEFAULT_BLKSIZE)
    assert tftp.MIN_BLKSIZE <= blk <= tftp.MAX_BLKSIZE
    win = granted.get("windowsize", 1)
    assert 1 <= win <= tftp.MAX_WINDOWSIZE and (win == 1 or win * blk <= tftp.MAX_WINDOW_BYTES)
    oack = tftp.oack_packet(granted)
    if granted:  # the OACK reads back as what was granted
        assert tftp.parse_request(b"\x00\x01x\0octet\0" + oack[2:]) == (
            1, "x", {k: str(v) for k, v in granted.items()})


@given(st.text(max_size=400))
@example("a/" * 32000)
@example("name/.")
def test_tftp_name_refusal(name: str) -> None:
    why = tftp.name_refusal(name)
    if len(name) > tftp.MAX_NAME_LEN or name.lstrip("/").count("/") >= tftp.MAX_NAME_DEPTH:
        assert why is not None
    if name.endswith(("/", "/.", "/..")):
        assert why is not None


@given(st.integers(0, 2**16 - 1), st.text(max_size=300))
def test_tftp_error_packet_reads_back(code: int, message: str) -> None:
    pkt = tftp.error_packet(code, message)
    assert struct.unpack("!HH", pkt[:4]) == (tftp.OP_ERROR, code) and pkt.endswith(b"\0")
    text = pkt[4:-1].decode("ascii")
    assert "\0" not in text or "\0" in message
    assert len(text) <= 200


# -- cpio -------------------------------------------------------------------------------------

ENTRIES = st.lists(st.builds(
    cpio.Entry,
    name=st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]),
                 min_size=1, max_size=60).filter(lambda n: n != cpio.TRAILER),
    mode=st.integers(0, 0o177777),
    data=st.binary(max_size=200),
    mtime=st.integers(0, 2**32 - 1),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    nlink=st.integers(0, 2**32 - 1),
    ino=st.integers(1, 2**32 - 1),
    rdev_major=st.integers(0, 2**32 - 1),
    rdev_minor=st.integers(0, 2**32 - 1),
), max_size=8)


@given(ENTRIES, st.integers(0, 3))
def test_cpio_parse_of_archive_is_the_entries(entries: list[cpio.Entry], pad: int) -> None:
    data = cpio.archive(entries) + b"\0" * (4 * pad) + cpio.archive(entries[:1])
    assert list(cpio.parse(data)) == [*entries, None, *entries[:1], None]


@st.composite
def cpio_blobs(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    return _mutated(cpio.archive(draw(ENTRIES)), draw)


# A size of -0x70 sent parse back to offset 0: it yielded the same entry forever.
LOOP = cpio.MAGIC + b"00000001000081A4000000000000000000000001" + b"00000000-0000070" + (
    b"0" * 32 + b"00000002" + b"0" * 8) + b"a\0"


@given(cpio_blobs())
@example(LOOP)
@example(cpio.MAGIC + b"0000000 " * 13 + b"\0")  # whitespace int() would accept
def test_cpio_arbitrary_bytes_parse_or_cpio_error(data: bytes) -> None:
    entries = []
    try:
        for e in cpio.parse(data):  # every member takes >= 110 bytes: no more than this many
            entries.append(e)
            assert len(entries) <= len(data) // 4 + 1, "parse does not advance"
    except CpioError:
        return
    for e in entries:
        if e is not None:
            assert min(e.mode, e.ino, e.uid, e.gid, e.nlink, e.mtime) >= 0
            assert len(e.data) <= len(data)


# -- tgt --------------------------------------------------------------------------------------

IQN = st.from_regex(r"iqn\.20[0-9]{2}-0[1-9]\.[a-z0-9][a-z0-9.-]{0,20}:[A-Za-z0-9._-]{1,20}",
                    fullmatch=True)
PATH = st.from_regex(r"/[A-Za-z0-9._/+@%~-]{0,40}", fullmatch=True)


def show_text(targets: list[tgt.Target]) -> str:
    """What `tgtadm --op show` prints for `targets` (the layout in codec/tgt's docstring)."""
    out = []
    for t in targets:
        out += [f"Target {t.tid}: {t.iqn}", "    System information:", "        Driver: iscsi",
                f"        State: {t.state}", "    I_T nexus information:"]
        for n, name in enumerate(t.initiators, 1):
            out += [f"        I_T nexus: {n}", f"            Initiator: {name} alias: none",
                    "            Connection: 0", "                IP Address: 10.0.0.9"]
        out.append("    LUN information:")
        for lu in t.luns:
            out += [f"        LUN: {lu.number}", f"            Type: {lu.type}",
                    f"            Size: {lu.size_mb} MB, Block size: 512",
                    f"            Online: {'Yes' if lu.online else 'No'}",
                    f"            Backing store path: {lu.path or 'None'}"]
        out += ["    Account information:", "    ACL information:",
                *(f"        {a}" for a in t.acl)]
    return "\n".join(out) + "\n"


@st.composite
def tgt_targets(draw: st.DrawFn) -> list[tgt.Target]:
    tids = draw(st.lists(st.integers(1, 999), unique=True, max_size=4))
    out = []
    for tid in sorted(tids):
        numbers = draw(st.lists(st.integers(0, 30), unique=True, max_size=4))
        luns = tuple(tgt.Lun(n, "controller" if n == 0 else "disk",
                             None if n == 0 else draw(PATH), draw(st.booleans()),
                             draw(st.integers(0, 10**6))) for n in sorted(numbers))
        acl = tuple(draw(st.lists(st.sampled_from(["ALL", "10.0.0.0/24", "192.168.1.7"]) | IQN,
                                  max_size=3)))
        initiators = tuple(draw(st.lists(IQN, max_size=2)))
        out.append(tgt.Target(tid, draw(IQN), draw(st.sampled_from(["ready", "offline"])),
                              luns, acl, initiators))
    return out


@given(tgt_targets())
def test_tgt_parse_show_of_shown_targets_is_the_targets(targets: list[tgt.Target]) -> None:
    assert tgt.parse_show(show_text(targets)) == targets


@st.composite
def tgt_texts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=400))
    lines = show_text(draw(tgt_targets())).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 5))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(st.sampled_from(["", "LUN: x\n", "Target : \n", "   ACL information:\n",
                                         "        LUN: 99999999999999999999\n"]) | st.text())
    return "".join(lines)


@given(tgt_texts())
def test_tgt_arbitrary_show_text_parses_or_tgt_parse_error(text: str) -> None:
    with contextlib.suppress(TgtParseError):
        tgt.parse_show(text)


@given(st.lists(st.builds(
    tgt.DesiredTarget, tid=st.integers(-5, 2000), iqn=IQN | st.text(max_size=30),
    luns=st.lists(st.tuples(st.integers(-1, 5), PATH | st.text(max_size=20)), max_size=3)
    .map(tuple),
    initiators=st.lists(IQN | st.text(max_size=20), max_size=2).map(tuple),
    addresses=st.lists(st.sampled_from(["ALL", "10.0.0.0/24"]), min_size=1, max_size=2)
    .map(tuple),
    comment=st.text(max_size=20)), max_size=3))
def test_tgt_render_targets_conf_renders_or_netbootd_error(targets: list) -> None:
    try:
        text = tgt.render_targets_conf(targets)
    except NetbootdError:
        return
    assert text.count("<target ") == len(targets)


# -- NFS exports --------------------------------------------------------------------------------

EXPORTS = st.lists(st.builds(
    nfs.Export, export_id=st.integers(-2, 70000), path=PATH | st.text(max_size=30),
    writable=st.booleans(),
    clients=st.lists(st.sampled_from(["*", "10.0.0.0/24", "@ops", "host-1"]) | st.text(
        max_size=12), max_size=3).map(tuple),
    comment=st.text(max_size=20)), max_size=4)


@given(EXPORTS)
def test_nfs_renders_or_export_error_and_each_export_is_one_line(exports: list) -> None:
    try:
        kernel = nfs.render_kernel_exports(exports)
        ganesha = nfs.render_ganesha(exports)
    except ExportError:
        return
    # (lines end at "\n" only, for exportfs and ganesha alike: U+0085 is not a line break)
    lines = [x for x in kernel.split("\n") if x and not x.startswith("#")]
    assert [x.split(" ", 1)[0] for x in lines] == [
        e.path for e in sorted(exports, key=lambda e: e.export_id)]
    assert ganesha.count("EXPORT {") == len(exports)


# -- iPXE rendering -----------------------------------------------------------------------------

RENDERER = ScriptRenderer(Config().templates_dir)
HOST = Host(MacAddress.parse("52:54:00:12:34:56"), "web", hostname="web1")
IMAGE = Image("web", 2, Artifact("a" * 64, 1), (Artifact("b" * 64, 1),), "console=ttyS0", 0.0)
BASE_PLAN = policy.boot_plan(HOST, IMAGE, Urls("http://10.0.0.1:8080"))
BASE_LINES = RENDERER.host_script(BASE_PLAN).count("\n")


@given(st.text(max_size=200), st.text(max_size=60))
@example("x\nchain http://evil/", "")
@example("a ${net0/mac}", "")
def test_ipxe_render_refuses_or_keeps_every_value_on_its_line(cmdline: str, url: str) -> None:
    """Any value reaching the renderer is refused (RenderError) or printed where the template
    puts it: the script keeps its line count and its kernel line carries the value whole."""
    plan = replace(BASE_PLAN, cmdline=cmdline, kernel_url="http://10.0.0.1:8080/" + url)
    try:
        text = RENDERER.host_script(plan)
    except RenderError:
        return
    # iPXE ends a line at "\n" only (U+0085, U+2028 are bytes to it): split as it does.
    lines = text.split("\n")
    assert len(lines) - 1 == BASE_LINES and "${" not in text
    (kernel,) = (line for line in lines if line.startswith("kernel "))
    assert kernel.startswith(f"kernel {plan.kernel_url} ") and cmdline in kernel
    assert kernel.endswith(" || goto failed")


@given(st.binary(min_size=6, max_size=6))
def test_ipxe_unknown_script_for_any_mac(packed: bytes) -> None:
    text = RENDERER.unknown_script(MacAddress(packed))
    assert text.startswith("#!ipxe\n") and str(MacAddress(packed)) in text


def test_profiles_are_registered() -> None:
    assert settings.get_profile("ci").max_examples == 100
    with pytest.raises(Exception):  # noqa: B017 (hypothesis' own error type)
        settings.get_profile("no-such-profile")
