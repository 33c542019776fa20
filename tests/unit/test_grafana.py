"""contrib/grafana/netbootd.json queries only metrics netbootd exports (servers/metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from netbootd.servers import metrics

DASH = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "netbootd.json"
GAUGES = {"netbootd_hosts", "netbootd_hosts_stale", "netbootd_reprovisions",
          "netbootd_artifact_store_bytes", "netbootd_build_seconds",
          "netbootd_identity_rsa_pending"}


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads(DASH.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"netbootd_[a-z_]+", e)}
    exported = {name + "_total" for _, name, _, _ in metrics.COUNTERS} | GAUGES
    assert used <= exported, used - exported
    assert len(dash["panels"]) >= 10 and len(used) >= 12
    src = Path(metrics.__file__).read_text()
    for g in GAUGES:  # the gauge names the test trusts are the ones the collector yields
        assert f'"{g}"' in src, g
