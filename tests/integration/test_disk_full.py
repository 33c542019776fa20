"""A full disk under the state directory (finding 9 of issue #13: a failed COMMIT and then a failed
ROLLBACK escaped as a raw sqlite3.OperationalError -- HTTP 500 from aiohttp's default page, an
`enroll` traceback with exit 1). A real 16 MB tmpfs in a private mount namespace, filled to the
last block; the real CLI and daemon (disk_full_scenario.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.skips import unavailable
from tests.conftest import REPO, free_port


@pytest.fixture
def scenario(tmp_path: Path) -> dict:
    if shutil.which("unshare") is None or not Path("/proc/self/ns/mnt").exists():
        unavailable("unshare(1) and mount namespaces are needed")
    root = tmp_path / "small"
    root.mkdir()
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable,
         str(REPO / "tests" / "integration" / "disk_full_scenario.py"), str(root),
         str(free_port()), str(free_port())],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    if p.returncode != 0 and "mount" in p.stderr and "permission" in p.stderr.lower():
        unavailable(f"cannot mount a tmpfs here: {p.stderr.strip()[-200:]}")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_full_disk_is_a_clear_error_and_nothing_is_half_written(scenario: dict) -> None:
    s = scenario
    assert s["role"]["rc"] == 0 and s["enroll1"]["rc"] == 0 and s["script_before"] == 200
    assert s["filled"] == "No space left on device"
    for step in ("enroll_full", "enroll_identity_full"):
        r = s[step]
        assert r["rc"] == 2, (step, r)
        assert r["err"].startswith("netbootd: error: ") and "Traceback" not in r["err"], r
    assert "full" in s["enroll_full"]["err"] or "space" in s["enroll_full"]["err"]
    # the daemon answers with its own error script / JSON, and keeps serving
    status, body = s["script_full"]
    assert status in (200, 500), s["script_full"]
    if status == 500:
        assert "netbootd: server error" in body
    status, body = s["booted_full"]
    assert status == 500 and json.loads(body) == {"error": "server error"}, s["booted_full"]
    assert s["healthz_full"] == 200 and s["healthz_after"] == 200
    assert "Traceback" not in s["serve_log"] and "OperationalError" not in s["serve_log"]
    assert "cannot" in s["serve_log"]  # the store error is logged with what failed
    # space again: enroll works, and nothing of the failed steps is left half-written
    assert s["enroll_after"]["rc"] == 0, s["enroll_after"]
    hosts = {h["mac"] for h in json.loads(s["hosts_after"]["out"])}
    assert hosts == {"52:54:00:0d:15:01", "52:54:00:0d:15:02"}
    assert json.loads(s["keys_after"]["out"]) == []  # the failed identity left no row
