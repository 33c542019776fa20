"""contrib/grafana/netbootd.json queries only metrics netbootd exports: the names are what the
/metrics collector (servers/metrics.py) yields on an empty state, not a list kept beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from netbootd.roles.artifacts import Artifacts
from netbootd.servers.metrics import StateCollector
from netbootd.store import Store

DASH = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "netbootd.json"


def test_dashboard_uses_only_exported_metrics(tmp_path: Path) -> None:
    state = tmp_path / "state"
    collector = StateCollector(Store(state), Artifacts(state), lambda: {})
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for f in collector.collect()}
    assert {"netbootd_hosts", "netbootd_dhcp_dropped_total",
            "netbootd_http_requests_total"} <= exported
    dash = json.loads(DASH.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"netbootd_[a-z_]+", e)}
    assert used <= exported, used - exported
    assert len(dash["panels"]) >= 10 and len(used) >= 12
