"""Generations: switch / rollback (one UPDATE each), keep-N pruning that spares the current and
pinned generations, host pins (honoured by policy.boot_generation), build metadata."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from netbootd import policy
from netbootd.errors import InvalidInput, NotFound
from netbootd.model import Artifact, MacAddress, NixBuild
from netbootd.store import Store

MAC = MacAddress.parse("52:54:00:12:34:56")
MAC2 = MacAddress.parse("52:54:00:12:34:57")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def gen(store: Store, n: int, role: str = "web", **kw):
    k = Artifact(f"{n:064x}", n)
    i = Artifact(f"{n + 1000:064x}", n + 1000)
    return store.add_generation(role, k, [i], f"gen{n}", "import", **kw)


def test_switch_and_rollback(store: Store) -> None:
    for n in (1, 2, 3):
        gen(store, n)
    assert store.switch("web", 1) == (3, 1)
    assert store.image("web").cmdline == "gen1"
    with pytest.raises(NotFound, match="no generation older than 1"):
        store.rollback("web")
    assert store.switch("web", 3) == (1, 3)
    assert store.rollback("web") == (3, 2)
    assert store.rollback("web") == (2, 1)
    with pytest.raises(NotFound, match="has no generation 9 .kept: 1, 2, 3"):
        store.switch("web", 9)
    with pytest.raises(NotFound, match="unknown role"):
        store.switch("nope", 1)
    assert store.role("web").current_generation == 1


def test_rollback_skips_pruned_numbers(store: Store) -> None:
    for n in (1, 2, 3, 4):
        gen(store, n)
    store.switch("web", 2)
    assert store.prune("web", 1) == [1, 3]  # keeps 4 (newest) and 2 (current)
    store.switch("web", 4)
    assert store.rollback("web") == (4, 2)


def test_prune_keeps_newest_current_and_pinned(store: Store) -> None:
    for n in range(1, 9):
        gen(store, n)
    store.enroll(MAC, "web")
    store.pin(MAC, 2)
    store.switch("web", 3)
    removed = store.prune("web", 3)
    assert removed == [1, 4, 5]
    assert [i.generation for i in store.generations("web")] == [2, 3, 6, 7, 8]
    assert store.referenced_artifacts() == {f"{n:064x}" for n in (2, 3, 6, 7, 8)} | {
        f"{n + 1000:064x}" for n in (2, 3, 6, 7, 8)}
    with pytest.raises(InvalidInput):
        store.prune("web", 0)


def test_pin_and_policy(store: Store) -> None:
    gen(store, 1)
    gen(store, 2)
    store.enroll(MAC, "web")
    store.enroll(MAC2, "web")
    host = store.pin(MAC, 1)
    assert host.pinned_generation == 1
    assert policy.boot_generation(host) == 1
    assert store.image("web", policy.boot_generation(host)).cmdline == "gen1"
    other = store.host(MAC2)
    assert policy.boot_generation(other) is None
    assert store.image("web", policy.boot_generation(other)).cmdline == "gen2"
    with pytest.raises(NotFound, match="no generation 7"):
        store.pin(MAC, 7)
    with pytest.raises(NotFound, match="no enrolled host"):
        store.pin(MacAddress.parse("52:54:00:00:00:99"), 1)
    assert store.pin(MAC, None).pinned_generation is None
    store.pin(MAC, 1)
    gen(store, 1, role="db")
    host, _ = store.enroll(MAC, "db")  # another role: the pin named a generation of the old one
    assert host.pinned_generation is None
    host, _ = store.enroll(MAC2, "web", hostname="x")
    assert host.pinned_generation is None


def test_build_metadata_and_store_paths(store: Store) -> None:
    b = NixBuild("compose", "/nix/store/k", "/nix/store/i", "/nix/store/t", 1.5, 40, 2)
    img = gen(store, 1, build=b, store_paths=["/nix/store/a", "/nix/store/b"])
    assert img.build == b
    assert store.image("web").build == b and store.image("web").source == "import"
    assert store.referenced_store_paths() == {"/nix/store/a", "/nix/store/b"}
    gen(store, 2, store_paths=["/nix/store/b", "/nix/store/c"])
    assert store.image("web").build is None
    store.prune("web", 1)
    assert store.referenced_store_paths() == {"/nix/store/b", "/nix/store/c"}


def test_forget_artifacts_only_unreferenced(store: Store) -> None:
    gen(store, 1)
    gen(store, 2)
    store.prune("web", 1)
    gone = store.forget_artifacts([f"{1:064x}", f"{2:064x}"])
    assert gone == [f"{1:064x}"]
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 3


def test_switch_is_seen_whole(tmp_path) -> None:
    """A reader in another connection never sees one generation's kernel with another's initrd."""
    writer = Store(tmp_path / "s")
    for n in (1, 2):
        gen(writer, n)
    reader = Store(tmp_path / "s")
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            img = reader.image("web")
            assert img is not None
            if img.initrds[0].size != img.kernel.size + 1000:
                bad.append(f"{img.kernel} {img.initrds}")

    t = threading.Thread(target=read)
    t.start()
    for _ in range(200):
        writer.switch("web", 1)
        writer.switch("web", 2)
    stop.set()
    t.join()
    assert not bad
