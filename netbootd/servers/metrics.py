"""GET /metrics: Prometheus text format, made by prometheus-client from (a) what the servers
counted (netbootd/stats.py: DHCP requests/replies/drops, TFTP transfers/bytes/errors, boots,
identity deliveries/refusals; HTTP requests and bytes by route and status, counted here when a
response is prepared) and (b) what the state says at scrape time (hosts by state, stale hosts,
re-provisions, artifact store size, the current generations' build times, RSA keys pending).

On the HTTPS port only, for any valid API token (a read-only one is what Prometheus gets:
`authorization: {credentials_file: ...}` and `tls_config: {ca_file: ...}` in its scrape
config). Labels are fixed vocabularies and route templates, never a client's text.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from netbootd import policy, stats
from netbootd.model import HostState, TokenScope
from netbootd.roles.artifacts import Artifacts
from netbootd.servers.api_auth import authorize
from netbootd.servers.web import ARTIFACTS, STORE
from netbootd.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_WINDOWS = (("1d", 86400.0), ("7d", 7 * 86400.0), ("30d", 30 * 86400.0))

# (stats name, metric name, help, label names)
COUNTERS = (
    ("dhcp_requests", "netbootd_dhcp_requests", "PXE DHCP requests parsed", ("port", "arch")),
    ("dhcp_replies", "netbootd_dhcp_replies", "proxyDHCP replies sent", ("port", "arch")),
    ("tftp_transfers", "netbootd_tftp_transfers", "TFTP transfers ended", ("result",)),
    ("tftp_bytes", "netbootd_tftp_bytes", "bytes of TFTP transfers served", ()),
    ("tftp_errors", "netbootd_tftp_errors", "TFTP requests refused", ("reason",)),
    ("http_requests", "netbootd_http_requests", "HTTP(S) requests answered",
     ("route", "method", "status")),
    ("http_bytes", "netbootd_http_response_bytes", "HTTP(S) response bytes (Content-Length)",
     ("route",)),
    ("boots", "netbootd_boots", "boots: bound script or UKI fetches (a token minted)",
     ("kind",)),
    ("identity_delivered", "netbootd_identity_delivered", "identity bundles delivered", ()),
    ("identity_denied", "netbootd_identity_denied", "identity requests refused", ("reason",)),
)


# the proxyDHCP responder's own counts (DhcpServer.stats: datagrams read, answered, dropped by
# reason, and what the kernel dropped), set by app.build when DHCP runs: one source for the log
# summary, `make fuzz` and /metrics
DHCP_STATS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("dhcp_stats")


class StateCollector(Collector):
    def __init__(self, store: Store, artifacts: Artifacts,
                 dhcp: Callable[[], dict[str, Any]] | None = None) -> None:
        self.store, self.artifacts, self.dhcp = store, artifacts, dhcp

    def _dhcp(self) -> Iterator[Metric]:
        d = self.dhcp() if self.dhcp is not None else {}
        yield CounterMetricFamily("netbootd_dhcp_datagrams", "datagrams read on ports 67 and "
                                  "4011", value=float(d.get("received", 0)))
        fam = CounterMetricFamily("netbootd_dhcp_dropped", "DHCP datagrams not answered, by "
                                  "reason (in-kernel drops included)", labels=["reason"])
        dropped: Counter[str] = Counter(d.get("dropped", {}))
        dropped.update(d.get("kernel_dropped", {}))
        for reason, n in sorted(dropped.items()):
            fam.add_metric([reason], float(n))
        yield fam

    def collect(self) -> Iterator[Metric]:
        yield from self._dhcp()
        counts = stats.snapshot()
        for key, name, help_, labels in COUNTERS:
            fam = CounterMetricFamily(name, help_, labels=list(labels))
            for k, n in sorted(counts.items()):
                if k[0] == key and len(k) == len(labels) + 1:
                    fam.add_metric(list(k[1:]), float(n))
            if not labels and not any(k[0] == key for k in counts):
                fam.add_metric([], 0.0)
            yield fam
        now = time.time()
        store = self.store
        armings = store.provisions()
        hosts = store.hosts()
        by_state = dict.fromkeys((str(s) for s in HostState), 0)
        for h in hosts:
            by_state[str(policy.host_state(armings.get(h.mac), now))] += 1
        g = GaugeMetricFamily("netbootd_hosts", "enrolled hosts by state", labels=["state"])
        for s, n in by_state.items():
            g.add_metric([s], n)
        yield g
        g = GaugeMetricFamily("netbootd_hosts_stale", "hosts not booted within the window "
                              "(counted from enrollment if never)", labels=["window"])
        for label, secs in STALE_WINDOWS:
            g.add_metric([label], sum(1 for h in hosts
                                      if policy.stale(h.last_boot, h.created, now, secs)))
        yield g
        g = GaugeMetricFamily("netbootd_reprovisions", "pending re-provisions by state",
                              labels=["state"])
        for state in ("armed", "failed"):
            g.add_metric([state], sum(1 for p in armings.values() if str(p.state) == state))
        yield g
        size = 0
        for f in self.artifacts.files():
            try:
                size += f.stat().st_size
            except OSError:
                continue
        yield GaugeMetricFamily("netbootd_artifact_store_bytes", "bytes in the artifact store",
                                value=size)
        g = GaugeMetricFamily("netbootd_build_seconds", "build time of each role's current "
                              "generation (role build; imports have none)", labels=["role"])
        for r in store.roles():
            img = store.image(r.name)
            if img is not None and img.build is not None:
                g.add_metric([r.name], img.build.build_seconds)
        yield g
        yield GaugeMetricFamily("netbootd_identity_rsa_pending", "identities whose RSA host "
                                "key is not made yet (bulk enrollment)",
                                value=len(store.pending_rsa(100000)))


async def metrics(request: web.Request) -> web.Response:
    authorize(request, TokenScope.READ)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StateCollector(request.app[STORE], request.app[ARTIFACTS],
                                request.app.get(DHCP_STATS)))
    return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE,
                                                            "Cache-Control": "no-store"})


async def _count(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: one count per answered request, by route template and status."""
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "(none)"
    stats.inc("http_requests", route, request.method, str(response.status))
    if response.content_length:
        stats.inc("http_bytes", route, n=response.content_length)


def register(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.on_response_prepare.append(_count)
