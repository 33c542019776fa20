"""The hostile-LAN lab (issue #13): `netbootd serve` (proxyDHCP + TFTP + HTTP) in a namespace of
its own, a client namespace joined to it by a veth pair, bounded fuzzers per protocol, the
valid clients that must still get their answer afterwards, and the daemon's health (alive, RSS,
database size, tracebacks in its log).

Used by tests/integration/test_fuzz_net.py (a few seconds per protocol in CI) and bench/fuzz.py
(`make fuzz`: longer runs, figures in bench/results/fuzz.md). Every fuzzer is bounded by a
packet count AND a duration, and sends only from the client namespace to the server's address
on the veth pair. Packets are built here with struct (the standard library only, like the rest
of testbed): mutated valid requests (bytes changed, truncated, spliced), random bytes, and the
hostile cases of the issue (long and deep TFTP names, option 97 of 300 bytes, Range: bytes=-0).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed import REPO
from testbed.netns import Env, http_get, in_netns, veth
from testbed.procs import HarnessError, Proc, netns_argv, run

SRV_IP, CLI_IP = "10.213.9.1", "10.213.9.2"
HTTP_PORT = 8080
ENROLLED = "52:54:00:f2:00:01"
ARMED = "52:54:00:f2:00:02"  # enrolled, re-provision armed: its script GETs are counted
TFTP_FILE, TFTP_SIZE = "probe.bin", 5000  # ~10 blocks of 512
MAGIC = b"\x63\x82\x53\x63"


# -- the lab ----------------------------------------------------------------------------------


@dataclass
class FuzzLab:
    env: Env
    srv: str
    cli: str
    state: Path
    tftp_root: Path
    serve: Proc
    log: Path
    cli_env: dict[str, str] = field(default_factory=dict)

    def netbootd(self, *args: str, check: bool = True) -> str:
        """The operator's CLI on the lab's state (root namespace: the CLI needs no network)."""
        r = run([sys.executable, "-m", "netbootd", *args], check=check, env=self.cli_env,
                cwd=REPO)
        return r.stdout

    @property
    def alive(self) -> bool:
        return self.serve.alive()

    def rss_kb(self) -> int:
        """The daemon's resident set (`ip netns exec` execs it: same pid)."""
        text = Path(f"/proc/{self.serve.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else 0

    def db_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state.glob("netbootd.sqlite3*"))

    def tracebacks(self) -> tuple[int, int, int]:
        """Tracebacks in the daemon's log: (all, those with a netbootd/ frame that are not a
        peer going away, those that are: a handler reading the body of a request whose client
        disconnected, ConnectionResetError -- logged by aiohttp at ERROR, finding 12's kind)."""
        text = self.log.read_text(errors="replace")
        blocks = text.split("Traceback (most recent call last):")[1:]
        package = f'File "{REPO / "netbootd"}/'
        ours = [b for b in blocks if package in b]
        gone = [b for b in ours if "\nConnectionResetError: Connection lost" in b]
        return len(blocks), len(ours) - len(gone), len(gone)

    def udp_counters(self, ns: str | None = None) -> dict[str, int]:
        """A namespace's UDP counters (/proc/net/snmp; the server's by default): datagrams
        delivered to its sockets (InDatagrams) and dropped because a receive buffer was full
        (RcvbufErrors)."""

        def read() -> dict[str, int]:
            lines = [x.split() for x in Path("/proc/thread-self/net/snmp").read_text()
                     .splitlines() if x.startswith("Udp:")]
            return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=False))

        c = in_netns(ns or self.srv, read)
        return {"delivered": c.get("InDatagrams", 0), "dropped": c.get("RcvbufErrors", 0)}

    def close(self) -> None:
        self.env.close()


def start(env: Env, *, extra: tuple[str, ...] = ()) -> FuzzLab:
    """Namespaces, a role and two enrolled hosts (one armed for re-provisioning), a TFTP root
    with one file, and `netbootd serve --interface eth0` in the server namespace; returned once
    every valid client gets its answer."""
    srv, cli = env.netns("s"), env.netns("c")
    veth(srv, cli, f"{SRV_IP}/24", f"{CLI_IP}/24")
    work = env.workdir
    state, root = work / "state", work / "tftp"
    root.mkdir()
    (root / TFTP_FILE).write_bytes(random.Random(69).randbytes(TFTP_SIZE))
    k, i = work / "vmlinuz", work / "initrd"
    k.write_bytes(random.Random(1).randbytes(64 << 10))
    i.write_bytes(random.Random(2).randbytes(32 << 10))
    cli_env = {**os.environ, "NETBOOTD_STATE_DIR": str(state)}
    cli_env.pop("NETBOOTD_CONFIG", None)
    log = work / "serve.log"
    lab = FuzzLab(env, srv, cli, state, root, None, log, cli_env)  # type: ignore[arg-type]
    lab.netbootd("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    lab.netbootd("enroll", ENROLLED, "web", "--hostname", "fz1")
    lab.netbootd("enroll", ARMED, "web", "--hostname", "fz2")
    lab.netbootd("reprovision", "fz2")
    argv = [sys.executable, "-m", "netbootd", "serve", "--interface", "eth0",
            "--http-port", str(HTTP_PORT), "--no-https", "--tftp-root", str(root), *extra]
    lab.serve = env.spawn("serve", argv, ns=srv, env=cli_env, cwd=REPO, log_name=log.name)
    deadline = time.monotonic() + 30
    while not (http_probe(lab) and dhcp_probe(lab, wait=0.5) and tftp_probe(lab)):
        if not lab.alive or time.monotonic() > deadline:
            raise HarnessError(f"netbootd serve did not answer in the lab:\n{lab.serve.log_tail()}")
        time.sleep(0.2)
    return lab


# -- packets ----------------------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def dhcp_request(mac: str = ENROLLED, xid: int = 1, mtype: int = 1, arch: int = 0,
                 ciaddr: str = "0.0.0.0", guid: bytes | None = bytes(17),
                 ipxe: bool = False, extra: bytes = b"") -> bytes:
    """A PXE client's DISCOVER (mtype 1) or REQUEST (3), as firmware sends it."""
    vc = b"PXEClient:Arch:%05d:UNDI:002001" % arch
    opts = bytes((53, 1, mtype)) + bytes((60, len(vc))) + vc + bytes((93, 2)) + struct.pack(
        "!H", arch) + b"\x5e\x03\x01\x03\x00"
    if guid is not None:
        opts += bytes((97, len(guid))) + guid
    if ipxe:
        opts += b"\x4d\x04iPXE"
    flags = 0x8000 if ciaddr == "0.0.0.0" else 0
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, flags,
                      socket.inet_aton(ciaddr), bytes(4), bytes(4), bytes(4),
                      mac_bytes(mac), b"", b"")
    return hdr + MAGIC + opts + extra + b"\xff"


def tftp_rrq(name: bytes, **options: str) -> bytes:
    return b"\x00\x01" + name + b"\x00octet\x00" + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in options.items())


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: bytes changed, a cut, an insertion of random bytes, a duplication."""
    raw = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not raw:
            break
        pos = rng.randrange(len(raw))
        kind = rng.random()
        if kind < 0.5:
            raw[pos] = rng.randrange(256)
        elif kind < 0.65:
            del raw[pos:]
        elif kind < 0.85:
            raw[pos:pos] = rng.randbytes(rng.randint(1, 64))
        else:
            raw[pos:pos] = raw[pos:pos + rng.randint(1, 32)]
    return bytes(raw)


def dhcp_junk(rng: random.Random) -> Iterator[bytes]:
    """Mutated valid requests, truncations, random bytes, and the issue's hostile options."""
    macs = [ENROLLED, "52:54:00:f2:ff:01", "02:00:00:00:00:01"]
    while True:
        base = dhcp_request(rng.choice(macs), rng.getrandbits(32), rng.choice([1, 3, 8]),
                            rng.choice([0, 7, 9, 11, 16, 99]), ipxe=rng.random() < 0.3)
        r = rng.random()
        if r < 0.6:
            yield mutate(rng, base)
        elif r < 0.7:
            yield base[:rng.randrange(len(base))]
        elif r < 0.8:
            yield rng.randbytes(rng.randrange(0, 600))
        elif r < 0.9:  # RFC 3396 concatenation: option 97 of 300 bytes (finding 10)
            yield dhcp_request(rng.choice(macs), rng.getrandbits(32), guid=None,
                               extra=b"\x61\xff" + bytes(255) + b"\x61\x2d" + bytes(45))
        else:  # every option repeated or overlong
            yield base[:240] + b"".join(bytes((c, 255)) + rng.randbytes(255)
                                        for c in rng.sample(range(1, 255), 3)) + base[240:]


def tftp_junk(rng: random.Random) -> Iterator[bytes]:
    names = [TFTP_FILE.encode(), b"../etc/passwd", b"/" + TFTP_FILE.encode(),
             TFTP_FILE.encode() + b"/", TFTP_FILE.encode() + b"/.", b"a/" * 200, b"x" * 2000,
             b"\xff\xfe", b""]
    while True:
        name = rng.choice(names)
        opts = rng.choice([{}, {"blksize": "1468", "tsize": "0"}, {"windowsize": "64"},
                           {"blksize": "abc"}, {"blksize": "65536"}, {"x" * 50: "y"}])
        base = tftp_rrq(name, **opts)
        r = rng.random()
        if r < 0.5:
            yield mutate(rng, base)
        elif r < 0.65:
            yield base
        elif r < 0.8:
            yield rng.randbytes(rng.randrange(0, 600))
        elif r < 0.9:  # not a request: ACK / DATA / ERROR / WRQ on the request port
            yield bytes((0, rng.choice([2, 3, 4, 5, 6, 9]))) + rng.randbytes(rng.randrange(0, 40))
        else:  # the 64 KB name of finding 7
            yield tftp_rrq(b"a/" * rng.randint(100, 30000))


def http_junk(rng: random.Random) -> Iterator[bytes]:
    """Whole HTTP/1.1 requests (mutated valid ones, truncated ones, random bytes)."""
    sha = "0" * 64
    mac = ENROLLED.replace(":", "-")
    bases = [
        f"GET /boot/{mac}.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /artifacts/{sha}/kernel HTTP/1.1\r\nHost: x\r\nRange: bytes=-0\r\n\r\n",
        f"GET /boot/{ARMED.replace(':', '-')}.ipxe HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /ipxe/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    body = b'{"event": "booted", "token": "' + b"A" * 40 + b'"}'
    post = (f"POST /api/v1/hosts/{mac}/events HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    while True:
        base = post if rng.random() < 0.25 else rng.choice(bases).encode()
        r = rng.random()
        if r < 0.55:
            yield mutate(rng, base)
        elif r < 0.7:
            yield base[:rng.randrange(1, len(base))]  # truncated: the server waits, then we go
        elif r < 0.8:
            yield rng.randbytes(rng.randrange(1, 800))
        elif r < 0.9:
            rng_hdr = rng.choice(["bytes=-0", "bytes=0-", "bytes=5-2", "bytes=-", "bytes=a-b",
                                  "bytes=0-0,1-1", "bytes=99999999999999999999-"])
            yield (f"GET /artifacts/{sha}/kernel HTTP/1.1\r\nHost: x\r\nRange: {rng_hdr}"
                   "\r\n\r\n").encode()
        else:
            yield (b"GET /" + b"a/" * rng.randint(10, 4000) + b" HTTP/1.1\r\nHost: x\r\n"
                   + b"X: " + b"y" * rng.randint(0, 9000) + b"\r\n\r\n")


# -- senders (client namespace, bounded by count and time) --------------------------------------


@dataclass
class Sent:
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: int = 0  # send errors (ENOBUFS, refused connections, ...)


def blast_udp(lab: FuzzLab, port: int, gen: Iterator[bytes], count: int, seconds: float,
              rate: float = 0.0) -> Sent:
    """Send up to `count` datagrams for at most `seconds` (at most `rate` a second if > 0) to
    the server's `port`, from one socket in the client namespace; what comes back is drained."""

    def go() -> Sent:
        out = Sent()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setblocking(False)
            t0 = time.monotonic()
            end = t0 + seconds
            while out.packets < count:
                now = time.monotonic()
                if now >= end:
                    break
                if rate and out.packets > rate * (now - t0):
                    time.sleep(0.0005)
                    continue
                data = next(gen)
                try:
                    s.sendto(data, (SRV_IP, port))
                    out.bytes += len(data)
                except OSError:
                    out.errors += 1
                out.packets += 1
                if out.packets % 64 == 0:
                    with contextlib.suppress(OSError):
                        while True:
                            s.recv(70000)
            out.seconds = time.monotonic() - t0
        return out

    return in_netns(lab.cli, go)


def blast_http(lab: FuzzLab, gen: Iterator[bytes], count: int, seconds: float) -> Sent:
    """One connection per request, up to `count` in `seconds`: send it, read the answer (at most
    0.3 s), close."""

    def go() -> Sent:
        out = Sent()
        t0 = time.monotonic()
        while out.packets < count and time.monotonic() - t0 < seconds:
            data = next(gen)
            out.packets += 1
            try:
                with socket.create_connection((SRV_IP, HTTP_PORT), timeout=1) as s:
                    s.sendall(data)
                    out.bytes += len(data)
                    s.shutdown(socket.SHUT_WR)  # (the server answers, then sees the end)
                    s.settimeout(0.3)
                    with contextlib.suppress(OSError):
                        while s.recv(65536):
                            pass
            except OSError:
                out.errors += 1
        out.seconds = time.monotonic() - t0
        return out

    return in_netns(lab.cli, go)


def blast(lab: FuzzLab, protocol: str, rng: random.Random, packets: int, seconds: float
          ) -> list[Sent]:
    """Fuzz one protocol: DHCP (half to port 67, half to 4011), TFTP or HTTP junk, `packets`
    in `seconds`."""
    if protocol == "dhcp":
        return [blast_udp(lab, port, dhcp_junk(rng), packets // 2, seconds / 2)
                for port in (67, 4011)]
    if protocol == "tftp":
        return [blast_udp(lab, 69, tftp_junk(rng), packets, seconds)]
    return [blast_http(lab, http_junk(rng), packets, seconds)]


# -- valid clients ------------------------------------------------------------------------------


def dhcp_probe(lab: FuzzLab, wait: float = 2.0, mac: str = ENROLLED) -> bool:
    """An enrolled PXE client's DISCOVER (broadcast to 67): does its proxy offer arrive?"""

    def go() -> bool:
        xid = random.getrandbits(32)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # (no route)
            s.bind(("0.0.0.0", 68))
            s.sendto(dhcp_request(mac, xid), ("255.255.255.255", 67))
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                data = s.recv(4096)
                if len(data) > 240 and data[0] == 2 and data[4:8] == struct.pack("!I", xid):
                    return True
        return False

    return in_netns(lab.cli, go)


def dhcp_probes(lab: FuzzLab, n: int, wait: float = 2.0, mac: str = ENROLLED) -> int:
    """How many of `n` DISCOVERs of `mac` (each with its own xid, sent 10 ms apart) got their
    offer."""

    def go() -> int:
        xids = [random.getrandbits(32) for _ in range(n)]
        got: set[bytes] = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # (no route)
            s.bind(("0.0.0.0", 68))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            wanted = {struct.pack("!I", x) for x in xids}

            def read_until(end: float) -> None:
                # read while sending, as firmware does: the replies to the junk (broadcast to
                # port 68 as well) would otherwise fill the socket before ours are read
                while (left := end - time.monotonic()) > 0 and len(got) < n:
                    if not select.select([s], [], [], left)[0]:
                        return
                    data = s.recv(4096)
                    if len(data) > 240 and data[0] == 2 and data[4:8] in wanted:
                        got.add(data[4:8])

            for x in xids:
                s.sendto(dhcp_request(mac, x), ("255.255.255.255", 67))
                read_until(time.monotonic() + 0.01)
            read_until(time.monotonic() + wait)
        return len(got)

    return in_netns(lab.cli, go)


def tftp_probe(lab: FuzzLab, wait: float = 2.0) -> bool:
    """A lock-step RFC 1350 client (no options, like the oldest PXE ROMs) downloads the file
    whole; re-sends its RRQ once if the first block does not come."""

    def go() -> bool:
        want = (lab.tftp_root / TFTP_FILE).read_bytes()
        got = bytearray()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(wait)
            s.bind((CLI_IP, 0))
            rrq = tftp_rrq(TFTP_FILE.encode())
            s.sendto(rrq, (SRV_IP, 69))
            block, tid = 1, None
            while True:
                try:
                    data, src = s.recvfrom(1000)
                except TimeoutError:
                    if block == 1 and tid is None:
                        s.sendto(rrq, (SRV_IP, 69))  # as a PXE ROM does
                        tid = False
                        continue
                    return False
                if data[:4] != b"\x00\x03" + struct.pack("!H", block & 0xFFFF):
                    continue
                got += data[4:]
                s.sendto(struct.pack("!HH", 4, block & 0xFFFF), src)
                if len(data) < 516:
                    return bytes(got) == want
                block += 1

    return in_netns(lab.cli, go)


def http_probe(lab: FuzzLab) -> bool:
    """The enrolled host's iPXE script."""
    try:
        status, body = http_get(lab.cli, f"http://{SRV_IP}:{HTTP_PORT}/boot/"
                                         f"{ENROLLED.replace(':', '-')}.ipxe", timeout=3)
    except OSError:
        return False
    return status == 200 and body.startswith(b"#!ipxe\n")


PROBES: dict[str, Callable[[FuzzLab], bool]] = {
    "dhcp": dhcp_probe, "tftp": tftp_probe, "http": http_probe}


# -- unauthenticated requests (the DB-growth figure) ------------------------------------------


def unauthenticated(lab: FuzzLab, count: int, seconds: float) -> Sent:
    """Requests anyone on the LAN may send without a token, in turn: a `booted` report with a
    15 KB field, a `provisioned` report with a bad token, a script GET of the armed host, an
    identity URL with a made-up token. Over keep-alive connections, one at a time."""
    mac = ENROLLED.replace(":", "-")
    pad = "x" * 15000
    bodies = [
        ("POST", f"/api/v1/hosts/{mac}/events", f'{{"event": "booted", "detail": "{pad}"}}'),
        ("POST", f"/api/v1/hosts/{mac}/events", '{"event": "provisioned", "token": "AAAA"}'),
        ("GET", f"/boot/{ARMED.replace(':', '-')}.ipxe", ""),
        ("GET", "/identity/" + "A" * 60, ""),
    ]

    def go() -> Sent:
        import http.client

        out = Sent()
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(SRV_IP, HTTP_PORT, timeout=3)
        while out.packets < count and time.monotonic() - t0 < seconds:
            method, path, body = bodies[out.packets % len(bodies)]
            out.packets += 1
            try:
                conn.request(method, path, body=body or None,
                             headers={"Content-Type": "application/json"} if body else {})
                conn.getresponse().read()
                out.bytes += len(body)
            except (OSError, http.client.HTTPException):
                out.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(SRV_IP, HTTP_PORT, timeout=3)
        conn.close()
        out.seconds = time.monotonic() - t0
        return out

    return in_netns(lab.cli, go)


def ns_argv(lab: FuzzLab, *argv: str) -> list[str]:
    return netns_argv(lab.cli, argv)
