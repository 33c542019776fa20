"""The real TFTP server on 127.0.0.1 and an ephemeral port, driven by real clients.

Clients: tftpy's TftpClient (blksize 1468 + tsize), Debian's tftp-hpa (which sends no options at
all: plain 512-byte blocks, like the oldest PXE ROMs), and curl / busybox tftp (blksize 1468 +
tsize from independent implementations). Raw sockets for the hostile and malformed cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tftpy

from netbootd.errors import NetbootdError
from netbootd.servers import tftp as tftp_module
from netbootd.servers.tftp import TftpServer

pytestmark = pytest.mark.timeout(60)

IPXE = Path("/usr/lib/ipxe/undionly.kpxe")
LOGGER = "netbootd.test.tftp"
BIG = 3 << 20
needs_ipxe = pytest.mark.skipif(not IPXE.is_file(), reason="Debian's ipxe package is not installed")


@dataclass
class Tree:
    root: Path
    outside: Path
    sibling: Path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root, outside, sibling = tmp_path / "root", tmp_path / "outside", tmp_path / "root2"
    for d in (root, outside, sibling):
        d.mkdir()
    (outside / "secret.txt").write_text("SECRET\n")
    (outside / "boot.efi").write_bytes(os.urandom(5000))
    (sibling / "secret.txt").write_text("SIBLING SECRET\n")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "exact.bin").write_bytes(os.urandom(1468 * 4))  # ends with an empty DATA block
    (root / "sub").mkdir()
    (root / "sub" / "small.txt").write_bytes(b"hello\n")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    (root / "alias.bin").symlink_to("big.bin")  # stays inside the root: served
    (root / "vendor.efi").symlink_to(outside / "boot.efi")  # like Debian's ipxe.efi -> /boot
    if IPXE.is_file():
        shutil.copyfile(IPXE, root / "undionly.kpxe")
    return Tree(root, outside, sibling)


@pytest.fixture
async def server(tree: Tree, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    srv = TftpServer(tree.root, "127.0.0.1", 0, log=logging.getLogger(LOGGER),
                     trusted_symlinks=["vendor.efi"])
    await srv.start()
    yield srv
    await srv.stop()


# -- helpers --------------------------------------------------------------------------------


def tftpy_get(port: int, name: str, options: dict[str, int] | None = None) -> tuple[bytes, dict]:
    out = io.BytesIO()
    client = tftpy.TftpClient("127.0.0.1", port, options=dict(options or {}))
    try:
        client.download(name, out, timeout=2, retries=2)
    except tftpy.TftpException as e:
        e.received = out.getvalue()  # type: ignore[attr-defined]
        raise
    return out.getvalue(), dict(client.context.options)


def rrq(name: bytes, mode: bytes = b"octet", **options: str) -> bytes:
    pkt = b"\x00\x01" + name + b"\x00" + mode + b"\x00"
    for k, v in options.items():
        pkt += k.encode() + b"\x00" + v.encode() + b"\x00"
    return pkt


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


def error_of(data: bytes) -> tuple[int, str]:
    opcode, code = struct.unpack("!HH", data[:4])
    assert opcode == 5, f"expected an ERROR packet, got opcode {opcode}: {data[:40]!r}"
    return code, data[4:].rstrip(b"\0").decode()


def oack_options(data: bytes) -> dict[str, str]:
    assert data[:2] == b"\x00\x06", data[:40]
    parts = data[2:].split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


class Raw:
    """A hand-driven TFTP peer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)

    def send(self, data: bytes, port: int | None = None) -> None:
        self.sock.sendto(data, ("127.0.0.1", port or self.port))

    def recv(self, timeout: float = 2) -> tuple[bytes, int]:
        self.sock.settimeout(timeout)
        data, src = self.sock.recvfrom(70000)
        return data, src[1]

    def ask(self, data: bytes) -> tuple[bytes, int]:
        self.send(data)
        return self.recv()

    def close(self) -> None:
        self.sock.close()


def raw_ask(port: int, data: bytes) -> tuple[bytes, int]:
    r = Raw(port)
    try:
        return r.ask(data)
    finally:
        r.close()


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        if time.monotonic() > deadline:
            seen = "\n".join(r.getMessage() for r in caplog.records)
            raise AssertionError(f"no log line containing {text!r}; saw:\n{seen}")
        await asyncio.sleep(0.02)


async def wait_for_granted(caplog: pytest.LogCaptureFixture, granted: dict[str, int]) -> None:
    """The server's debug line 'sending NAME (N bytes, options {...})' shows what it granted."""
    await wait_for_log(caplog, "options {")
    line = next(r.getMessage() for r in caplog.records if "options {" in r.getMessage())
    shown = eval(line[line.index("options {") + len("options "):-1])  # a dict repr
    assert shown == granted, line


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)


# -- downloads ------------------------------------------------------------------------------


async def test_tftpy_client_3mib_blksize_tsize(server, tree, caplog):
    data, opts = await asyncio.to_thread(tftpy_get, server.port, "big.bin",
                                         {"blksize": 1468, "tsize": 0})
    assert data == (tree.root / "big.bin").read_bytes()
    assert int(opts["blksize"]) == 1468
    assert int(opts["tsize"]) == BIG
    await wait_for_log(caplog, "tftp: served big.bin 3.1 MB to 127.0.0.1")
    served = [r for r in caplog.records if "served" in r.getMessage()]
    assert len(served) == 1 and served[0].levelno == logging.INFO


@needs_ipxe
@pytest.mark.parametrize("name", ["undionly.kpxe", "/undionly.kpxe"])
async def test_tftpy_client_undionly(server, name, caplog):
    data, opts = await asyncio.to_thread(tftpy_get, server.port, name,
                                         {"blksize": 1468, "tsize": 0})
    assert data == IPXE.read_bytes()
    assert int(opts["tsize"]) == IPXE.stat().st_size
    await wait_for_log(caplog, f"tftp: served {name} 74.2 KB to 127.0.0.1")


@pytest.mark.parametrize(("name", "options"), [
    ("sub/small.txt", {}),  # no options: no OACK, DATA 1 straight away
    ("exact.bin", {"blksize": 1468}),  # a multiple of blksize: an empty last block
    ("exact.bin", {}),
    ("alias.bin", {"blksize": 1468, "tsize": 0}),  # a symlink that stays in the root
    ("vendor.efi", {"tsize": 0}),  # a trusted symlink out of the root
])
async def test_tftpy_client_edge_files(server, tree, name, options):
    data, _ = await asyncio.to_thread(tftpy_get, server.port, name, options)
    assert data == (tree.root / name).read_bytes()


async def test_absolute_name_under_the_root_is_served(server, tree):
    name = str(tree.root / "sub" / "small.txt")
    data, _ = await asyncio.to_thread(tftpy_get, server.port, name)
    assert data == b"hello\n"


@pytest.mark.skipif(shutil.which("tftp") is None, reason="tftp-hpa client not installed")
@pytest.mark.parametrize("name", [
    "big.bin",
    pytest.param("undionly.kpxe", marks=needs_ipxe),
    pytest.param("/undionly.kpxe", marks=needs_ipxe),
])
async def test_tftp_hpa_client(server, tree, tmp_path, name):
    # tftp-hpa 5.2's client sends no options (no blksize, no tsize): this is the RFC 1350 path.
    dest = tmp_path / "hpa.out"
    p = await asyncio.to_thread(
        run, ["tftp", "127.0.0.1", str(server.port), "-m", "binary", "-c", "get", name, str(dest)])
    assert p.returncode == 0 and "Error" not in p.stdout, p.stdout + p.stderr
    assert dest.read_bytes() == (tree.root / name.lstrip("/")).read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_client_blksize_tsize(server, tree, tmp_path, caplog):
    # curl asks for tsize, blksize and timeout; the server grants the first two.
    dest = tmp_path / "curl.out"
    p = await asyncio.to_thread(run, [
        "curl", "-sS", "--tftp-blksize", "1468", "-o", str(dest),
        f"tftp://127.0.0.1:{server.port}/big.bin"])
    assert p.returncode == 0, p.stderr
    assert dest.read_bytes() == (tree.root / "big.bin").read_bytes()
    await wait_for_granted(caplog, {"blksize": 1468, "tsize": BIG})


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
async def test_busybox_client_blksize_tsize(server, tree, tmp_path, caplog):
    dest = tmp_path / "bb.out"
    p = await asyncio.to_thread(run, [
        "busybox", "tftp", "-g", "-b", "1468", "-r", "big.bin", "-l", str(dest),
        "127.0.0.1", str(server.port)])
    assert p.returncode == 0, p.stderr
    assert dest.read_bytes() == (tree.root / "big.bin").read_bytes()
    await wait_for_granted(caplog, {"blksize": 1468, "tsize": BIG})


async def test_concurrent_downloads(server, tree):
    expected = (tree.root / "big.bin").read_bytes()
    results = await asyncio.gather(*[
        asyncio.to_thread(tftpy_get, server.port, name, {"blksize": 1468, "tsize": 0})
        for name in ["big.bin", "/big.bin", "alias.bin", "big.bin", "big.bin", "alias.bin"]])
    assert all(data == expected for data, _ in results)


async def test_wildcard_listener_answers_from_the_address_asked(tree):
    """Bound to 0.0.0.0, a transfer must answer from the address the request was sent to
    (firmware drops replies from another address of a multi-homed server). Loopback has all of
    127/8, so a request to 127.0.0.2 shows it: the kernel would otherwise answer from 127.0.0.1."""
    srv = TftpServer(tree.root, "0.0.0.0", 0)
    await srv.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.bind(("127.0.0.1", 0))
            for dest in ("127.0.0.2", "127.0.0.1"):
                s.sendto(rrq(b"sub/small.txt"), (dest, srv.port))
                data, src = await asyncio.to_thread(s.recvfrom, 1000)
                assert data == b"\x00\x03\x00\x01hello\n" and src[0] == dest
                s.sendto(ack(1), src)
            s.sendto(rrq(b"../outside/secret.txt"), ("127.0.0.2", srv.port))
            data, src = await asyncio.to_thread(s.recvfrom, 1000)
            assert error_of(data)[0] == 2 and src[0] == "127.0.0.2"
    finally:
        await srv.stop()


# -- refusals -------------------------------------------------------------------------------


async def assert_refused(port: int, name: str, code: int, tmp_path: Path) -> None:
    """Refused to every client: ERROR `code` from a fresh port, no data, nothing written."""
    data, src = await asyncio.to_thread(raw_ask, port, rrq(name.encode()))
    assert error_of(data)[0] == code
    assert src != port  # answered from a transfer port, as RFC 1350 wants
    with pytest.raises(tftpy.TftpException) as exc:
        await asyncio.to_thread(tftpy_get, port, name, {"blksize": 1468, "tsize": 0})
    assert exc.value.received == b""  # type: ignore[attr-defined]
    if shutil.which("tftp"):
        dest = tmp_path / "refused.out"
        p = await asyncio.to_thread(
            run, ["tftp", "127.0.0.1", str(port), "-m", "binary", "-c", "get", name, str(dest)])
        assert f"Error code {code}" in p.stdout
        assert not dest.exists() or dest.stat().st_size == 0


@pytest.mark.parametrize("name", [
    "../outside/secret.txt",
    "sub/../../outside/secret.txt",
    "/../outside/secret.txt",
    "../../../../../../../../etc/passwd",
])
async def test_traversal_refused(server, tmp_path, caplog, name):
    await assert_refused(server.port, name, 2, tmp_path)
    await wait_for_log(caplog, f"tftp: refused {name} for 127.0.0.1: outside the TFTP root")
    assert any(r.levelno == logging.WARNING and "outside the TFTP root" in r.getMessage()
               for r in caplog.records)


async def test_absolute_outside_paths_never_leave_the_root(server, tree, tmp_path, caplog):
    # A leading "/" means "the root": these name files that do not exist under it.
    for name in ("/etc/passwd", str(tree.outside / "secret.txt"), str(tree.sibling / "secret.txt")):
        await assert_refused(server.port, name, 1, tmp_path)
    # An absolute path that names the root and then climbs out of it.
    await assert_refused(server.port, f"{tree.root}/../outside/secret.txt", 2, tmp_path)
    await wait_for_log(caplog, "tftp: refused /etc/passwd for 127.0.0.1: not found")


@pytest.mark.parametrize("name", ["escape", "escape-dir/secret.txt", "/escape"])
async def test_symlink_escape_refused(server, tmp_path, caplog, name):
    await assert_refused(server.port, name, 2, tmp_path)
    await wait_for_log(caplog, "outside the TFTP root")


async def test_startup_notes_untrusted_symlinks_out_of_root(server, caplog):
    msgs = [r.getMessage() for r in caplog.get_records("setup")]
    assert any("escape leads out of the root" in m for m in msgs)
    assert any("vendor.efi is a symlink out of the root" in m for m in msgs)
    assert not any("alias.bin" in m for m in msgs)


@pytest.mark.parametrize(("name", "code"), [("sub", 1), ("", 1), ("nonexistent.bin", 1)])
async def test_directories_and_missing_files(server, name, code):
    data, _ = await asyncio.to_thread(raw_ask, server.port, rrq(name.encode()))
    assert error_of(data)[0] == code


# -- names judged before any file system call (issue #13, findings 7 and 13) -----------------


@pytest.fixture
def fs_calls(monkeypatch) -> list[str]:
    """Paths given to realpath(), lstat(), stat() and open() while the test runs (the server
    thread's calls included) -- those that contain the marker "zq"."""
    seen: list[str] = []
    for mod, fn in ((os.path, "realpath"), (os, "lstat"), (os, "stat"), (os, "open")):
        real = getattr(mod, fn)

        def spy(path, *a, _real=real, **kw):
            if "zq" in os.fsdecode(path) if isinstance(path, str | bytes) else False:
                seen.append(os.fsdecode(path))
            return _real(path, *a, **kw)

        monkeypatch.setattr(mod, fn, spy)
    return seen


@pytest.mark.parametrize("name", [
    "zq/" * 21000 + "x",  # 63 KB of components: ~0.3-0.5 s of realpath() each (finding 7)
    "zq" * 32000,  # 64 KB, one component
    "sub/" + "zq" * 126,  # 256 bytes: one past the length cap
    "sub/" + "./" * 15 + "zq",  # 17 components: one past the depth cap
])
async def test_long_or_deep_name_refused_before_any_file_system_call(server, fs_calls, caplog,
                                                                     name):
    data, _ = await asyncio.to_thread(raw_ask, server.port, rrq(name.encode()))
    assert error_of(data) == (1, "File not found")
    await wait_for_log(caplog, "tftp: refused ")
    assert fs_calls == []  # not one lstat(): the name was judged on its own
    assert any(("too long" in r.getMessage() or "too deep" in r.getMessage())
               and r.levelno == logging.INFO for r in caplog.records)


async def test_names_at_the_caps_are_served(server, tree):
    (tree.root / ("f" * 255)).write_bytes(b"long name\n")  # NAME_MAX: 255 bytes, the cap
    deep = "sub/" + "./" * 14 + "small.txt"  # 16 components, the cap
    for name, want in (("f" * 255, b"long name\n"), (deep, b"hello\n")):
        data, _ = await asyncio.to_thread(raw_ask, server.port, rrq(name.encode()))
        assert data == b"\x00\x03\x00\x01" + want, name


@pytest.mark.parametrize("name", ["big.bin/", "big.bin/.", "sub/small.txt/", "sub/small.txt/.",
                                  "/big.bin/", "sub/small.txt/..", "sub/", "/"])
async def test_directory_spellings_are_refused(server, tmp_path, name):
    """"name/" and "name/." designate a directory; realpath() strips the "/" or "." and the file
    before it used to be served (finding 13)."""
    await assert_refused(server.port, name, 1, tmp_path)


async def test_wrq_refused(server, tree, tmp_path, caplog):
    for name in ("new.bin", "../outside/new.bin", "big.bin"):
        data, _ = await asyncio.to_thread(raw_ask, server.port,
                                          b"\x00\x02" + name.encode() + b"\x00octet\x00")
        assert error_of(data) == (2, "Write requests are not accepted")
    client = tftpy.TftpClient("127.0.0.1", server.port, options={}, flock=False)
    with pytest.raises(tftpy.TftpException, match="errorcode = 2"):
        await asyncio.to_thread(client.upload, "new.bin", io.BytesIO(b"x" * 3000), timeout=2)
    if shutil.which("tftp"):
        src = tmp_path / "upload.txt"
        src.write_text("upload\n")
        p = await asyncio.to_thread(run, ["tftp", "127.0.0.1", str(server.port), "-m", "binary",
                                          "-c", "put", str(src), "hpa-new.bin"])
        assert "Error code 2" in p.stdout
    assert not (tree.root / "new.bin").exists() and not (tree.root / "hpa-new.bin").exists()
    assert not (tree.outside / "new.bin").exists()
    assert len((tree.root / "big.bin").read_bytes()) == BIG
    await wait_for_log(caplog, "tftp: refused write of new.bin from 127.0.0.1: read-only server")


# -- robustness -----------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\x00",
    b"\x00\x01",
    b"\x00\x04\x00",  # a 3-byte ACK: kills tftpy's listen() (struct.error)
    b"\x00\x03\x00",  # a 3-byte DATA: same
    b"\x00\x09abc",  # unknown opcode
    b"\x00\x01abc",  # RRQ without a mode
    rrq(b"\xff\xfe"),  # non-ASCII name: kills tftpy's listen() (UnicodeDecodeError)
    rrq(b"big.bin", blksize=""),  # empty option value
    b"\x00\x01big.bin\x00octet\x00blksize\x00",  # odd number of option fields
    b"\x00\x05\x00\x01oops\x00",  # ERROR on the request port
    b"\x00\x06blksize\x00512\x00",  # OACK on the request port
    os.urandom(1000),
    b"\x00\x01" + b"A" * 60000 + b"\x00octet\x00",
]


async def test_garbage_then_good_download(server, tree):
    r, junk = Raw(server.port), Raw(server.port)
    try:
        for g in GARBAGE:
            junk.send(g)
        # tftpy's listen() dies on these two valid-looking requests; here they are answered.
        data, _ = await asyncio.to_thread(r.ask, rrq(b"sub"))  # a directory
        assert error_of(data)[0] == 1
        data, _ = await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="abc"))
        assert data[:4] == b"\x00\x03\x00\x01" and len(data) == 4 + 512  # option ignored
        # The 60000-byte name got a "not found"; everything else in GARBAGE got no answer.
        data, _ = await asyncio.to_thread(junk.recv)
        assert error_of(data)[0] == 1
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(junk.recv, 0.3)
    finally:
        r.close()
        junk.close()
    assert server.running
    got, _ = await asyncio.to_thread(tftpy_get, server.port, "big.bin", {"blksize": 1468})
    assert got == (tree.root / "big.bin").read_bytes()


async def test_garbage_and_strangers_on_a_transfer_port(server, tree):
    expected = (tree.root / "big.bin").read_bytes()
    r, stranger = Raw(server.port), Raw(server.port)
    try:
        data, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="1024", tsize="0"))
        assert oack_options(data) == {"blksize": "1024", "tsize": str(BIG)}
        for g in (b"", b"\x00\x04\x00", b"\x00\x03", os.urandom(50), b"\x00\x01\xff\x00octet\x00"):
            r.send(g, tid)
        # RFC 1350: a packet from another port gets ERROR 5 and the transfer goes on.
        stranger.send(ack(0), tid)
        data, _ = await asyncio.to_thread(stranger.recv)
        assert error_of(data)[0] == 5
        r.send(ack(0), tid)
        data, _ = await asyncio.to_thread(r.recv)
        assert data[:4] == b"\x00\x03\x00\x01" and data[4:] == expected[:1024]
        r.send(ack(1), tid)
        data, _ = await asyncio.to_thread(r.recv)
        assert data[:4] == b"\x00\x03\x00\x02" and data[4:] == expected[1024:2048]
    finally:
        r.close()
        stranger.close()
    assert server.running


async def test_new_request_from_the_port_of_an_abandoned_transfer(server):
    r = Raw(server.port)
    try:
        first, _ = await asyncio.to_thread(r.ask, rrq(b"big.bin"))
        again, _ = await asyncio.to_thread(r.ask, rrq(b"big.bin"))  # retransmitted: same transfer
        assert first[:4] == again[:4] == b"\x00\x03\x00\x01"  # (the timer's re-send)
        data, _ = await asyncio.to_thread(r.ask, rrq(b"sub/small.txt"))  # gave up, asks anew
        assert data == b"\x00\x03\x00\x01hello\n"
    finally:
        r.close()


@pytest.fixture
def quiet_tftpy_client():
    """The test's own tftpy client logs every packet at DEBUG and INFO. The server does not use
    tftpy (so it has no reason to set tftpy's log levels): set, for the client, the levels the
    server used to set (tftpy WARNING, its state machine and packet codec CRITICAL)."""
    loggers = [logging.getLogger(n) for n in ("tftpy", "tftpy.TftpStates", "tftpy.TftpPacketTypes")]
    saved = [lg.level for lg in loggers]
    levels = (logging.WARNING, logging.CRITICAL, logging.CRITICAL)
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)
    yield
    for lg, level in zip(loggers, saved, strict=True):
        lg.setLevel(level)


async def test_size_probe_and_download_log_quietly(server, tree, caplog, quiet_tftpy_client):
    """PXE ROMs ask for tsize, abort with an ERROR after the OACK, then download. That is
    normal: no warning or error from netbootd, and nothing at all from tftpy."""
    caplog.set_level(logging.DEBUG)  # let everything through; the logger levels decide
    r = Raw(server.port)
    try:
        data, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin", tsize="0"))
        assert oack_options(data) == {"tsize": str(BIG)}
        r.send(struct.pack("!HH", 5, 8) + b"size probe\x00", tid)
    finally:
        r.close()
    got, _ = await asyncio.to_thread(tftpy_get, server.port, "big.bin", {"blksize": 1468})
    assert got == (tree.root / "big.bin").read_bytes()
    await wait_for_log(caplog, "tftp: served big.bin")
    await wait_for_log(caplog, "ended after the option reply for big.bin")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tftpy")] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    info = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert [r.getMessage().split(" in ")[0] for r in info if "served" in r.getMessage()] == [
        "tftp: served big.bin 3.1 MB to 127.0.0.1"
    ]


async def test_unanswered_transfer_is_retried_then_dropped(tree, caplog):
    """A client that acknowledged block 1 and then went silent: block 2 is re-sent `retries`
    times, then the transfer is given up."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    srv = TftpServer(
        tree.root, "127.0.0.1", 0, log=logging.getLogger(LOGGER), timeout=0.2, retries=2
    )
    await srv.start()
    r = Raw(srv.port)
    try:
        first, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin"))
        assert first[:4] == b"\x00\x03\x00\x01"
        r.send(ack(1), tid)
        blocks = [(await asyncio.to_thread(r.recv))[0] for _ in range(3)]
        assert [b[:4] for b in blocks] == [b"\x00\x03\x00\x02"] * 3  # sent, re-sent twice
        await wait_for_log(caplog, "tftp: gave up sending big.bin to 127.0.0.1")
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(r.recv, 0.5)
    finally:
        r.close()
        await srv.stop()


# -- requests that never acknowledge, per-source slots (issue #13, finding 8) ----------------


@pytest.mark.parametrize(("options", "first_len"), [({}, 516), ({"blksize": "1468"}, 15)])
async def test_never_acknowledged_request_gets_one_reply_and_frees_its_slot(
        tree, caplog, options, first_len):
    """A request that never ACKs (a probe, a spoofed source) gets its first DATA (or OACK) once,
    is not re-sent anything, and holds its slot for `timeout`, not (retries + 1) x timeout.
    Measured here as bytes: one 516-byte block for a 22-byte RRQ (was six: x141)."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    srv = TftpServer(tree.root, "127.0.0.1", 0, log=logging.getLogger(LOGGER), timeout=0.3,
                     retries=5, max_transfers=1)
    await srv.start()
    r, other = Raw(srv.port), Raw(srv.port)
    try:
        req = rrq(b"big.bin", **options)
        first, _ = await asyncio.to_thread(r.ask, req)
        assert len(first) == first_len
        got = [first]
        with contextlib.suppress(TimeoutError):
            while True:
                got.append((await asyncio.to_thread(r.recv, 1.5))[0])
        assert got == [first]  # (before: re-sent five more times, 0.3 s apart)
        await wait_for_log(caplog, "never acknowledged the first")
        # The only slot is free again: another client is served at once, not "Server busy".
        data, _ = await asyncio.to_thread(other.ask, rrq(b"sub/small.txt"))
        assert data == b"\x00\x03\x00\x01hello\n"
    finally:
        r.close()
        other.close()
        await srv.stop()


async def test_repeated_request_before_any_ack_gets_the_first_window_again(tree):
    """A PXE ROM whose first DATA was lost re-sends its RRQ (same port, same name): that is
    answered with the first block again, at most `retries` times; then the transfer goes on.
    (`timeout` is long: what answers here is the RRQ, not the timer.)"""
    srv = TftpServer(tree.root, "127.0.0.1", 0, timeout=5, retries=2)
    await srv.start()
    r = Raw(srv.port)
    try:
        first, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin"))
        again = [(await asyncio.to_thread(r.ask, rrq(b"big.bin")))[0] for _ in range(2)]
        assert again == [first, first]
        r.send(rrq(b"big.bin"))  # a third: past `retries`, not answered
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(r.recv, 0.2)
        r.send(ack(1), tid)  # the client got block 1 after all: the transfer goes on
        data, _ = await asyncio.to_thread(r.recv)
        assert data[:4] == b"\x00\x03\x00\x02"
    finally:
        r.close()
        await srv.stop()


async def test_requests_per_source_address_are_capped(tree):
    """At most `max_per_source` transfers (+ waiting requests) per client address; past that a
    request is dropped unanswered, while another address is still served."""
    srv = TftpServer(tree.root, "127.0.0.1", 0, max_per_source=2)
    await srv.start()
    mine = [Raw(srv.port) for _ in range(3)]
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for r in mine[:2]:
            data, _ = await asyncio.to_thread(r.ask, rrq(b"big.bin"))
            assert data[:4] == b"\x00\x03\x00\x01"
        mine[2].send(rrq(b"big.bin"))
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(mine[2].recv, 0.3)
        other.bind(("127.0.0.2", 0))  # another client address (all of 127/8 is loopback)
        other.settimeout(2)
        other.sendto(rrq(b"sub/small.txt"), ("127.0.0.1", srv.port))
        data, _ = await asyncio.to_thread(other.recvfrom, 100)
        assert data == b"\x00\x03\x00\x01hello\n"
        mine[0].close()  # ... a slot of 127.0.0.1 ends (its port is closed: ICMP) ...
        mine[0] = Raw(srv.port)
        await asyncio.sleep(1.2)  # (or its `timeout` passes: never acknowledged)
        data, _ = await asyncio.to_thread(mine[0].ask, rrq(b"sub/small.txt"))
        assert data == b"\x00\x03\x00\x01hello\n"  # ... and 127.0.0.1 is served again
    finally:
        for r in mine:
            r.close()
        other.close()
        await srv.stop()


async def test_transfer_limit(tree):
    srv = TftpServer(tree.root, "127.0.0.1", 0, max_transfers=1)
    await srv.start()
    first = Raw(srv.port)
    try:
        _, tid = await asyncio.to_thread(first.ask, rrq(b"big.bin"))  # holds the only slot
        first.send(ack(1), tid)  # (acknowledged: kept past `timeout`, re-sent by the timer)
        data, _ = await asyncio.to_thread(raw_ask, srv.port, rrq(b"big.bin"))
        assert error_of(data) == (0, "Server busy, try again")
    finally:
        first.close()
        await srv.stop()


async def test_busy_request_waits_for_a_free_slot(tree):
    """All slots taken: a request waits (up to `timeout`) for one instead of being refused at
    once; a boot storm's requests come all together, and a PXE ROM answered ERROR gives up."""
    srv = TftpServer(tree.root, "127.0.0.1", 0, max_transfers=1)
    await srv.start()
    first, second = Raw(srv.port), Raw(srv.port)
    try:
        data, tid = await asyncio.to_thread(first.ask, rrq(b"sub/small.txt"))
        assert data == b"\x00\x03\x00\x01hello\n"  # holds the only slot
        second.send(rrq(b"big.bin"))
        second.send(rrq(b"big.bin"))  # (a retransmission: the same request, waiting once)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(second.recv, 0.2)
        t0 = time.monotonic()
        first.send(ack(1), tid)  # the first transfer ends: the waiting request starts
        data, _ = await asyncio.to_thread(second.recv)
        assert data[:4] == b"\x00\x03\x00\x01" and time.monotonic() - t0 < 0.5
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(second.recv, 0.3)  # started once, not twice
    finally:
        first.close()
        second.close()
        await srv.stop()


# -- windowsize (RFC 7440), rollover, the data path's fallbacks ------------------------------


def recv_data(r: Raw, timeout: float = 2) -> tuple[int, bytes]:
    data, _ = r.recv(timeout)
    assert data[:2] == b"\x00\x03", data[:40]
    return struct.unpack("!H", data[2:4])[0], data[4:]


@pytest.mark.skipif(shutil.which("atftp") is None, reason="atftp not installed")
@pytest.mark.parametrize("name", ["big.bin", "exact.bin", "sub/small.txt"])
async def test_atftp_client_windowsize(server, tree, tmp_path, caplog, name):
    # atftp is the Debian client that asks for windowsize (RFC 7440).
    dest = tmp_path / "atftp.out"
    p = await asyncio.to_thread(
        run,
        [
            "atftp",
            "--get",
            "--remote-file",
            name,
            "--local-file",
            str(dest),
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 8",
            "127.0.0.1",
            str(server.port),
        ],
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert dest.read_bytes() == (tree.root / name).read_bytes()
    await wait_for_granted(caplog, {"blksize": 1468, "windowsize": 8})
    await wait_for_log(caplog, f"tftp: served {name}")


async def test_windowsize_gap_and_duplicate_acks(server, tree):
    """A window of 4 blocks; an ACK inside the window (the client missed a block) starts the
    next window after it; a duplicate ACK is not answered (only the timer re-sends)."""
    expected = (tree.root / "big.bin").read_bytes()

    def block(n: int) -> bytes:
        return expected[(n - 1) * 512 : n * 512]

    r = Raw(server.port)
    try:
        data, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="512", windowsize="4"))
        assert oack_options(data) == {"blksize": "512", "windowsize": "4"}
        r.send(ack(0), tid)
        got = [await asyncio.to_thread(recv_data, r) for _ in range(4)]
        assert got == [(n, block(n)) for n in (1, 2, 3, 4)]
        r.send(ack(2), tid)  # "3 never came": the next window starts at 3
        got = [await asyncio.to_thread(recv_data, r) for _ in range(4)]
        assert got == [(n, block(n)) for n in (3, 4, 5, 6)]
        r.send(ack(6), tid)
        got = [await asyncio.to_thread(recv_data, r) for _ in range(4)]
        assert [n for n, _ in got] == [7, 8, 9, 10]
        r.send(ack(6), tid)  # a duplicate: no answer
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(r.recv, 0.3)
        r.send(ack(10), tid)
        got = [await asyncio.to_thread(recv_data, r) for _ in range(4)]
        assert got == [(n, block(n)) for n in (11, 12, 13, 14)]
    finally:
        r.close()


@pytest.mark.parametrize(
    ("options", "window"),
    [
        ({"blksize": "512", "windowsize": "1000"}, "64"),  # at most 64 blocks
        ({"blksize": "1468", "windowsize": "1000"}, "44"),  # and at most 64 KiB in flight
        ({"blksize": "65464", "windowsize": "8"}, "1"),
        ({"windowsize": "1"}, "1"),
        ({"windowsize": "0"}, None),  # invalid: ignored
        ({"windowsize": "many"}, None),
    ],
)
async def test_windowsize_granted(server, options, window):
    data, _ = await asyncio.to_thread(raw_ask, server.port, rrq(b"big.bin", **options))
    if window is None:
        assert data[:4] == b"\x00\x03\x00\x01"  # no option granted: DATA 1, no OACK
    else:
        assert oack_options(data).get("windowsize") == window


async def test_lock_step_duplicate_ack_is_not_answered(server, tree):
    """No Sorcerer's Apprentice: a duplicate ACK does not make the server send again."""
    expected = (tree.root / "big.bin").read_bytes()
    r = Raw(server.port)
    try:
        data, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin"))
        assert data == b"\x00\x03\x00\x01" + expected[:512]
        r.send(ack(1), tid)
        assert await asyncio.to_thread(recv_data, r) == (2, expected[512:1024])
        r.send(ack(1), tid)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(r.recv, 0.3)
        r.send(ack(2), tid)
        assert await asyncio.to_thread(recv_data, r) == (3, expected[1024:1536])
    finally:
        r.close()


async def test_block_numbers_roll_over(server, tree):
    """More than 65535 blocks: the wire number goes 65535, 0, 1, ... (as tftpy and dnsmasq)."""
    blocks = 65536 + 100
    content = os.urandom((blocks - 1) * 8 + 3)
    (tree.root / "many.bin").write_bytes(content)

    def download() -> bytes:
        r = Raw(server.port)
        try:
            data, tid = r.ask(rrq(b"many.bin", blksize="8", windowsize="64"))
            assert oack_options(data) == {"blksize": "8", "windowsize": "64"}
            got, n = [], 0
            r.send(ack(0), tid)
            while True:
                for _ in range(64):
                    n += 1
                    number, chunk = recv_data(r)
                    assert number == n % 65536, (number, n)
                    got.append(chunk)
                    if len(chunk) < 8:
                        r.send(ack(number), tid)
                        return b"".join(got)
                r.send(ack(n % 65536), tid)
        finally:
            r.close()

    assert await asyncio.to_thread(download) == content


@pytest.mark.parametrize("mapped", [True, False])
async def test_file_shrinking_under_a_transfer_ends_it_with_an_error(
    server, tree, caplog, monkeypatch, mapped
):
    """The transfer is mapped (or read block by block where mmap() fails): a file truncated
    under it ends it with ERROR 0, never a crash (SIGBUS) or a short file that looks whole.
    (Read, the first short block fails; mapped, the first block reaching a page past the new
    end of the file: the rest of the last page reads as zeros.)"""
    if not mapped:
        monkeypatch.setattr(tftp_module, "_map_file", lambda fd, size: None)
    r = Raw(server.port)
    try:
        data, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="1468"))
        r.send(ack(0), tid)
        assert (await asyncio.to_thread(recv_data, r))[0] == 1
        os.truncate(tree.root / "big.bin", 2000)
        sent = []
        for n in range(1, 6):
            r.send(ack(n), tid)
            data, _ = await asyncio.to_thread(r.recv)
            if data[:2] != b"\x00\x03":
                break
            sent.append(struct.unpack("!H", data[2:4])[0])
        assert error_of(data) == (0, "Cannot read file")
        assert sent == ([2] if mapped else [])  # block 3 reaches past the first page
    finally:
        r.close()
    await wait_for_log(
        caplog,
        "tftp: transfer of big.bin to 127.0.0.1 failed: cannot read the file: the file shrank",
    )
    assert server.running
    got, _ = await asyncio.to_thread(tftpy_get, server.port, "sub/small.txt")
    assert got == b"hello\n"


async def test_client_that_goes_away_ends_its_transfer(tree, caplog):
    """The transfer socket is connected to the client: an ICMP port unreachable (the client
    exited) ends the transfer at once instead of after `retries` timeouts."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    srv = TftpServer(tree.root, "127.0.0.1", 0, log=logging.getLogger(LOGGER), timeout=0.3)
    await srv.start()
    r = Raw(srv.port)
    try:
        _, tid = await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="1468"))
        r.send(ack(0), tid)
        assert (await asyncio.to_thread(recv_data, r))[0] == 1
    finally:
        r.close()
    try:
        await wait_for_log(caplog, "tftp: 127.0.0.1 went away during the transfer of big.bin")
        assert not any("gave up" in rec.getMessage() for rec in caplog.records)
    finally:
        await srv.stop()


@pytest.fixture(params=["no-timerfd", "no-reuseport", "no-mmap"])
def fallback(request, monkeypatch):
    """The data path where the fast mechanisms are missing: no timerfd (poll timeouts), no
    SO_REUSEPORT (one unconnected socket per transfer), no mmap (os.preadv per block)."""
    if request.param == "no-timerfd":
        monkeypatch.setattr(tftp_module, "_make_timer", lambda: None)
    elif request.param == "no-reuseport":
        monkeypatch.setattr(tftp_module, "_SO_REUSEPORT", None)
    else:
        monkeypatch.setattr(tftp_module, "_map_file", lambda fd, size: None)
    return request.param


async def test_fallbacks_serve_alike(fallback, tree, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    srv = TftpServer(
        tree.root, "127.0.0.1", 0, log=logging.getLogger(LOGGER), timeout=0.2, retries=2
    )
    await srv.start()
    try:
        for name, options in [
            ("big.bin", {"blksize": 1468, "tsize": 0}),
            ("exact.bin", {}),
            ("sub/small.txt", {}),
        ]:
            got, _ = await asyncio.to_thread(tftpy_get, srv.port, name, options)
            assert got == (tree.root / name).read_bytes()
        r, stranger = Raw(srv.port), Raw(srv.port)
        try:
            data, tid = await asyncio.to_thread(
                r.ask, rrq(b"big.bin", blksize="512", windowsize="2")
            )
            stranger.send(ack(0), tid)
            data, _ = await asyncio.to_thread(stranger.recv)
            assert error_of(data)[0] == 5
            r.send(ack(0), tid)
            assert [(await asyncio.to_thread(recv_data, r))[0] for _ in range(2)] == [1, 2]
            # Unanswered: the window again after 0.2 s, twice, then nothing.
            again = [(await asyncio.to_thread(recv_data, r))[0] for _ in range(4)]
            assert again == [1, 2, 1, 2]
            await wait_for_log(caplog, "tftp: gave up sending big.bin to 127.0.0.1")
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(r.recv, 0.4)
        finally:
            r.close()
            stranger.close()
    finally:
        await srv.stop()


# -- lifecycle ------------------------------------------------------------------------------


def tftp_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tftp:")]


async def test_stop_is_prompt_and_frees_the_port(tree):
    srv = TftpServer(tree.root, "127.0.0.1", 0)
    await srv.stop()  # before start: harmless
    await srv.start()
    port = srv.port
    assert port != 0 and srv.running and f"tftp:{port}" in tftp_threads()
    r = Raw(port)
    try:
        await asyncio.to_thread(r.ask, rrq(b"big.bin", blksize="1468"))  # a transfer in flight
        t0 = time.monotonic()
        await srv.stop()
        assert time.monotonic() - t0 < 2
        data, _ = await asyncio.to_thread(r.recv)
        assert error_of(data) == (0, "Server shutting down")
    finally:
        r.close()
    assert not srv.running and f"tftp:{port}" not in tftp_threads()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the port is free again
    await srv.stop()  # twice: harmless
    # ... and the same object can serve again on the same port.
    srv2 = TftpServer(tree.root, "127.0.0.1", port)
    await srv2.start()
    try:
        got, _ = await asyncio.to_thread(tftpy_get, port, "sub/small.txt")
        assert got == b"hello\n"
    finally:
        await srv2.stop()


async def test_idle_stop_is_prompt(tree):
    srv = TftpServer(tree.root, "127.0.0.1", 0)
    await srv.start()
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await srv.stop()
    assert time.monotonic() - t0 < 0.5
    assert not srv.running


async def test_bind_failure_raises_netbootd_error(tree):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        srv = TftpServer(tree.root, "127.0.0.1", port)
        with pytest.raises(
            NetbootdError, match=rf"^TFTP: cannot bind 127\.0\.0\.1:{port}: Address already in use$"
        ):
            await srv.start()
        assert not srv.running and not tftp_threads()
        await srv.stop()  # after a failed start: harmless


_PRIVILEGED_BIND = """
import asyncio, pathlib
from netbootd.errors import NetbootdError
from netbootd.servers import tftp as tftp_module
from netbootd.servers.tftp import TftpServer
try:
    asyncio.run(TftpServer(pathlib.Path("/usr/lib"), "127.0.0.1", 69).start())
except NetbootdError as e:
    print(e)
"""


def test_privileged_port_raises_netbootd_error():
    """Port 69 as an unprivileged user: a clear NetbootdError. As root, drop to nobody to check."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _PRIVILEGED_BIND]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    assert p.stdout.strip() == "TFTP: cannot bind 127.0.0.1:69: Permission denied", p.stderr


async def test_bad_root_raises_netbootd_error(tmp_path):
    with pytest.raises(NetbootdError, match="is not a directory"):
        await TftpServer(tmp_path / "missing", "127.0.0.1", 0).start()


# -- what tftpy's own server does (why netbootd does not run its listen()) -------------------


def test_stock_tftpy_listen_is_unsafe(tree):
    """Documents tftpy's own TftpServer.listen() (0.8.7): it follows symlinks out of the root,
    accepts uploads, and dies on a 3-byte ACK. If this test fails, tftpy changed: re-read
    netbootd/servers/tftp.py's docstring."""
    loggers = [logging.getLogger(n) for n in ("tftpy", "tftpy.TftpStates", "tftpy.TftpPacketTypes")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    stock = tftpy.TftpServer(str(tree.root))
    died: list[struct.error] = []

    def serve() -> None:
        try:
            stock.listen("127.0.0.1", 0, timeout=0.5)
        except struct.error as e:  # what kills it below
            died.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert stock.is_running.wait(5)
    port = stock.listenport
    try:
        leaked, _ = tftpy_get(port, "escape")
        assert leaked == b"SECRET\n"
        tftpy.TftpClient("127.0.0.1", port, options={}, flock=False).upload(
            "uploaded.bin", io.BytesIO(b"x"), timeout=2
        )
        deadline = time.monotonic() + 3  # tftpy ACKs the last block before writing it
        while (tree.root / "uploaded.bin").read_bytes() != b"x" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tree.root / "uploaded.bin").read_bytes() == b"x"
        raw_sock = Raw(port)
        raw_sock.send(b"\x00\x04\x00")
        raw_sock.close()
        t.join(3)
        assert not t.is_alive() and died and "unpack" in str(died[0])
    finally:
        stock.stop(now=True)
        t.join(3)
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)
