"""lookup.KnownMacs: the DHCP adapter's cache of enrolled MACs and host rows, read once per
batch of datagrams and re-read when the database changes (the set at most once a second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd.errors import StoreError
from netbootd.lookup import KnownMacs
from netbootd.model import Artifact, MacAddress
from netbootd.store import Store

A = MacAddress.parse("52:54:00:00:00:0a")
B = MacAddress.parse("52:54:00:00:00:0b")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    s.add_generation("r", Artifact("a" * 64, 1), [Artifact("b" * 64, 1)], "", "import")
    s.enroll(A, "r")
    return s


def test_refresh_reads_the_set_and_forgets_hosts_when_the_database_changes(store: Store) -> None:
    known = KnownMacs(store, reload_interval=1.0)
    assert known.refresh(100.0) == {A.packed}
    assert known.host(A) is not None and known.host(B) is None
    other = Store(store.path.parent)  # the CLI: another connection
    other.enroll(B, "r")
    # the set is re-read at most once per interval; the host rows at once
    assert known.refresh(100.5) == {A.packed}
    assert known.host(B) is not None
    assert known.refresh(101.0) == {A.packed, B.packed}
    other.unenroll(A)
    assert known.refresh(101.1) == {A.packed, B.packed}
    assert known.host(A) is None and A not in known
    assert known.refresh(102.2) == {B.packed}
    other.close()


def test_host_rows_are_remembered_only_while_nothing_changes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = KnownMacs(store)
    calls = []
    real = store.host
    monkeypatch.setattr(store, "host", lambda mac: calls.append(mac) or real(mac))
    known.host(A)
    known.host(A)
    assert len(calls) == 2  # before the first refresh: nothing remembered
    known.refresh(0.0)
    known.host(A)
    known.host(A)
    known.host(B)
    assert len(calls) == 4
    store.enroll(B, "r")  # this connection's own commit moves the stamp too
    n = len(calls)
    known.refresh(0.1)
    assert known.host(B) is not None and len(calls) == n + 1


def test_a_damaged_mac_is_a_store_error(store: Store) -> None:
    store._db.execute("INSERT INTO hosts (mac, role, created) VALUES ('nonsense', 'r', 0)")
    with pytest.raises(StoreError, match="nonsense"):
        store.known_macs_packed()


def test_boot_chains_are_remembered_per_role_until_the_database_changes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netbootd.config import Config

    cfg = Config.model_validate({"state_dir": str(store.path.parent)})
    known = KnownMacs(store)
    known.refresh(0.0)
    calls = []
    real = store.role_chain
    monkeypatch.setattr(store, "role_chain", lambda role: calls.append(role) or real(role))
    host = known.host(A)
    assert host is not None
    first = known.boot_chain(cfg, host)
    assert known.boot_chain(cfg, host) == first and calls == ["r"]
    store.enroll(B, "r")
    known.refresh(0.1)
    known.boot_chain(cfg, host)
    assert calls == ["r", "r"]
