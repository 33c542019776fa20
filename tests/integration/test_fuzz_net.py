"""Network fuzz smoke tests (issue #13): the real `netbootd serve` (proxyDHCP, TFTP, HTTP) in a
namespace of its own, fuzzed from a client namespace over a veth pair (testbed/fuzz.py), a few
seconds per protocol: mutated valid packets, truncations, random bytes and the issue's hostile
cases. Afterwards a valid client still gets its answer, the daemon is alive, and no traceback
in its log has a netbootd frame in it -- a fuzzed client that disconnects half-way through a
report's body included (aiohttp's own tracebacks for malformed requests are finding 12's,
counted by `make fuzz`, not here).

Needs root and `ip netns`; SKIPs otherwise (FAILs with NETBOOTD_REQUIRE_E2E=1). Namespaces are
`nbdfz-<pid>-<starttime>-<n>-{s,c}` (testbed.netns), removed afterwards even on failure; stale
ones of killed runs first. Longer runs: `make fuzz` (bench/fuzz.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from testbed import fuzz
from testbed.netns import Env, cleanup_stale, list_netns
from testbed.skips import netns_lab, require

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

PREFIX = "nbdfz"
PACKETS, SECONDS = 3000, 3.0  # per protocol (HTTP: a few hundred connections in that time)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.FuzzLab]:
    require(netns_lab(PREFIX))
    cleanup_stale(PREFIX)
    env = Env(PREFIX, tmp_path_factory.mktemp("fuzz-netns"), stop_timeout=10.0)
    lab = None
    try:
        lab = fuzz.start(env)
        yield lab
    finally:
        env.close()
    if lab is not None:
        leftovers = [n for n in (lab.srv, lab.cli) if n in list_netns()]
        assert not leftovers, f"namespaces not removed: {leftovers}"


def answered(lab: fuzz.FuzzLab, protocol: str, within: float = 10.0) -> bool:
    """The valid client's answer, allowing the daemon `within` seconds to drain what it got."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if fuzz.PROBES[protocol](lab):
            return True
    return False


@pytest.mark.parametrize("protocol", ["dhcp", "tftp", "http"])
def test_fuzzed_daemon_survives_and_still_answers(lab: fuzz.FuzzLab, protocol: str) -> None:
    rng = random.Random(f"{protocol}-13")
    before = sum(lab.tracebacks()[1:])
    sent = fuzz.blast(lab, protocol, rng, PACKETS, SECONDS)
    assert sum(s.packets for s in sent) >= 100, sent  # (the fuzzer itself worked)
    assert lab.alive, lab.serve.log_tail()
    assert answered(lab, protocol), f"no answer to a valid {protocol} client after the fuzz"
    for other in fuzz.PROBES:  # and the other protocols were not hurt
        assert answered(lab, other), f"no answer to a valid {other} client"
    ours = sum(lab.tracebacks()[1:])  # a client that hangs up mid-body included
    assert ours == before, f"{ours - before} traceback(s) from netbootd code:\n" \
                           f"{lab.serve.log_tail(60)}"
