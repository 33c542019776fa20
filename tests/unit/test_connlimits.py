"""Who may hold an HTTP connection (servers/connlimits.ConnectionTable) and the descriptor budget
(descriptors.py): pure, no sockets."""

from __future__ import annotations

import resource

import pytest

from netbootd import descriptors
from netbootd.config import HttpConfig
from netbootd.servers.connlimits import ConnectionTable, HttpLimits


class Conn:
    """A connection as the table sees it: closing it is all it can do."""

    def __init__(self, table: ConnectionTable, peer: str) -> None:
        self.closed = False
        self.adm = table.admit(peer, self.close)

    def close(self) -> None:
        self.closed = True


def test_per_client_limit_evicts_that_clients_oldest_idle_then_refuses() -> None:
    t = ConnectionTable(max_total=100, per_client=2)
    a, b = Conn(t, "10.0.0.1"), Conn(t, "10.0.0.1")
    c = Conn(t, "10.0.0.1")
    assert a.closed and not b.closed and c.adm.evicted == "per-client limit"
    assert t.total == 2 and t.clients() == 1
    assert b.adm.slot and c.adm.slot
    t.busy(b.adm.slot)
    t.busy(c.adm.slot)
    d = Conn(t, "10.0.0.1")  # both busy: nothing to evict
    assert d.adm.slot is None and d.adm.refused == "per-client limit" and not d.closed
    assert Conn(t, "10.0.0.2").adm.slot is not None  # another client is not affected
    t.idle(c.adm.slot)
    e = Conn(t, "10.0.0.1")
    assert c.closed and not b.closed and e.adm.slot is not None


def test_global_limit_evicts_the_oldest_idle_of_anyone() -> None:
    t = ConnectionTable(max_total=3, per_client=3)
    x, y, z = (Conn(t, f"10.0.0.{i}") for i in (1, 2, 3))
    assert x.adm.slot and y.adm.slot and z.adm.slot
    t.busy(x.adm.slot)  # serving a request: never evicted
    t.busy(y.adm.slot)
    t.idle(y.adm.slot)  # idle again: now the newest idle one
    n = Conn(t, "10.0.0.9")
    assert z.closed and not x.closed and not y.closed and n.adm.evicted == "server full"
    assert n.adm.slot
    t.busy(n.adm.slot)
    m = Conn(t, "10.0.0.8")
    assert y.closed and m.adm.slot
    t.busy(m.adm.slot)
    full = Conn(t, "10.0.0.7")
    assert full.adm.refused == "server full" and t.total == 3


def test_release_is_idempotent_and_counts_return() -> None:
    t = ConnectionTable(max_total=2, per_client=2)
    a = Conn(t, "10.0.0.1")
    assert a.adm.slot
    t.release(a.adm.slot)
    t.release(a.adm.slot)
    t.busy(a.adm.slot)  # on a released slot: nothing
    t.idle(a.adm.slot)
    assert t.total == 0 and t.clients() == 0
    assert Conn(t, "10.0.0.1").adm.slot and Conn(t, "10.0.0.1").adm.slot and t.total == 2


def test_limits_from_config_and_the_cap() -> None:
    http = HttpConfig(max_connections=500, max_connections_per_client=600)
    assert HttpLimits.of(http).max_connections == 500
    assert HttpLimits.of(http).per_client == 500  # never more than the whole
    capped = HttpLimits.of(http, cap=60)
    assert (capped.max_connections, capped.per_client) == (60, 60)
    assert HttpLimits.of(HttpConfig()).idle_timeout == 15.0


class Rlimit:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, value: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = value


def check(budget: descriptors.Budget, rl: Rlimit) -> descriptors.Verdict:
    return descriptors.check(budget, rl.get, rl.set)


DEFAULT = descriptors.Budget(http_connections=1024, tftp_transfers=256, dhcp=True)


def test_systemd_soft_limit_is_raised_to_what_is_needed_only() -> None:
    rl = Rlimit(1024, 524288)  # what a systemd service gets
    v = check(DEFAULT, rl)
    assert v.raised_from == 1024 and rl.soft == DEFAULT.needed == v.soft
    assert DEFAULT.needed == 64 + 68 + 2 * 1024 + 3 * 256 + 4 + 2
    assert v.warning is None and v.http_connections == 1024
    again = check(DEFAULT, rl)  # enough already: left alone
    assert again.raised_from is None and rl.soft == DEFAULT.needed


def test_hard_limit_too_low_warns_once_and_caps_http() -> None:
    rl = Rlimit(1024, 1024)
    v = check(DEFAULT, rl)
    assert v.raised_from is None and rl.soft == 1024
    # what TFTP, proxyDHCP and the rest need stays theirs; HTTP gets what is left
    assert v.http_connections == (1024 - DEFAULT.others) // 2 == 59
    assert v.warning is not None and "\n" not in v.warning
    assert v.warning.startswith("descriptor limit 1024 (RLIMIT_NOFILE, hard limit 1024) is "
                                "below the 2954 the configured limits need")
    assert "HTTP connections capped at 59" in v.warning
    tiny = check(DEFAULT, Rlimit(200, 200))
    assert tiny.http_connections == descriptors.MIN_HTTP_CONNECTIONS


def test_raised_as_far_as_the_hard_limit_allows() -> None:
    rl = Rlimit(1024, 2048)
    v = check(DEFAULT, rl)
    assert (v.raised_from, v.soft) == (1024, 2048) and rl.soft == 2048
    assert v.http_connections == (2048 - DEFAULT.others) // 2 and v.warning is not None
    refused = check(DEFAULT, Rlimit(1024, 524288, refuse=True))
    assert refused.raised_from is None and refused.warning is not None


@pytest.mark.parametrize("soft", [resource.RLIM_INFINITY, 1 << 20])
def test_plenty_is_left_alone(soft: int) -> None:
    rl = Rlimit(soft, resource.RLIM_INFINITY)
    v = check(DEFAULT, rl)
    assert v.raised_from is None and v.warning is None and rl.soft == soft
