"""Key generation, the bundle, tokens and exports (netbootd/hostkeys.py), checked against the
real tools where they exist: ssh-keygen, wg, age, age-keygen, glibc's gethostid()."""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from netbootd import tokens
from netbootd.identity import hostkeys
from netbootd.model import Host, MacAddress
from netbootd.tokens import TokenStatus

MAC = MacAddress.parse("52:54:00:12:34:56")
SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def keys() -> hostkeys.IdentityKeys:
    return hostkeys.generate("root@web1")


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else (data + "\n").encode())
    path.chmod(0o600)
    return path


def _ssh_keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_ssh_keys_accepted_by_ssh_keygen(keys, tmp_path):
    ed = _write(tmp_path / "ssh_host_ed25519_key", keys.ssh_ed25519_key)
    rsa = _write(tmp_path / "ssh_host_rsa_key", keys.ssh_rsa_key)
    ed_pub = _write(tmp_path / "ssh_host_ed25519_key.pub", keys.ssh_ed25519_pub)
    rsa_pub = _write(tmp_path / "ssh_host_rsa_key.pub", keys.ssh_rsa_pub)
    assert keys.ssh_ed25519_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert keys.ssh_rsa_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    for key, pub, bits, kind in ((ed, ed_pub, "256", "ED25519"), (rsa, rsa_pub, "4096", "RSA")):
        for f in (key, pub):
            out = _ssh_keygen("-l", "-f", str(f)).split()
            assert out[0] == bits and out[-1] == f"({kind})", out
            assert out[1] == hostkeys.fingerprint(pub.read_text())
        # the private key really belongs to the public one
        derived = _ssh_keygen("-y", "-f", str(key)).split()[:2]
        assert derived == pub.read_text().split()[:2]
    assert keys.ssh_ed25519_pub.endswith(" root@web1")


def test_machine_id_and_hostid(keys):
    assert re.fullmatch(r"[0-9a-f]{32}", keys.machine_id)
    assert uuid.UUID(hex=keys.machine_id).version == 4  # as systemd-machine-id-setup makes them
    assert keys.hostid == keys.machine_id[:8]
    assert hostkeys.hostid_bytes("deadbeef") == b"\xef\xbe\xad\xde"  # little-endian
    assert hostkeys.hostid_bytes("00000001") == b"\x01\x00\x00\x00"
    assert hostkeys.hostid_bytes(keys.hostid) == int(keys.hostid, 16).to_bytes(4, "little")
    for bad in ("DEADBEEF", "deadbee", "deadbeef0", "xyzxyzxy"):
        with pytest.raises(Exception, match="hostId"):
            hostkeys.hostid_bytes(bad)
    other = hostkeys.generate("root@web2")
    assert other.machine_id != keys.machine_id
    assert other.ssh_ed25519_key != keys.ssh_ed25519_key and other.wg_private != keys.wg_private


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("hostid") is None,
    reason="needs root, unshare and coreutils' hostid",
)
def test_hostid_file_reads_back_with_glibc(tmp_path):
    """Put our /etc/hostid where glibc's gethostid() reads it (a private mount namespace with a
    tmpfs over /etc) and ask coreutils' `hostid`: the bytes zgenhostid would write."""
    f = tmp_path / "hostid"
    f.write_bytes(hostkeys.hostid_bytes("1a2b3c4d"))
    script = f"mount -t tmpfs none /etc && cp {f} /etc/hostid && hostid"
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace: {p.stderr.strip()}")
    assert p.stdout.strip() == "1a2b3c4d"


def test_hostid_collision_redrawn(monkeypatch):
    ids = iter(["deadbeef" + "0" * 24, "deadbeef" + "1" * 24, "cafef00d" + "2" * 24])
    monkeypatch.setattr(hostkeys, "new_machine_id", lambda: next(ids))
    keys = hostkeys.generate("root@x", {"deadbeef"})
    assert keys.hostid == "cafef00d"


def test_wireguard_key(keys, tmp_path):
    raw = base64.b64decode(keys.wg_private, validate=True)
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40  # clamped, as wg genkey
    assert len(base64.b64decode(keys.wg_public, validate=True)) == 32
    # RFC 7748 test vector (Alice), after clamping
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    _, pub = hostkeys.wireguard_keypair(alice)
    assert (
        base64.b64decode(pub).hex()
        == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    if shutil.which("wg"):
        out = subprocess.run(
            ["wg", "pubkey"],
            input=keys.wg_private + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        assert out == keys.wg_public


def test_repr_leaks_no_secret(keys):
    text = repr(keys) + str(keys)
    assert keys.wg_private not in text
    assert "PRIVATE" not in text and keys.ssh_ed25519_key.decode()[40:80] not in text
    assert keys.machine_id in text  # the public parts are fine


def test_bundle_paths_modes_contents(keys):
    data = hostkeys.bundle(keys, mtime=1_700_000_000)
    assert data == hostkeys.bundle(keys, mtime=1_700_000_000), "deterministic"
    assert gzip.decompress(data)  # a gzip stream
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        files = {n: tar.extractfile(m).read() for n, m in members.items() if m.isfile()}
    modes = {n: m.mode for n, m in members.items()}
    assert modes == {
        "etc": 0o755,
        "etc/ssh": 0o755,
        "etc/wireguard": 0o700,
        "etc/ssh/ssh_host_ed25519_key": 0o600,
        "etc/ssh/ssh_host_ed25519_key.pub": 0o644,
        "etc/ssh/ssh_host_rsa_key": 0o600,
        "etc/ssh/ssh_host_rsa_key.pub": 0o644,
        "etc/machine-id": 0o644,
        "etc/hostid": 0o644,
        "etc/wireguard/private.key": 0o600,
        "etc/wireguard/public.key": 0o644,
    }
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "root" for m in members.values())
    assert files["etc/ssh/ssh_host_ed25519_key"] == keys.ssh_ed25519_key
    assert files["etc/ssh/ssh_host_rsa_key.pub"] == (keys.ssh_rsa_pub + "\n").encode()
    assert files["etc/machine-id"] == (keys.machine_id + "\n").encode()
    assert files["etc/hostid"] == hostkeys.hostid_bytes(keys.hostid)
    assert files["etc/wireguard/private.key"] == (keys.wg_private + "\n").encode()


def test_token_round_trip_and_refusals():
    t1 = tokens.mint(SECRET, MAC, b"\x01" * 16)
    t2 = tokens.mint(SECRET, MAC, b"\x02" * 16)
    assert t1 != t2 and len(t1) == tokens.TOKEN_CHARS and re.fullmatch(r"[A-Za-z0-9_-]+", t1)
    claim = tokens.parse(SECRET, t1)
    assert (claim.status, claim.mac, claim.digest) == (TokenStatus.VALID, MAC, tokens.digest(t1))
    assert claim.short == claim.digest[:12]
    # one character changed in the nonce: tampered, still naming the MAC it claims
    i = 12
    tampered = t1[:i] + ("A" if t1[i] != "A" else "B") + t1[i + 1 :]
    c = tokens.parse(SECRET, tampered)
    assert c.status is TokenStatus.TAMPERED and c.mac == MAC
    # another server's secret: tampered too
    assert tokens.parse(bytes(32), t1).status is TokenStatus.TAMPERED
    # the MAC part swapped for another host's: tampered
    other = MacAddress.parse("52:54:00:00:00:01")
    raw = base64.urlsafe_b64decode(t1 + "=")
    forged = base64.urlsafe_b64encode(other.packed + raw[6:]).decode().rstrip("=")
    c = tokens.parse(SECRET, forged)
    assert c.status is TokenStatus.TAMPERED and c.mac == other
    # a second spelling of the same bytes (the unused low bits of the last character)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alt = t1[:-1] + alphabet[alphabet.index(t1[-1]) ^ 1]
    assert base64.urlsafe_b64decode(alt + "=") == base64.urlsafe_b64decode(t1 + "=")
    assert tokens.parse(SECRET, alt).status is TokenStatus.MALFORMED
    for bad in ("", "x", t1 + "A", t1[:-1], t1[:-1] + "+", "../" + t1[3:], t1.replace(t1[5], "=")):
        assert tokens.parse(SECRET, bad).status is TokenStatus.MALFORMED, bad


def _pub(keys, mac=MAC, generation=1):
    return keys.public(mac, generation, 0.0, "d")


def test_known_hosts_lines(keys, tmp_path):
    host = Host(MAC, "web", hostname="web1", canon="web1.rack1.example.org")
    nameless = Host(MacAddress.parse("52:54:00:00:00:02"), "web")
    text = hostkeys.known_hosts([(host, _pub(keys), "10.0.0.5"), (nameless, _pub(keys), None)])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "web1,web1.rack1.example.org,10.0.0.5 " + " ".join(keys.ssh_ed25519_pub.split()[:2]),
        "web1,web1.rack1.example.org,10.0.0.5 " + " ".join(keys.ssh_rsa_pub.split()[:2]),
    ]
    assert "# 52:54:00:00:00:02: no hostname" in text
    if shutil.which("ssh-keygen"):
        f = tmp_path / "known_hosts"
        f.write_text(text)
        found = _ssh_keygen("-F", "10.0.0.5", "-f", str(f))
        assert "ssh-ed25519" in found and "ssh-rsa" in found
        fps = _ssh_keygen("-l", "-f", str(f))
        assert hostkeys.fingerprint(keys.ssh_ed25519_pub) in fps


@pytest.mark.skipif(shutil.which("age") is None, reason="Debian's age package is not installed")
def test_age_recipient_decrypts_with_the_host_key(keys, tmp_path):
    recipient = hostkeys.age_recipient(_pub(keys))
    assert recipient == " ".join(keys.ssh_ed25519_pub.split()[:2])
    plain = tmp_path / "secret.txt"
    plain.write_bytes(os.urandom(64))
    enc = tmp_path / "secret.age"
    subprocess.run(["age", "-r", recipient, "-o", str(enc), str(plain)], check=True, timeout=30)
    key = _write(tmp_path / "ssh_host_ed25519_key", keys.ssh_ed25519_key)
    out = subprocess.run(
        ["age", "-d", "-i", str(key), str(enc)], capture_output=True, check=True, timeout=30
    ).stdout
    assert out == plain.read_bytes()
    wrong = _write(tmp_path / "other_key", hostkeys.generate("x").ssh_ed25519_key)
    p = subprocess.run(
        ["age", "-d", "-i", str(wrong), str(enc)], capture_output=True, timeout=30, check=False
    )
    assert p.returncode != 0


def _ssh_to_age_private(ed25519_openssh: bytes) -> str:
    """What `ssh-to-age -private-key` does: the ed25519 seed's SHA-512, clamped, bech32."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(ed25519_openssh, None)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    return hostkeys.bech32("age-secret-key-", bytes(h)).upper()


@pytest.mark.skipif(
    shutil.which("age-keygen") is None, reason="Debian's age package is not installed"
)
def test_age1_recipient_is_what_ssh_to_age_prints(keys, tmp_path):
    """The public conversion agrees with age-keygen's view of the converted private key."""
    recipient = hostkeys.age_x25519_recipient(_pub(keys))
    assert recipient.startswith("age1") and len(recipient) == 62
    ident = tmp_path / "age.key"
    ident.write_text(_ssh_to_age_private(keys.ssh_ed25519_key) + "\n")
    derived = subprocess.run(
        ["age-keygen", "-y", str(ident)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert derived == recipient
    plain = b"agenix secret\n"
    enc = subprocess.run(
        ["age", "-r", recipient], input=plain, capture_output=True, check=True, timeout=30
    ).stdout
    dec = tmp_path / "enc.age"
    dec.write_bytes(enc)
    out = subprocess.run(
        ["age", "-d", "-i", str(ident), str(dec)], capture_output=True, check=True, timeout=30
    ).stdout
    assert out == plain
