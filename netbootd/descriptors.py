"""The descriptor budget, checked once at start: does RLIMIT_NOFILE fit the configured limits?

A systemd service gets a soft limit of 1024 descriptors (the hard limit is usually 524288). Past
the soft limit every accept(), socket() and open() fails with EMFILE: HTTP stops accepting and
TFTP cannot open a file -- every server at once. So `serve` raises the soft limit to what its
limits need (never past the hard limit, and no higher than needed: select()-based libraries
break on descriptors >= 1024), and when it is still short it says so in one line and lowers the
HTTP connection limit until the rest fits, so HTTP cannot take the descriptors TFTP and
proxyDHCP need.

What each part needs, at most:
  HTTP   2 per connection (the socket, and the file of an artifact being sent) + 68 (the
         listeners, and sockets accepted but not yet counted, or closed but not yet released)
  TFTP   3 per transfer slot (the connected socket, the stray one on its port, the file until
         it is mapped) + 4 (the listening socket, epoll, the timer, the wake-up pipe)
  DHCP   2 sockets (67, 4011)
  rest   RESERVE: the interpreter, SQLite (database, WAL, shm), logs, the event loop, ARP
         questions, tgtadm and other subprocesses
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass

PER_HTTP_CONNECTION = 2
HTTP_FIXED = 68  # the listening sockets, and sockets accepted but not yet counted or closed
PER_TFTP_TRANSFER = 3
TFTP_FIXED = 4
DHCP_SOCKETS = 2
RESERVE = 64
MIN_HTTP_CONNECTIONS = 16  # lowered no further: a server that cannot serve this few is broken


@dataclass(frozen=True)
class Budget:
    http_connections: int  # 0: no HTTP server
    tftp_transfers: int  # 0: no TFTP server
    dhcp: bool

    @property
    def others(self) -> int:
        """Everything but the HTTP connections."""
        tftp = PER_TFTP_TRANSFER * self.tftp_transfers + TFTP_FIXED if self.tftp_transfers else 0
        return RESERVE + HTTP_FIXED + tftp + (DHCP_SOCKETS if self.dhcp else 0)

    @property
    def needed(self) -> int:
        return self.others + PER_HTTP_CONNECTION * self.http_connections

    def http_fit(self, limit: int) -> int:
        """The most HTTP connections that fit in `limit` descriptors beside the rest (at least
        MIN_HTTP_CONNECTIONS, at most the configured number)."""
        room = (limit - self.others) // PER_HTTP_CONNECTION
        return max(MIN_HTTP_CONNECTIONS, min(self.http_connections, room))


@dataclass(frozen=True)
class Verdict:
    soft: int  # the soft limit now
    hard: int
    raised_from: int | None  # the soft limit before, if it was raised
    http_connections: int  # the HTTP connection limit to use
    warning: str | None  # one line for the log when the limit is still short


def check(budget: Budget,
          getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
          setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit) -> Verdict:
    """Raise the soft RLIMIT_NOFILE toward the hard one as far as `budget` needs; say what is
    left short (getrlimit/setrlimit are parameters for the tests)."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    need = budget.needed
    raised_from = None
    unlimited = hard == resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if unlimited else min(hard, need)
        if target > soft:
            try:
                setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                raised_from, soft = soft, target
            except (OSError, ValueError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return Verdict(soft, hard, raised_from, budget.http_connections, None)
    http = budget.http_fit(soft)
    hard_text = "unlimited" if unlimited else str(hard)
    warning = (
        f"descriptor limit {soft} (RLIMIT_NOFILE, hard limit {hard_text}) is below the {need} "
        f"the configured limits need ({budget.http_connections} HTTP connections x "
        f"{PER_HTTP_CONNECTION}, {budget.tftp_transfers} TFTP slots x {PER_TFTP_TRANSFER}, "
        f"proxyDHCP, {RESERVE} spare): HTTP connections capped at {http}; raise LimitNOFILE= "
        f"(systemd) or `ulimit -n`, or lower http.max_connections"
    )
    return Verdict(soft, hard, raised_from, http, warning)
