"""Netbootd.build wires the config into the servers it makes (nothing started, nothing bound)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_without_a_distro_ipxe_tftp_serves_netbootds_build(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No tftp.root and no /usr/lib/ipxe: TFTP still runs, on an empty root under the state
    directory, with netbootd's iPXE build as its overlay (it used to be disabled)."""
    import netbootd.config as config_module

    monkeypatch.setattr(config_module, "DEBIAN_IPXE_DIR", tmp_path / "no-ipxe")
    cfg = Config.model_validate({
        "state_dir": str(tmp_path / "state"), "advertise_address": "127.0.0.1",
        "dhcp": {"enabled": False}, "https": {"enabled": False}})
    assert cfg.tftp_root is None
    (tftp,) = [s for s in Netbootd.build(cfg).servers if isinstance(s, TftpServer)]
    assert tftp.root == tmp_path / "state" / "ipxe" / "tftp-root" and tftp.root.is_dir()
    assert tftp.overlay is not None and tftp.overlay("netbootd-ipxe/ipxe.efi") is None
