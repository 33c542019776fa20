"""The CLI's parser and the values it validates (issue #15): every option and subcommand has
help, global options work before and after the subcommand, one duration parser, MACs that
cannot name a machine and names spelled like MACs are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from netbootd import model
from netbootd.cli import parser
from netbootd.config import load
from netbootd.errors import ConfigError, InvalidInput
from netbootd.model import Host, MacAddress


def _walk(p: argparse.ArgumentParser, path: str):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            for name, child in a.choices.items():
                yield f"{path} {name}", "(subcommand)", helps.get(name)
                yield from _walk(child, f"{path} {name}")
        elif not isinstance(a, argparse._HelpAction | argparse._VersionAction):
            yield path, "/".join(a.option_strings) or a.dest, a.help


def test_every_option_and_subcommand_has_help() -> None:
    items = list(_walk(parser(), "netbootd"))
    assert len(items) > 150
    missing = [(path, what) for path, what, help_ in items if not help_]
    assert missing == []


@pytest.mark.parametrize("argv", [
    ["--state-dir", "/a", "-v", "hosts"], ["hosts", "--state-dir", "/a", "-v"],
    ["-v", "hosts", "--state-dir", "/a"], ["role", "list", "-v", "--state-dir", "/a"],
])
def test_global_options_anywhere(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    assert a.state_dir == Path("/a") and a.verbose is True


def test_global_option_before_is_not_reset_by_the_subparser() -> None:
    a = parser().parse_args(["--config", "/c.toml", "serve"])
    assert a.config == Path("/c.toml") and a.verbose is False


def test_nfs_sync_keeps_its_own_verbose() -> None:
    a = parser().parse_args(["nfs", "sync", "web", "--verbose"])
    assert a.verbose is True


@pytest.mark.parametrize(("text", "secs"), [("90s", 90), ("15m", 900), ("2h", 7200),
                                            ("7d", 604800), ("1w", 604800), ("3600", 3600),
                                            (" 1.5h ", 5400), (30, 30)])
def test_one_duration_parser(text: str | int, secs: float) -> None:
    assert model.duration(text) == secs


@pytest.mark.parametrize("text", ["", "h", "2x", "-1h", "1 hour", "0"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput):
        model.duration(text)


def test_config_durations(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[provision]\nttl = "2h"\n[identity]\ntoken_ttl = "10m"\n'
                 '[security]\nboot_token_ttl = "1d"\ndhcp_window = 300\n'
                 '[iscsi]\nreconcile_interval = "0"\ndestroy_guard = "12h"\n')
    c = load(f)
    assert (c.provision.ttl, c.identity.token_ttl, c.security.boot_token_ttl) == (7200, 600, 86400)
    assert (c.iscsi.reconcile_interval, c.iscsi.destroy_guard, c.security.dhcp_window) == \
        (0, 43200, 300)
    f.write_text('[provision]\nttl = "30s"\n')  # the bounds still apply
    with pytest.raises(ConfigError, match="provision.ttl"):
        load(f)


@pytest.mark.parametrize(("mac", "why"), [("00:00:00:00:00:00", "all-zero"),
                                          ("ff-ff-ff-ff-ff-ff", "broadcast"),
                                          ("01005e000001", "multicast"),
                                          ("3333.0000.0001", "multicast")])
def test_parse_host_refuses_group_and_zero(mac: str, why: str) -> None:
    MacAddress.parse(mac)  # still a MAC (a DHCP packet or a stored row may carry it)
    with pytest.raises(InvalidInput, match=why):
        MacAddress.parse_host(mac)


def test_parse_host_accepts_locally_administered_unicast() -> None:
    assert str(MacAddress.parse_host("02:4e:42:00:00:01")) == "02:4e:42:00:00:01"


@pytest.mark.parametrize("name", ["525400123456", "52-54-00-12-34-56", "deadbeefcafe"])
def test_hostname_like_a_mac(name: str) -> None:
    with pytest.raises(InvalidInput, match="spelled like the MAC"):
        model.hostname(name)
    with pytest.raises(InvalidInput, match="spelled like the MAC"):
        model.canon_name(name)
    assert model.hostname("deadbeefcafe1") == "deadbeefcafe1"  # 13 hex digits: no MAC


def test_a_host_is_named_one_way() -> None:
    mac = MacAddress.parse("52:54:00:12:34:56")
    assert Host(mac, "web").name == "52:54:00:12:34:56" == Host(mac, "web").label
    h = Host(mac, "web", hostname="web1")
    assert (h.name, h.label) == ("web1", "web1 (52:54:00:12:34:56)")


@pytest.mark.parametrize("text", ["7", "3600", "1.5"])
def test_a_unit_where_a_bare_number_is_ambiguous(text: str) -> None:
    assert model.duration(text) == float(text)  # config fields, --grace: seconds
    with pytest.raises(InvalidInput, match="not a duration"):
        model.duration(text, "--stale", unit=True)  # 7 days? 7 seconds? refused
    assert model.duration(text + "d", "--stale", unit=True) == float(text) * 86400


def test_subcommand_options_that_prefix_global_ones() -> None:
    """`tls rotate --ca` is tls rotate's own option, not an abbreviation of --ca-sha256."""
    a = parser().parse_args(["tls", "rotate", "--ca"])
    assert a.ca is True and a.ca_sha256 is None
    a = parser().parse_args(["--ca-sha256", "ab", "hosts"])
    assert a.ca_sha256 == "ab"
