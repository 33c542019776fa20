"""Enroll N benchmark hosts fast, through netbootd's Store API (not N CLI calls).

    python -m bench.enroll --state-dir DIR --role ROLE --hosts N     # prints {"enroll_s": ...}

Run as its own process (not imported by the orchestrator) so it uses the same netbootd code as
the CLI calls around it, even while netbootd/ is being edited.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import mac_for


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.enroll")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--hosts", type=int, required=True)
    a = ap.parse_args(argv)
    from netbootd.model import MacAddress
    from netbootd.store import Store

    t = time.monotonic()
    store = Store(a.state_dir)
    try:
        for i in range(a.hosts):
            store.enroll(MacAddress.parse(mac_for(i)), a.role, hostname=f"node{i:05d}")
    finally:
        store.close()
    print(json.dumps({"enroll_s": round(time.monotonic() - t, 2), "hosts": a.hosts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
