"""Stem-cell state in the store (migration 5): role boot modes, gold versions, LUN rows, NFS
syncs and stable export ids."""

import dataclasses

import pytest

from netbootd.errors import InvalidInput, NotFound
from netbootd.model import Artifact, BootMode, IscsiLun, MacAddress, RoleBoot, disk_size
from netbootd.store import Store

A = MacAddress.parse("52:54:00:00:00:0a")
B = MacAddress.parse("52:54:00:00:00:0b")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    s.add_generation("stem", Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], "", "import")
    yield s
    s.close()


def lun(mac, gold="g", version=1):
    return IscsiLun(
        mac,
        0,
        f"iqn.2025-01.x:{mac.hyphen}",
        f"iqn.2025-01.x:host.{mac.hyphen}",
        gold,
        version,
        "reflink",
        f"/r/{mac.hyphen}",
        f"/d/{mac.hyphen}",
        1 << 20,
        1.0,
        1.0,
    )


def add_gold(store, tmp_path, name="g"):
    return store.add_gold(
        name, lambda v: str(tmp_path / f"{name}-{v}.img"), 1 << 24, "src", lambda v: None
    )


def test_role_boot_default_set_and_cascade(store, tmp_path):
    assert store.role_boot("stem") == RoleBoot("stem")
    with pytest.raises(NotFound, match="unknown role"):
        store.set_role_boot(RoleBoot("nope", BootMode.LOCAL))
    with pytest.raises(NotFound, match="no gold image"):
        store.set_role_boot(RoleBoot("stem", BootMode.ISCSI, gold="g"))
    add_gold(store, tmp_path)
    b = RoleBoot("stem", BootMode.ISCSI, gold="g", data_size=8 << 20, san="sanhook")
    store.set_role_boot(b)
    assert store.role_boot("stem") == b and store.role_boots() == {"stem": b}
    store.set_role_boot(RoleBoot("stem", BootMode.NFS_STORE, toplevel="/nix/store/x"))
    assert store.role_boot("stem").mode is BootMode.NFS_STORE


def test_gold_versions_and_pruning(store, tmp_path):
    g1, g2 = add_gold(store, tmp_path), add_gold(store, tmp_path)
    assert (g1.version, g2.version) == (1, 2) and store.gold("g") == g2 and store.gold("g", 1) == g1
    store.add_lun(lun(A, version=1))  # A's clone is based on version 1: kept
    add_gold(store, tmp_path)  # version 3 is current: 2 is unused
    assert [g.version for g in store.forget_unused_golds()] == [2]
    assert [g.version for g in store.golds()] == [1, 3]
    store.delete_lun(A)
    assert [g.version for g in store.forget_unused_golds()] == [1]


def test_lun_tids_rows_and_replace(store, tmp_path):
    add_gold(store, tmp_path)
    a = store.add_lun(lun(A))
    b = store.add_lun(lun(B))
    assert (a.tid, b.tid) == (1, 2) and store.lun(A) == a and store.luns() == [a, b]
    with pytest.raises(InvalidInput, match="already has"):
        store.add_lun(lun(A))
    new = store.replace_lun(dataclasses.replace(a, method="qcow2", root="/new", cloned=5.0))
    assert store.lun(A) == new and store.lun(A).tid == 1 and store.lun(A).data == a.data
    assert store.delete_lun(A) and not store.delete_lun(A) and store.lun(A) is None
    with pytest.raises(NotFound):
        store.replace_lun(a)


def test_nfs_sync_and_export_ids(store):
    assert store.nfs_sync("stem") is None
    store.record_nfs_sync("stem", "/nix/store/t", ["/nix/store/t", "/nix/store/u"])
    top, when = store.nfs_sync("stem")
    assert top == "/nix/store/t" and when > 0
    assert store.nfs_paths() == {"/nix/store/t", "/nix/store/u"}
    store.record_nfs_sync("stem", "/nix/store/v", ["/nix/store/v"])
    assert store.nfs_paths() == {"/nix/store/v"}
    assert store.nfs_export_id(A, 100) == 100
    assert store.nfs_export_id(B, 100) == 101
    assert store.nfs_export_id(A, 100) == 100  # stable
    assert store.nfs_export_ids() == {A: 100, B: 101}


@pytest.mark.parametrize(
    "text, n",
    [
        ("8M", 8 << 20),
        ("1G", 1 << 30),
        ("512MiB", 512 << 20),
        ("1048576", 1 << 20),
        (16 << 20, 16 << 20),
    ],
)
def test_disk_size(text, n):
    assert disk_size(text) == n


@pytest.mark.parametrize("bad", ["", "1K", "ten", "1.5G", 1000])
def test_disk_size_refused(bad):
    with pytest.raises(InvalidInput):
        disk_size(bad)
