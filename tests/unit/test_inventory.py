"""The inventory document (schema v1, its checked-in JSON Schema), the discovery policy
(answer, report verdicts, rules, hostname templates), the discovery store (cap, expiry,
history) and the NixOS fragment (parsed by the real nix-instantiate)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from netbootd import policy, tokens
from netbootd.errors import InvalidInput
from netbootd.inventory import nixhw, schema
from netbootd.inventory.records import DiscoveryRule
from netbootd.model import Arch, Artifact, BootClient, BootFileNames, Host, MacAddress, Urls
from netbootd.store import Store

MAC = MacAddress.parse("52:54:00:de:00:01")
SECRET = b"s" * 32
DOC: dict = {
    "schema": "netbootd-inventory/1", "agent": "test", "kernel": "6.1.0",
    "system": {"vendor": "QEMU", "product": "Standard PC (i440FX + PIIX, 1996)",
               "serial": "SYS-0001", "uuid": "u"},
    "firmware": {"mode": "bios", "secure_boot": "disabled"},
    "tpm": {"present": False},
    "cpu": {"model": "QEMU Virtual CPU", "arch": "x86_64", "cores": 2, "threads": 2},
    "memory": {"total_bytes": 512 << 20},
    "disks": [{"name": "vda", "serial": "NBD-DISK-A", "size_bytes": 64 << 20,
               "driver": "virtio_blk", "transport": "virtio", "by_id": ["virtio-NBD-DISK-A"]},
              {"name": "sda", "serial": "NBD-DISK-B", "size_bytes": 32 << 20,
               "driver": "virtio_scsi", "transport": "scsi",
               "by_id": ["scsi-0QEMU_QEMU_HARDDISK_NBD-DISK-B"]}],
    "nics": [{"name": "eth0", "mac": str(MAC), "driver": "virtio_net",
              "name_path": "enp0s3"},
             {"name": "eth1", "mac": "52:54:00:de:00:02", "driver": "e1000",
              "name_path": "enp0s4"}],
    "pci": [{"slot": "0000:00:03.0", "vendor_id": "0x1af4", "device_id": "0x1000",
             "class_id": "0x020000", "driver": "virtio-pci"}],
}


def inv(**changes: object) -> schema.Inventory:
    d = copy.deepcopy(DOC)
    d.update(changes)
    return schema.parse(d)


def test_checked_in_json_schema_is_the_models() -> None:
    assert json.loads(schema.SCHEMA_FILE.read_text()) == schema.json_schema()


def test_document_validates_against_the_json_schema_and_round_trips() -> None:
    jsonschema.validate(DOC, json.loads(schema.SCHEMA_FILE.read_text()))
    i = inv()
    assert schema.load(i.canonical()) == i
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**DOC, "schema": "netbootd-inventory/2"},
                            json.loads(schema.SCHEMA_FILE.read_text()))


def test_hostile_strings_are_cleaned_and_bounded() -> None:
    d = copy.deepcopy(DOC)
    d["system"]["serial"] = "\x1b[2J" + "A" * 5000
    i = schema.parse(d)
    assert i.system.serial is not None and "\x1b" not in i.system.serial
    assert len(i.system.serial) <= schema.MAX_TEXT + 3
    with pytest.raises(InvalidInput):
        schema.parse({**DOC, "disks": [DOC["disks"][0]] * 300})
    with pytest.raises(InvalidInput):
        schema.parse({**DOC, "extra": 1})


def test_changes_name_a_replaced_disk() -> None:
    old = inv()
    d = copy.deepcopy(DOC)
    d["disks"][1]["serial"] = "NBD-DISK-C"
    lines = schema.changes(old, schema.parse(d))
    assert lines == ["disk removed: sda serial NBD-DISK-B (33554432 bytes)",
                     "disk added: sda serial NBD-DISK-C (33554432 bytes)"]
    assert schema.changes(old, inv()) == []


# -- policy -----------------------------------------------------------------------------------

FILES = BootFileNames("undionly.kpxe", "ipxe.efi", None)
URLS = Urls("http://10.0.0.1")


def test_unknown_mac_is_silent_unless_discover() -> None:
    client = BootClient(MAC, Arch.BIOS, True)
    from ipaddress import IPv4Address
    srv = IPv4Address("10.0.0.1")
    assert policy.dhcp_boot(None, client, srv, URLS, FILES) is None
    boot = policy.dhcp_boot(None, client, srv, URLS, FILES, discover=True)
    assert boot is not None and boot.filename == URLS.script(MAC)
    raw = policy.dhcp_boot(None, BootClient(MAC, Arch.BIOS, False), srv, URLS, FILES,
                           discover=True)
    assert raw is not None and raw.filename == "undionly.kpxe"


def test_discovery_plan_carries_report_url_token_and_action() -> None:
    from netbootd.model import Image
    image = Image("discovery", 1, Artifact("a" * 64, 1), (Artifact("b" * 64, 1),),
                  "console=ttyS0 netbootd.discovery=http://evil/", 0.0)
    plan = policy.discovery_plan(MAC, image, URLS, "http://10.0.0.1/api/v1/discovery", "TOK",
                                 "poweroff")
    words = plan.cmdline.split()
    assert "netbootd.discovery=http://10.0.0.1/api/v1/discovery" in words
    assert "netbootd.discovery=http://evil/" not in words
    assert "netbootd.boot=TOK" in words and "netbootd.discovery.action=poweroff" in words


def test_discovery_report_verdicts() -> None:
    now = 1_000_000.0
    good = tokens.parse_boot(SECRET, tokens.mint_boot(SECRET, MAC, "10.0.0.5", now, b"n" * 12))
    v = policy.discovery_report
    assert not v(None, "10.0.0.5", now, 600).ok
    assert not v(tokens.parse_boot(SECRET, "garbage"), "10.0.0.5", now, 600).ok
    forged = tokens.parse_boot(b"x" * 32, tokens.mint_boot(b"x" * 32, MAC, "10.0.0.5", now,
                                                           b"n" * 12))
    assert forged.status is tokens.TokenStatus.VALID  # under its own key ...
    assert not v(tokens.parse_boot(SECRET, tokens.mint_boot(b"x" * 32, MAC, "10.0.0.5", now,
                                                            b"n" * 12)), "10.0.0.5", now, 600).ok
    assert not v(good, "10.0.0.6", now, 600).ok  # another address
    assert not v(good, "10.0.0.5", now + 601, 600).ok  # expired
    assert v(good, "10.0.0.5", now, 600).ok
    assert not v(good, "10.0.0.5", now, 600, ["52:54:00:00:00:09"]).ok  # another machine
    assert v(good, "10.0.0.5", now, 600, inv().macs()).ok


def rule(i: int, **match: str | int) -> DiscoveryRule:
    return DiscoveryRule(i, f"r{i}", dict(match), "web", "node-{serial}")


def test_discovery_rules_match_every_given_field() -> None:
    i = inv()
    assert policy.discovery_rule([rule(1, disk_serial="NBD-DISK-*")], MAC, i) is not None
    assert policy.discovery_rule([rule(1, disk_serial="OTHER*")], MAC, i) is None
    assert policy.discovery_rule([rule(1, serial="SYS-*", nics=2)], MAC, i) is not None
    assert policy.discovery_rule([rule(1, serial="SYS-*", nics=3)], MAC, i) is None
    assert policy.discovery_rule([rule(1, mac_prefix="52:54:00:de")], MAC, i) is not None
    assert policy.discovery_rule([rule(1, vendor="Dell*")], MAC, i) is None
    assert policy.discovery_rule([rule(1)], MAC, i) is None  # no field: nothing
    assert policy.discovery_rule([rule(1, bogus="x")], MAC, i) is None
    both = [rule(2, vendor="QEMU"), rule(1, product="Standard*")]
    found = policy.discovery_rule(both, MAC, i)
    assert found is not None and found.id == 1


def test_rule_hostname_template_is_sanitised() -> None:
    d = copy.deepcopy(DOC)
    d["system"]["serial"] = "AB/12 ${x};rm"
    name = policy.rule_hostname("node-{serial}-{n}", MAC, schema.parse(d), 3)
    assert name == "node-ab-12-x-rm-3"
    assert policy.rule_hostname("m-{mac_hex}", MAC, inv(), 1) == "m-525400de0001"
    assert policy.rule_hostname(None, MAC, inv(), 1) is None


# -- store ------------------------------------------------------------------------------------


def test_discovered_records_are_capped_and_expire(tmp_path: Path) -> None:
    store = Store(tmp_path)
    text = inv().canonical()
    macs = [MacAddress(bytes([2, 0, 0, 0, 0, n])) for n in range(5)]
    assert [store.record_discovery(m, "10.0.0.9", None, text, 100.0, 3, 1000)
            for m in macs] == ["new", "new", "new", "full", "full"]
    assert store.record_discovery(macs[0], "10.0.0.8", "b1", text, 200.0, 3, 1000) == "updated"
    assert len(store.discovered()) == 3
    # a later report: the ones not seen for max_age are gone first, making room
    assert store.record_discovery(macs[3], None, None, text, 1150.0, 3, 1000) == "new"
    assert sorted(str(d.mac) for d in store.discovered()) == sorted(map(str, [macs[0], macs[3]]))
    assert store.expire_discovered(5000.0, 1000) == 2
    assert store.discovered() == []


def test_inventory_history_keeps_changes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a, b = inv(), inv(kernel="6.2")
    assert store.record_inventory(MAC, a.canonical(), a.digest(), ["first inventory"], "b1",
                                  "10.0.0.5", 1.0, keep=2)
    assert not store.record_inventory(MAC, a.canonical(), a.digest(), [], "b2", None, 2.0)
    assert store.record_inventory(MAC, b.canonical(), b.digest(), ["kernel"], "b3", None, 3.0,
                                  keep=2)
    hist = store.inventory_history(MAC)
    assert [h.changes for h in hist] == [("kernel",), ("first inventory",)]
    assert hist[1].last_reported == 2.0
    c = inv(kernel="6.3")
    store.record_inventory(MAC, c.canonical(), c.digest(), ["k2"], None, None, 4.0, keep=2)
    assert len(store.inventory_history(MAC)) == 2
    assert [e.event for e in store.events(MAC)] == ["inventory-changed", "inventory-changed"]


def test_enrollment_adopts_the_discovery(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.record_discovery(MAC, "10.0.0.9", "b1", inv().canonical(), 10.0, 10, 1000)
    assert store.adopt_discovery(MAC, 20.0, ["first"])
    assert store.discovered() == [] and not store.adopt_discovery(MAC, 30.0, [])
    rec = store.inventory(MAC)
    assert rec is not None and schema.load(rec.inventory) == inv()


# -- NixOS fragment ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_nix_fragment_parses_and_names_disks_and_drivers(tmp_path: Path) -> None:
    d = copy.deepcopy(DOC)
    d["disks"][0]["serial"] = 'x"${builtins.abort "no"}\\'
    text = nixhw.fragment(schema.parse(d), "web1", "deadbeef")
    f = tmp_path / "hw.nix"
    f.write_text(text)
    subprocess.run(["nix-instantiate", "--parse", str(f)], check=True, capture_output=True)
    assert '"/dev/disk/by-id/virtio-NBD-DISK-A"' in text
    assert '"virtio_blk"' in text and '"virtio_net"' in text and '"virtio_scsi"' in text
    assert 'networking.hostId = "deadbeef";' in text
    # evaluated: the hostile serial is a string, not an abort
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                          f"((import {f}) {{ lib = {{ mkDefault = x: x; }}; }})"
                          "._module.args.netbootdHardware.disks.vda.serial"],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert out == json.dumps('x"${builtins.abort "no"}\\')


def test_host_view_is_a_host() -> None:
    from netbootd.codec.ipxe import HostContext
    h = HostContext(Host(MAC, "web", "web1"), {"disks": []})
    assert h.name == "web1" and h.inventory == {"disks": []}


def test_scsi_serial_from_vpd_page_80() -> None:
    """The discovery image's udev gave a virtio-scsi disk no ID_SERIAL (scsi_id did not run
    there): the agent reads VPD page 0x80 itself. Bytes as QEMU's scsi-hd,serial=NBD-DISK-B
    answers them (read from /sys/block/sda/device/vpd_pg80 in the image)."""
    from netbootd.inventory import agent

    assert agent.vpd_serial(b"\x00\x80\x00\x0aNBD-DISK-B") == "NBD-DISK-B"
    assert agent.vpd_serial(b"\x00\x80\x00\x0c  SER-1 \x00\x00\x00") == "SER-1"  # padded
    assert agent.vpd_serial(b"\x00\x80\x00\x04ABCDEFGH") == "ABCD"  # the length is obeyed
    assert agent.vpd_serial(b"\x00\x83\x00\x04ABCD") is None  # another page
    assert agent.vpd_serial(b"\x00\x80\x00\x04    ") is None  # blank: no serial
    assert agent.vpd_serial(b"\x00\x80") is None
    assert agent.vpd_serial(None) is None


def test_housekeeping_expires_discoveries_without_another_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's periodic housekeeping (app.Housekeeping.tick) forgets a never-enrolled discovery
    once it is older than discovery.expire, though no other report ever arrives; a recent one
    stays."""
    import asyncio
    import time

    from netbootd.app import Housekeeping
    from netbootd.config import Config
    from netbootd.leases import Leases
    from netbootd.servers.web import Guard

    store = Store(tmp_path)
    cfg = Config(state_dir=tmp_path, discovery={"expire": 3600})
    hk = Housekeeping(cfg, store, Guard(Leases(cfg.security.dhcp_window)))
    now = 1_000_000.0
    old, fresh = MacAddress.parse("52:54:00:de:00:0a"), MacAddress.parse("52:54:00:de:00:0b")
    text = inv().canonical()
    assert store.record_discovery(old, "10.0.0.9", None, text, now - 3601, 10, 3600) == "new"
    assert store.record_discovery(fresh, "10.0.0.8", None, text, now - 3599, 10, 3600) == "new"
    monkeypatch.setattr(time, "time", lambda: now)
    asyncio.run(hk.tick())
    assert [str(d.mac) for d in store.discovered()] == [str(fresh)]
    asyncio.run(hk.tick())  # nothing more to do: nothing else goes
    assert [str(d.mac) for d in store.discovered()] == [str(fresh)]
    monkeypatch.setattr(time, "time", lambda: now + 2)
    asyncio.run(hk.tick())
    assert store.discovered() == []
    assert store.expire_discovered(now + 2, 3600) == 0
    store.close()
