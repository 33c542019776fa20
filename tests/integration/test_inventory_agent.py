"""The inventory agent against this machine's real udev and sysfs (no fake): run as the
discovery image runs it, its document validates against the checked-in JSON Schema and the
pydantic models, and names what sysfs shows (every non-virtual NIC's MAC, every disk's size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from netbootd.inventory import schema


def test_agent_reads_this_machines_udev() -> None:
    out = subprocess.run([sys.executable, "-m", "netbootd.inventory.agent"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    doc = json.loads(out)
    jsonschema.validate(doc, json.loads(schema.SCHEMA_FILE.read_text()))
    inv = schema.parse(doc)
    net = Path("/sys/class/net")
    macs = {(p / "address").read_text().strip() for p in net.iterdir()
            if "/virtual/" not in str(p.resolve())}
    assert set(inv.macs()) == macs
    for d in inv.disks:
        assert d.size_bytes == int(Path(f"/sys/class/block/{d.name}/size").read_text()) * 512
    assert inv.cpu.threads >= 1 and inv.memory.total_bytes > 0
    assert inv.firmware.mode == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")
