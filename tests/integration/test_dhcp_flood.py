"""Valid clients during a DHCP junk flood (issue #13, finding 14: at 21,000 packets/s only 49%
of valid enrolled clients were answered). CI-sized: a few seconds of bench/dhcpflood.py's junk
mix from a client namespace at the real DhcpServer in another, while enrolled clients ask.

Also the kernel filter (servers/bpfilter.py) on its own, on loopback: enrolled MACs pass, the
others up to a budget. Root only: skipped with
the reason otherwise, failed under NETBOOTD_REQUIRE_E2E=1. No speed figures are asserted here
beyond "valid clients are answered" (the benchmark measures: `python -m bench --only flood`).
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.common import mac_for
from bench.dhcpflood import Flood
from netbootd.servers.bpfilter import KernelFilter
from testbed import REPO
from testbed.netns import Env, cleanup_stale, in_netns, veth
from testbed.procs import Proc
from testbed.skips import netns_lab, not_root, require, unavailable

HELPER = Path(__file__).resolve().parent / "dhcp_server_helper.py"
PREFIX = "nbdfl"
NET = "10.213.11"
HOSTS = 200


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, str, str]]:
    require(netns_lab(PREFIX))
    cleanup_stale(PREFIX)
    env = Env(PREFIX, tmp_path_factory.mktemp("dhcp-flood"), stop_timeout=5.0)
    try:
        srv, cli = env.netns("s"), env.netns("c")
        veth(srv, cli, f"{NET}.1/24", f"{NET}.2/24")
        yield env, srv, cli
    finally:
        env.close()


@pytest.fixture
def server(lab: tuple[Env, str, str], tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    env, srv, _cli = lab
    started: list[Proc] = []

    def start(bpf: bool) -> Proc:
        argv = [sys.executable, str(HELPER), "--state", str(tmp_path / f"state{len(started)}"),
                "--interface", "eth0", "--log-level", "INFO"]
        for i in range(HOSTS):
            argv += ["--enroll", mac_for(i)]
        extra = {} if bpf else {"NETBOOTD_DHCP_BPF": "0"}
        proc = env.spawn(f"dhcp-flood-{tmp_path.name}-{len(started)}", argv, ns=srv,
                         stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO), **extra}, cwd=REPO)
        started.append(proc)
        out = proc.popen.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], 30)
        line = out.readline().decode() if ready else ""
        if not line.startswith("READY"):
            proc.stop(5)
            raise AssertionError(f"DhcpServer did not start: {line!r}\n{proc.log_tail(30)}")
        return proc

    try:
        yield start
    finally:
        for p in started:
            env.stop(p)


def _flood(cli: str, rate: float, valid: float, seconds: float) -> dict[str, object]:
    return in_netns(cli, lambda: Flood("eth0", HOSTS, seed=13).run(rate, valid, seconds))


def _summary(log: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(r"proxyDHCP dropped \d+ datagrams: ([^\n(]*)", log):
        for part in m.group(1).split(","):
            reason, _, n = part.strip().rpartition(" ")
            out[reason] = out.get(reason, 0) + int(n)
    return out


@pytest.mark.parametrize("bpf", [True, False], ids=["kernel-filter", "user-space-only"])
def test_valid_clients_are_answered_during_a_junk_flood(
    lab: tuple[Env, str, str], server: Callable[..., Proc], bpf: bool
) -> None:
    _env, _srv, cli = lab
    if bpf and KernelFilter.create()[0] is None:
        unavailable(f"no eBPF here: {KernelFilter.create()[1]}")
    proc = server(bpf)
    # junk datagrams/s: the 20,000 (main before the pre-filter and the kernel filter,
    # measured on this test: 59% and 62% of valid clients answered, 23,000-25,000 kernel drops);
    # the user-space path alone at half of it
    rate = 20_000 if bpf else 10_000
    r = _flood(cli, rate, 200, 3.0)
    proc.stop(5)
    assert proc.log_path is not None
    log = proc.log_path.read_text()
    assert r["bad"] == 0
    assert float(r["achieved_rate"]) > 0.8 * rate, r  # type: ignore[arg-type]
    assert float(r["answer_rate"]) >= 0.99, (r, log[-2000:])  # type: ignore[arg-type]
    # no line per dropped datagram: one per answer, the summary, the start and the flood switch
    lines = log.splitlines()
    assert len(lines) <= int(r["valid_answered"]) + 40, lines[-20:]  # type: ignore[call-overload]
    dropped = _summary(log)
    assert dropped.get("unknown-mac", 0) + dropped.get("unknown-mac-in-kernel", 0) > rate
    for reason in ("not-bootrequest", "truncated", "no-dhcp-cookie", "not-pxe"):
        assert dropped.get(reason, 0) > 0, (reason, dropped)
    if bpf:
        assert dropped.get("unknown-mac-in-kernel", 0) > rate, dropped
        assert "the kernel drops the rest" in log
    else:
        assert "kernel pre-filter off" in log
    assert "Traceback" not in log


def test_the_kernel_filter_passes_enrolled_macs_and_a_budget_of_the_others() -> None:
    require(not_root("eBPF socket filters"))
    kf, why = KernelFilter.create(per_second=100)  # 10 per 100 ms window
    if kf is None:
        unavailable(f"no eBPF here: {why}")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: nothing lost to a queue
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        kf.attach(rx)
        known, gone = bytes.fromhex("024e42000001"), bytes.fromhex("024e42000002")
        kf.sync(frozenset({known, gone}))
        kf.sync(frozenset({known}))  # one unenrolled again

        def received() -> list[bytes]:
            time.sleep(0.05)
            out = []
            while True:
                try:
                    out.append(rx.recv(4096))
                except BlockingIOError:
                    return out

        # a burst of unknown MACs (and the one removed): ~a budget of 10 per window passes
        t = time.monotonic()
        for i in range(2000):
            mac = gone if i == 0 else bytes((10, 0, 0, 0, i >> 8, i & 255))
            tx.sendto(bytes(28) + mac + bytes(300), rx.getsockname())
        windows = (time.monotonic() - t) / 0.1 + 2
        got = received()
        assert 10 <= len(got) <= 10 * windows, (len(got), windows)
        assert kf.dropped() == 2000 - len(got)
        # enrolled MACs always pass, and so does a datagram too short for a chaddr
        for _ in range(500):
            tx.sendto(bytes(28) + known + bytes(300), rx.getsockname())
        tx.sendto(b"short", rx.getsockname())
        assert len(received()) == 501
        time.sleep(0.15)  # a new window: the budget again
        for i in range(5):
            tx.sendto(bytes(28) + bytes((10, 1, 0, 0, 0, i)) + bytes(300), rx.getsockname())
        assert len(received()) == 5
    finally:
        rx.close()
        tx.close()
        kf.close()
