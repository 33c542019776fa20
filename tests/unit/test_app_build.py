"""Netbootd.build wires the config into the servers it makes (nothing started, nothing bound)."""

from __future__ import annotations

from pathlib import Path

from netbootd.app import Netbootd
from netbootd.config import Config
from netbootd.servers.tftp import TftpServer


def test_tftp_limits_come_from_the_config(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    root.mkdir()
    cfg = Config.model_validate({
        "state_dir": str(tmp_path / "state"), "advertise_address": "127.0.0.1",
        "dhcp": {"enabled": False}, "https": {"enabled": False},
        "tftp": {"root": str(root), "max_transfers": 3, "max_per_source": 2},
    })
    (tftp,) = [s for s in Netbootd.build(cfg).servers if isinstance(s, TftpServer)]
    assert (tftp.max_transfers, tftp.max_per_source) == (3, 2)
    default = Config.model_validate({"state_dir": str(tmp_path / "state2")}).tftp
    assert (default.max_transfers, default.max_per_source) == (256, 8)
