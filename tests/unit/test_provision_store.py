"""The store's side of re-provisioning: each decision acted on in the transaction that read its
inputs (counting flagged boots, tripping the guard, expiring, clearing on a good report,
auditing a bad one), cascades on unenroll, the sweeper, and migration 4 on an older database."""

from __future__ import annotations

import sqlite3
import time

import pytest

from netbootd import policy
from netbootd.app import ProvisionSweeper
from netbootd.errors import InvalidInput, NotFound
from netbootd.model import Artifact, FlagAction, MacAddress, ProvisionState
from netbootd.store import Store
from netbootd.store.migrations import MIGRATIONS

MAC = MacAddress.parse("52:54:00:12:34:56")
MAC2 = MacAddress.parse("52:54:00:12:34:57")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    s.add_generation("web", Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], "quiet", "import")
    s.enroll(MAC, "web", "web1")
    s.enroll(MAC2, "web", "web2", tags=["rack1"])
    yield s
    s.close()


def _serve(store, digest, now=None, mac=MAC):
    now = time.time() if now is None else now
    return store.serve_provision(mac, digest, digest[:12], "10.0.0.5", now,
                                 lambda a: policy.provision_flag(a, now))


def _report(store, digest, mac=MAC):
    return store.report_provisioned(mac, digest, digest[:12], "10.0.0.6", time.time(),
                                    policy.provision_report, {"marker": "x"})


def _kinds(store, mac=MAC):
    return [e.event for e in store.events(mac)]


def test_nothing_armed_costs_no_write(store):
    before = len(store.events())
    d = _serve(store, "d" * 64)
    assert d.action is FlagAction.NONE and len(store.events()) == before
    assert store.provision(MAC) is None


def test_arm_serve_report(store):
    (p,) = store.arm_provision([MAC], ttl=3600, max_boots=3)
    assert (
        p.state is ProvisionState.ARMED
        and p.boots == 0
        and p.expires == pytest.approx(p.armed + 3600)
    )
    d1 = _serve(store, "1" * 64)
    d2 = _serve(store, "2" * 64)  # the first boot never reported: the flag stays
    assert (d1.action, d1.number, d2.action, d2.number) == ("serve", 1, "serve", 2)
    p = store.provision(MAC)
    assert p.boots == 2 and p.last_boot == "2" * 64
    assert [b.number for b in store.provision_boots(MAC)] == [1, 2]
    # the first boot's token is stale now; the refusal is audited with that boot's id
    r = _report(store, "1" * 64)
    assert not r.ok and "stale token: flagged boot 1, the latest is boot 2" in r.reason
    denied = store.events(MAC)[-1]
    assert (denied.event, denied.boot, denied.source_ip) == ("denied", "1" * 12, "10.0.0.6")
    assert denied.detail["event"] == "provisioned" and "stale" in str(denied.detail["reason"])
    assert store.provision(MAC).boots == 2  # nothing changed
    r = _report(store, "2" * 64)
    assert r.ok and store.provision(MAC) is None and store.provision_boots(MAC) == []
    assert store.host(MAC).last_provisioned is not None
    ev = store.events(MAC)[-1]
    assert (ev.event, ev.boot, ev.detail) == (
        "provisioned",
        "2" * 12,
        {"marker": "x", "boot_number": 2},
    )
    # a replay of the good token after it cleared the flag
    r = _report(store, "2" * 64)
    assert not r.ok and "no re-provision pending" in r.reason
    assert _serve(store, "3" * 64).action is FlagAction.NONE
    assert _kinds(store) == [
        "provision-armed",
        "provision-offered",
        "provision-offered",
        "denied",
        "provisioned",
        "denied",
    ]
    offered = [e for e in store.events(MAC) if e.event == "provision-offered"]
    assert [(e.boot, e.detail["boot_number"], e.source_ip) for e in offered] == [
        ("1" * 12, 1, "10.0.0.5"),
        ("2" * 12, 2, "10.0.0.5"),
    ]


def test_loop_guard(store):
    store.arm_provision([MAC], ttl=3600, max_boots=2)
    assert [_serve(store, c * 64).action for c in "12"] == ["serve", "serve"]
    d = _serve(store, "3" * 64)
    assert d.action is FlagAction.TRIP
    p = store.provision(MAC)
    assert p.state is ProvisionState.FAILED and "loop guard: 2 boot(s)" in p.reason
    ev = store.events(MAC)[-1]
    assert (
        ev.event == "provision-failed" and ev.boot == "3" * 12 and ev.detail["by"] == "loop guard"
    )
    # failed stays failed, and quiet: no flag, no more events
    n = len(store.events(MAC))
    assert _serve(store, "4" * 64).action is FlagAction.NONE and len(store.events(MAC)) == n
    assert not _report(store, "2" * 64).ok  # even the last flagged boot: the guard tripped
    # re-arming starts the count again; its old boots' tokens are stale
    store.arm_provision([MAC], ttl=3600, max_boots=2)
    assert store.provision(MAC).state is ProvisionState.ARMED and store.provision(MAC).boots == 0
    assert "replaces" in store.events(MAC)[-1].detail
    assert not _report(store, "2" * 64).ok
    assert _serve(store, "5" * 64).number == 1 and _report(store, "5" * 64).ok


def test_ttl_expiry_at_serve_time(store):
    now = time.time()
    store.arm_provision([MAC], ttl=60, max_boots=3)
    assert _serve(store, "1" * 64, now).action is FlagAction.SERVE
    d = _serve(store, "2" * 64, now + 61)
    assert d.action is FlagAction.EXPIRE and store.provision(MAC) is None
    ev = store.events(MAC)[-1]
    assert ev.event == "provision-expired" and ev.boot == "2" * 12 and ev.detail["boots"] == 1


def test_sweeper_expires_without_a_boot(store, monkeypatch):
    store.arm_provision([MAC], ttl=60, max_boots=3)
    store.arm_provision([MAC2], ttl=3600, max_boots=3)
    sweeper = ProvisionSweeper(store)
    sweeper.sweep()
    assert store.provision(MAC) is not None
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 61)
    sweeper.sweep()
    assert store.provision(MAC) is None and store.provision(MAC2) is not None
    ev = store.events(MAC)[-1]
    assert ev.event == "provision-expired" and ev.source_ip is None and ev.boot is None
    n = len(store.events())
    sweeper.sweep()
    assert len(store.events()) == n  # once


def test_cancel(store):
    store.arm_provision([MAC, MAC2], ttl=3600, max_boots=3)
    _serve(store, "1" * 64)
    gone = store.cancel_provision([MAC])
    assert [(p.mac, p.boots) for p in gone] == [(MAC, 1)]
    assert store.provision(MAC) is None and store.provision(MAC2) is not None
    assert store.events(MAC)[-1].event == "provision-cancelled"
    assert store.cancel_provision([MAC]) == []
    assert _serve(store, "2" * 64).action is FlagAction.NONE
    assert not _report(store, "1" * 64).ok


def test_arm_is_all_or_nothing(store):
    with pytest.raises(NotFound):
        store.arm_provision([MAC, MacAddress.parse("52:54:00:00:00:99")], ttl=60, max_boots=3)
    assert store.provisions() == {}
    with pytest.raises(InvalidInput):
        store.arm_provision([MAC], ttl=0, max_boots=3)


def test_unenroll_forgets_the_arming(store):
    store.arm_provision([MAC], ttl=3600, max_boots=3)
    _serve(store, "1" * 64)
    store.unenroll(MAC)
    assert store.provision(MAC) is None and store.provision_boots(MAC) == []


def test_role_flag(store):
    assert store.role("web").provision_flag is None
    assert (
        store.set_provision_flag("web", "homelab.provision_disks=true").provision_flag
        == "homelab.provision_disks=true"
    )
    assert store.roles()[0].provision_flag == "homelab.provision_disks=true"
    assert store.set_provision_flag("web", None).provision_flag is None
    with pytest.raises(NotFound):
        store.set_provision_flag("nope", "x")


def test_migration_4_on_a_version_3_database(tmp_path):
    """An existing database (schema 3, with hosts, events and tokens) gains the columns and
    tables, and keeps its rows."""
    path = tmp_path / "netbootd.sqlite3"
    db = sqlite3.connect(path)
    for n, script in enumerate(MIGRATIONS[:3], start=1):
        for stmt in script:
            db.execute(stmt)
        db.execute(f"PRAGMA user_version={n}")
    db.execute("INSERT INTO artifacts VALUES (?, 1, 0)", ("a" * 64,))
    db.execute("INSERT INTO roles VALUES ('web', 1, 0)")
    db.execute(
        "INSERT INTO generations(role, number, kernel, cmdline, source, created)"
        " VALUES ('web', 1, ?, '', 'import', 0)",
        ("a" * 64,),
    )
    db.execute(
        "INSERT INTO hosts(mac, role, hostname, created, last_boot) VALUES"
        " (?, 'web', 'web1', 1, 2)",
        (str(MAC),),
    )
    db.execute(
        "INSERT INTO events(mac, event, time, detail) VALUES (?, 'booted', 2, '{}')", (str(MAC),)
    )
    db.commit()
    db.close()
    s = Store(tmp_path)
    assert s.schema_version == len(MIGRATIONS) >= 4
    h = s.host(MAC)
    assert h.last_boot == 2 and h.last_provisioned is None
    (ev,) = s.events(MAC)
    assert ev.event == "booted" and ev.boot is None
    assert s.role("web").provision_flag is None and s.provisions() == {}
