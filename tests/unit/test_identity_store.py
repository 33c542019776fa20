"""Identities in the store and on disk: generations, arming, atomic token redemption, files
at rest (0600/0700), migration 2 keeping old events."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time

import pytest

from netbootd import policy, tokens
from netbootd.errors import NotFound, StoreError
from netbootd.identity import hostkeys, vault
from netbootd.identity.vault import Vault
from netbootd.model import Artifact, IdentityToken, MacAddress
from netbootd.store import Store
from netbootd.store.migrations import MIGRATIONS

MAC = MacAddress.parse("52:54:00:12:34:56")
IP = "10.0.0.5"


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def store(state):
    s = Store(state)
    s.add_generation("web", Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], "", "import")
    s.enroll(MAC, "web", "web1")
    yield s
    s.close()


def _issue(store, ttl=600.0, ip=IP, mac=MAC, n=1):
    now = time.time()
    digest = tokens.digest(f"token-{n}-{now}")
    store.issue_token(IdentityToken(digest, mac, ip, now, now + ttl))
    return digest


def _decide(peer, now=None):
    return lambda t, h, s: policy.identity_release(t, h, s, peer, now or time.time())


def test_provision_generations_arming_and_files(store, state):
    ks = Vault(state)
    host = store.host(MAC)
    pub1 = vault.create_identity(store, ks, host, arm=True, event="keys-generated")
    assert pub1.generation == 1 and store.identity_state(MAC).armed
    with pytest.raises(Exception, match="already has an identity"):
        vault.check_new(store, host)
    pub2 = vault.create_identity(store, ks, host, arm=True, event="keys-rotated")
    assert pub2.generation == 2 and pub2.ssh_ed25519 != pub1.ssh_ed25519
    assert store.identity(MAC) == pub2 and store.identity(MAC, 1) == pub1
    assert [p.generation for p in store.identities(MAC)] == [1, 2]
    assert [p.generation for p in store.identities()] == [2]
    # both generations' files are kept, and read back whole
    assert ks.read(pub1).ssh_ed25519_pub == pub1.ssh_ed25519
    keys2 = ks.read(pub2)
    assert keys2.machine_id == pub2.machine_id and keys2.ssh_rsa_key.startswith(
        b"-----BEGIN OPENSSH"
    )
    # modes: every file 0600, every directory 0700
    for p in [ks.root, *ks.root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    assert len([p for p in ks.host_dir(MAC).iterdir()]) == 2
    assert not [p for p in ks.root.rglob(".*")], "no temp files left"
    events = [e.event for e in store.events(MAC)]
    assert events == ["keys-generated", "keys-rotated"]


def test_read_refuses_files_that_do_not_match(store, state):
    ks = Vault(state)
    pub = vault.create_identity(store, ks, store.host(MAC), arm=True, event="keys-generated")
    (ks.path(pub) / "ssh_host_ed25519_key.pub").write_text(
        hostkeys.generate("x").ssh_ed25519_pub + "\n"
    )
    with pytest.raises(StoreError, match="do not match"):
        ks.read(pub)
    (ks.path(pub) / "machine-id").unlink()
    with pytest.raises(StoreError, match="cannot read"):
        ks.read(pub)


def test_failed_record_leaves_no_files(store, state, monkeypatch):
    ks = Vault(state)

    def broken(*a, **kw):
        raise StoreError("disk full")

    monkeypatch.setattr(store, "add_identity", broken)
    with pytest.raises(StoreError):
        vault.create_identity(store, ks, store.host(MAC), arm=True, event="keys-generated")
    assert not ks.host_dir(MAC).exists()  # its generation and then its empty host directory


def test_token_secret_created_once_0600(state):
    ks = Vault(state)
    s1 = ks.token_secret()
    assert len(s1) == 32 and Vault(state).token_secret() == s1
    assert stat.S_IMODE((ks.root / "token.secret").stat().st_mode) == 0o600


def test_arm_disarm_unenroll(store, state):
    with pytest.raises(NotFound):
        store.arm_identity(MAC, armed=True)
    vault.create_identity(store, Vault(state), store.host(MAC), arm=False, event="keys-generated")
    assert not store.identity_state(MAC).armed
    st = store.arm_identity(MAC, armed=True, every_boot=True)
    assert st.armed and st.every_boot
    st = store.arm_identity(MAC, armed=True)
    assert st.armed and not st.every_boot
    store.unenroll(MAC)
    assert not store.identity_state(MAC).armed, "unenroll disarms (and keeps the keys)"
    assert store.identity(MAC) is not None


def test_redeem_once_then_replay_and_disarm(store, state):
    vault.create_identity(store, Vault(state), store.host(MAC), arm=True, event="keys-generated")
    digest = _issue(store)
    d, st = store.redeem_token(digest, MAC, IP, time.time(), _decide(IP))
    assert d.ok and st.generation == 1
    assert not store.identity_state(MAC).armed, "a delivery disarms"
    assert store.token(digest).used is not None and store.token(digest).used_ip == IP
    d, _ = store.redeem_token(digest, MAC, IP, time.time(), _decide(IP))
    assert not d.ok and "already used" in d.reason
    evs = [(e.event, e.source_ip, e.detail.get("reason")) for e in store.events(MAC)]
    assert evs[-2:] == [("identity-delivered", IP, None), ("identity-denied", IP, d.reason)]


def test_every_boot_stays_armed(store, state):
    vault.create_identity(store, Vault(state), store.host(MAC), arm=True, event="keys-generated")
    store.arm_identity(MAC, armed=True, every_boot=True)
    for n in range(3):
        digest = _issue(store, n=n)
        assert store.redeem_token(digest, MAC, IP, time.time(), _decide(IP))[0].ok
        assert store.identity_state(MAC).armed


def test_unknown_token_audited_without_a_host(store):
    d, st = store.redeem_token("f" * 64, None, "10.9.9.9", time.time(), _decide("10.9.9.9"))
    assert not d.ok and d.reason == "unknown token" and st is None
    (ev,) = store.events(since=0)[-1:]
    assert (ev.mac, ev.event, ev.source_ip, ev.detail["reason"]) == (
        None,
        "identity-denied",
        "10.9.9.9",
        "unknown token",
    )
    # a refusal naming a MAC that is not enrolled is not held against it
    store.audit(MacAddress.parse("02:00:00:00:00:01"), "identity-denied", "10.9.9.9",
                {"reason": "tampered token"})
    assert store.events(MacAddress.parse("02:00:00:00:00:01")) == []
    store.audit(MAC, "identity-denied", "10.9.9.9", {"reason": "tampered token"})
    assert store.events(MAC)[-1].detail == {"reason": "tampered token"}


@pytest.mark.parametrize("every_boot", [False, True])
def test_concurrent_redemption_exactly_one(state, every_boot):
    """20 threads on 5 separate connections (as 5 server processes would be) race for one token.
    With every_boot the host stays armed, so only the token's single use stops the other 19."""
    stores = [Store(state) for _ in range(5)]
    s0 = stores[0]
    s0.add_generation("web", Artifact("a" * 64, 1), [], "", "import")
    s0.enroll(MAC, "web", "web1")
    vault.create_identity(s0, Vault(state), s0.host(MAC), arm=True, event="keys-generated")
    s0.arm_identity(MAC, armed=True, every_boot=every_boot)
    digest = _issue(s0)
    barrier = threading.Barrier(20)
    results: list[bool] = []
    errors: list[Exception] = []

    def go(s):
        try:
            barrier.wait()
            results.append(s.redeem_token(digest, MAC, IP, time.time(), _decide(IP))[0].ok)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=go, args=(stores[i % 5],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] * 19 + [True]
    kinds = [e.event for e in s0.events(MAC) if e.event.startswith("identity-")]
    assert kinds.count("identity-delivered") == 1 and kinds.count("identity-denied") == 19


def test_decision_is_made_inside_the_transaction(state, store):
    """The pure decision sees the row as it is at commit time, not a stale earlier read."""
    vault.create_identity(store, Vault(state), store.host(MAC), arm=True, event="keys-generated")
    digest = _issue(store)
    seen = []

    def decide(t, h, s):
        seen.append(t.used)
        return policy.identity_release(t, h, s, IP, time.time())

    store.redeem_token(digest, MAC, IP, time.time(), decide)
    store.redeem_token(digest, MAC, IP, time.time(), decide)
    assert seen[0] is None and seen[1] is not None


def test_migration_2_keeps_events_and_allows_hostless(tmp_path):
    db = sqlite3.connect(tmp_path / "netbootd.sqlite3")
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("PRAGMA user_version=1")
    db.execute(
        "INSERT INTO events(mac, event, time, source_ip, detail) VALUES"
        " ('52:54:00:12:34:56', 'booted', 5.0, '10.0.0.5', '{\"k\": 1}')"
    )
    db.commit()
    db.close()
    s = Store(tmp_path)
    assert s.schema_version == len(MIGRATIONS) >= 2
    (ev,) = s.events()
    assert (ev.mac, ev.event, ev.time, ev.source_ip, ev.detail) == (
        MAC,
        "booted",
        5.0,
        IP,
        {"k": 1},
    )
    s.record_event(None, "identity-denied", "10.1.1.1", {"reason": "x"})
    assert [e.mac for e in s.events()] == [MAC, None]


def test_hostids_of_others(store, state):
    pub = vault.create_identity(
        store, Vault(state), store.host(MAC), arm=True, event="keys-generated"
    )
    assert store.identity_hostids() == {pub.hostid}
    assert store.identity_hostids(exclude=MAC) == set()


def test_provision_avoids_a_taken_hostid(store, state, monkeypatch):
    other = MacAddress.parse("52:54:00:00:00:02")
    store.enroll(other, "web", "web2")
    pub = vault.create_identity(
        store, Vault(state), store.host(MAC), arm=True, event="keys-generated"
    )
    ids = iter([pub.hostid + "0" * 24, "0badf00d" + "1" * 24])
    monkeypatch.setattr(hostkeys, "new_machine_id", lambda: next(ids))
    pub2 = vault.create_identity(
        store, Vault(state), store.host(other), arm=True, event="keys-generated"
    )
    assert pub2.hostid == "0badf00d"


def test_expired_tokens_purged_after_a_week(store):
    old = tokens.digest("old")
    t0 = time.time() - 8 * 86400
    store.issue_token(IdentityToken(old, MAC, IP, t0, t0 + 600))
    _issue(store)
    assert store.token(old) is None
