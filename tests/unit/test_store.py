import os
import sqlite3
import threading

import pytest

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import Artifact, MacAddress
from netbootd.roles.artifacts import Artifacts, import_role
from netbootd.store import Store
from netbootd.store.migrations import MIGRATIONS

MAC = MacAddress.parse("52:54:00:12:34:56")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def _role(store, name="web", cmdline="quiet"):
    return store.add_generation(
        name, Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], cmdline, "import"
    )


def test_wal_and_schema(store):
    assert store.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_refused(tmp_path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "netbootd.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="newer than this netbootd"):
        Store(tmp_path)


def test_generations_append_and_become_current(store):
    g1 = _role(store, cmdline="one")
    g2 = _role(store, cmdline="two")
    assert (g1.generation, g2.generation) == (1, 2)
    assert store.role("web").current_generation == 2
    assert store.image("web").cmdline == "two"
    assert store.image("web", 1).cmdline == "one"
    assert store.image("web", 7) is None
    assert store.image("nope") is None
    assert store.referenced_artifacts() == {"a" * 64, "b" * 64}


def test_enroll_update_unenroll(store):
    _role(store, "web")
    _role(store, "db")
    host, created = store.enroll(MAC, "web", "web1", None, ["rack1"])
    assert created and host.role == "web" and host.tags == ("rack1",)
    host, created = store.enroll(MAC, "db")
    assert not created and host.role == "db" and host.hostname == "web1" and host.tags == ("rack1",)
    assert store.host_by_name("web1").mac == MAC
    assert [h.mac for h in store.hosts("rack1")] == [MAC]
    assert store.hosts("rack2") == []
    assert store.unenroll(MAC) is True
    assert store.host(MAC) is None
    assert store.unenroll(MAC) is False


def test_enroll_unknown_role_writes_nothing(store):
    with pytest.raises(NotFound, match="unknown role 'web'"):
        store.enroll(MAC, "web")
    assert store.hosts() == []


def test_hostname_must_be_unique(store):
    _role(store)
    store.enroll(MAC, "web", "web1")
    other = MacAddress.parse("52:54:00:00:00:01")
    with pytest.raises(InvalidInput, match="already used"):
        store.enroll(other, "web", "web1")
    assert store.host(other) is None


def test_booted_event_sets_last_boot(store):
    _role(store)
    store.enroll(MAC, "web")
    store.record_event(MAC, "booted", "10.0.0.5", {"kernel": "6.1"})
    h = store.host(MAC)
    assert h.last_boot is not None and h.last_boot_ip == "10.0.0.5"
    (ev,) = store.events(MAC)
    assert (ev.event, ev.source_ip, ev.detail) == ("booted", "10.0.0.5", {"kernel": "6.1"})


def test_second_connection_sees_writes(tmp_path):
    """The CLI and the running server are two connections to one database."""
    server, cli = Store(tmp_path), Store(tmp_path)
    assert server.host(MAC) is None
    _role(cli)
    cli.enroll(MAC, "web")
    assert server.host(MAC).role == "web"


def test_import_dedups_and_is_atomic(tmp_path):
    store, arts = Store(tmp_path / "s"), Artifacts(tmp_path / "s")
    k = tmp_path / "vmlinuz"
    k.write_bytes(os.urandom(3 << 20))
    i = tmp_path / "initrd"
    i.write_bytes(b"initrd")
    seen = []
    img = import_role(
        store, arts, "web", k, [i, i], "quiet", progress=lambda p: lambda d, t: seen.append((d, t))
    )
    assert arts.path(img.kernel.sha256).read_bytes() == k.read_bytes()
    assert img.initrds[0] == img.initrds[1]
    files = [p for p in arts.root.rglob("*") if p.is_file()]
    assert len(files) == 2, "identical files are stored once, and no temp files remain"
    assert seen[-1] == (3 << 20, 3 << 20) or (6, 6) in seen
    img2 = import_role(store, arts, "web", k, [i], "")
    assert img2.generation == 2 and img2.kernel == img.kernel
    assert len([p for p in arts.root.rglob("*") if p.is_file()]) == 2


def test_import_validates_before_writing(tmp_path):
    store, arts = Store(tmp_path / "s"), Artifacts(tmp_path / "s")
    k = tmp_path / "k"
    k.write_bytes(b"k")
    with pytest.raises(InvalidInput, match="command line"):
        import_role(store, arts, "web", k, [k], "quiet\nchain http://evil")
    with pytest.raises(NotFound, match="no such file"):
        import_role(store, arts, "web", k, [tmp_path / "missing"], "")
    with pytest.raises(InvalidInput, match="role name"):
        import_role(store, arts, "../web", k, [k], "")
    assert store.roles() == []
    assert not arts.root.exists() or not any(arts.root.rglob("*"))


def test_import_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    store, arts = Store(tmp_path / "s"), Artifacts(tmp_path / "s")
    k = tmp_path / "k"
    k.write_bytes(os.urandom(1 << 20))

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        import_role(store, arts, "web", k, [k], "")
    assert [p for p in arts.root.rglob("*") if p.is_file()] == []
    assert store.roles() == []


def test_concurrent_writers(tmp_path):
    stores = [Store(tmp_path) for _ in range(4)]
    _role(stores[0])
    errors = []

    def enroll(s, n):
        try:
            for i in range(25):
                s.enroll(MacAddress(bytes([2, 0, 0, n, 0, i])), "web")
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=enroll, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].hosts()) == 100


def test_progress_bar_for_large_files_on_a_terminal(monkeypatch, tmp_path):
    import io

    from netbootd.cli import common as cli

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(cli.sys, "stderr", err)
    show = cli.progress_bar(tmp_path / "initrd.img")
    total = 64 << 20
    for done in range(0, total + 1, 1 << 20):
        show(done, total)
    out = err.getvalue()
    assert "initrd.img" in out and " 50% " in out and out.endswith("100% 67/67 MB\n")
    err.truncate(0)
    show(10, 1000)  # small files: no bar
    assert err.getvalue().strip("\x00") == ""
    monkeypatch.setattr(cli.sys, "stderr", io.StringIO())
    assert cli.progress_bar(tmp_path / "x") is None  # not a terminal: no bar
