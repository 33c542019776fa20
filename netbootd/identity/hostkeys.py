"""Per-host identity: key generation, the delivered bundle, per-boot tokens, exports. Pure.

No files, sockets, clock or logging here: randomness comes from the OS (or is passed in), times
are passed in, and the results are values. vault.py keeps the private halves on disk, the
store keeps the public halves, servers/http.py hands bundles out.

What a host gets (the bundle, a tar.gz whose paths are relative to `/`):

    etc/ssh/ssh_host_ed25519_key      0600   OpenSSH private key
    etc/ssh/ssh_host_ed25519_key.pub  0644
    etc/ssh/ssh_host_rsa_key          0600   RSA 4096, OpenSSH private key
    etc/ssh/ssh_host_rsa_key.pub      0644
    etc/machine-id                    0644   32 lowercase hex digits + newline (a v4 UUID)
    etc/hostid                        0644   the ZFS hostId (first 8 hex digits of the machine-id)
                                             as 4 bytes, little-endian: what `zgenhostid` writes
                                             and glibc's gethostid() reads on x86-64 and arm64
    etc/wireguard/private.key         0600   WireGuard (X25519) private key, base64, as `wg genkey`
    etc/wireguard/public.key          0644

Nothing in this module logs, and the private fields of `IdentityKeys` are left out of its repr.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import tarfile
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from netbootd.errors import InvalidInput
from netbootd.model import Host, IdentityPublic, MacAddress

RSA_BITS = 4096
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class IdentityKeys:
    """One generation of a host's identity, private halves included. Never log one."""

    machine_id: str
    ssh_ed25519_pub: str
    ssh_rsa_pub: str
    wg_public: str
    ssh_ed25519_key: bytes = field(repr=False)  # OpenSSH PEM ("BEGIN OPENSSH PRIVATE KEY")
    ssh_rsa_key: bytes = field(repr=False)
    wg_private: str = field(repr=False)  # base64 of the 32-byte clamped X25519 scalar

    @property
    def hostid(self) -> str:
        return self.machine_id[:8]

    def public(self, mac: MacAddress, generation: int, created: float,
               directory: str = "") -> IdentityPublic:
        return IdentityPublic(
            mac=mac,
            generation=generation,
            created=created,
            machine_id=self.machine_id,
            ssh_ed25519=self.ssh_ed25519_pub,
            ssh_rsa=self.ssh_rsa_pub,
            wg_public=self.wg_public,
            directory=directory,
        )


def _openssh_private(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey, comment: str) -> str:
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f"{line} {comment}" if comment else line


def new_machine_id() -> str:
    """32 lowercase hex digits, random: a version 4 UUID, as systemd-machine-id-setup makes."""
    return uuid.uuid4().hex


def wireguard_keypair(seed: bytes | None = None) -> tuple[str, str]:
    """(private, public), both base64 like `wg genkey` / `wg pubkey`; the scalar is clamped."""
    k = bytearray(seed if seed is not None else os.urandom(32))
    if len(k) != 32:
        raise InvalidInput("a WireGuard private key is 32 bytes")
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    priv = x25519.X25519PrivateKey.from_private_bytes(bytes(k))
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(bytes(k)).decode(), base64.b64encode(pub).decode()


def generate(comment: str, taken_hostids: frozenset[str] | set[str] = frozenset(),
             with_rsa: bool = True) -> IdentityKeys:
    """A fresh identity. `comment` ends the public key lines (`root@web1`); the machine-id is
    drawn again while its hostId collides with one in `taken_hostids`. Without `with_rsa` the
    RSA host key is left empty (pending: RSA-4096 takes ~1 s, everything else ~1 ms; bulk
    enrollment makes it later, see vault.complete_rsa)."""
    machine_id = new_machine_id()
    while machine_id[:8] in taken_hostids:
        machine_id = new_machine_id()
    ed = ed25519.Ed25519PrivateKey.generate()
    rsa_pub, rsa_key = rsa_keypair(comment) if with_rsa else ("", b"")
    wg_private, wg_public = wireguard_keypair()
    return IdentityKeys(
        machine_id=machine_id,
        ssh_ed25519_pub=_openssh_public(ed, comment),
        ssh_rsa_pub=rsa_pub,
        wg_public=wg_public,
        ssh_ed25519_key=_openssh_private(ed),
        ssh_rsa_key=rsa_key,
        wg_private=wg_private,
    )


def rsa_keypair(comment: str) -> tuple[str, bytes]:
    """(OpenSSH public line, OpenSSH private key) of a new RSA-4096 host key."""
    rs = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return _openssh_public(rs, comment), _openssh_private(rs)


def hostid_bytes(hostid: str) -> bytes:
    """The 4-byte /etc/hostid for an 8-hex-digit hostId.

    zgenhostid writes the 32-bit value in the machine's byte order and glibc's gethostid()
    reads it back the same way; netbootd's clients (x86-64, arm64) are little-endian, which is
    also what NixOS writes for `networking.hostId` there. `hostid` (coreutils) prints it back.
    """
    if not re.fullmatch(r"[0-9a-f]{8}", hostid):
        raise InvalidInput(f"not a hostId (8 lowercase hex digits): {hostid!r}")
    return int(hostid, 16).to_bytes(4, "little")


def ssh_blob(pub_line: str) -> bytes:
    parts = pub_line.split()
    if len(parts) < 2 or not parts[0].startswith("ssh-"):
        raise InvalidInput("not an OpenSSH public key line")
    return base64.b64decode(parts[1], validate=True)


def fingerprint(pub_line: str) -> str:
    """`SHA256:...` exactly as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(ssh_blob(pub_line)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_machine_id(value: str) -> str:
    if not _MACHINE_ID.fullmatch(value):
        raise InvalidInput("a machine-id is 32 lowercase hex digits")
    return value


# -- the bundle -------------------------------------------------------------------------------


def bundle(keys: IdentityKeys, mtime: float = 0.0) -> bytes:
    """The tar.gz a host receives. Deterministic for the same keys and mtime."""
    files: list[tuple[str, bytes, int]] = [
        ("etc/ssh/ssh_host_ed25519_key", keys.ssh_ed25519_key, 0o600),
        ("etc/ssh/ssh_host_ed25519_key.pub", (keys.ssh_ed25519_pub + "\n").encode(), 0o644),
        *([("etc/ssh/ssh_host_rsa_key", keys.ssh_rsa_key, 0o600),
           ("etc/ssh/ssh_host_rsa_key.pub", (keys.ssh_rsa_pub + "\n").encode(), 0o644)]
          if keys.ssh_rsa_pub else []),  # pending RSA: vault.complete_rsa runs before a bundle
        ("etc/machine-id", (keys.machine_id + "\n").encode(), 0o644),
        ("etc/hostid", hostid_bytes(keys.hostid), 0o644),
        ("etc/wireguard/private.key", (keys.wg_private + "\n").encode(), 0o600),
        ("etc/wireguard/public.key", (keys.wg_public + "\n").encode(), 0o644),
    ]
    dirs = [("etc", 0o755), ("etc/ssh", 0o755), ("etc/wireguard", 0o700)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, mode in dirs:
            info = _tarinfo(name, mode, int(mtime))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data, mode in files:
            info = _tarinfo(name, mode, int(mtime))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _tarinfo(name: str, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# -- exports ----------------------------------------------------------------------------------


def known_hosts(entries: list[tuple[Host, IdentityPublic, str | None]]) -> str:
    """known_hosts lines naming each host by hostname, canonical name and last-seen IP."""
    out = ["# netbootd known_hosts: hostname, canonical name, last-seen address"]
    for host, pub, last_ip in entries:
        names = [n for n in (host.hostname, host.canon, last_ip) if n]
        names = list(dict.fromkeys(names))
        if not names:
            out.append(f"# {host.mac}: no hostname, canonical name or address yet; skipped")
            continue
        pattern = ",".join(names)
        for line in (pub.ssh_ed25519, pub.ssh_rsa):
            if not line:  # an RSA key not made yet (bulk enrollment): `serve` makes it soon
                continue
            keytype, b64 = line.split()[:2]
            out.append(f"{pattern} {keytype} {b64}")
    return "\n".join(out) + "\n"


def age_recipient(pub: IdentityPublic) -> str:
    """The host's age recipient: its ed25519 host key, which `age -r` takes as is and which
    `age -d -i /etc/ssh/ssh_host_ed25519_key` decrypts (agenix's usual `secrets.nix` form)."""
    keytype, b64 = pub.ssh_ed25519.split()[:2]
    return f"{keytype} {b64}"


# ssh-to-age's form: the ed25519 public key mapped to its X25519 (Montgomery) twin, bech32
# "age1...". Files encrypted to it need the converted private key (`ssh-to-age -private-key`).
_P = 2**255 - 19
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def ed25519_to_x25519_public(ed_pub: bytes) -> bytes:
    if len(ed_pub) != 32:
        raise InvalidInput("an ed25519 public key is 32 bytes")
    y = int.from_bytes(ed_pub, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def _bech32_polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def bech32(hrp: str, data: bytes) -> str:
    acc, bits, five = 0, 0, []
    for b in data:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = _bech32_polymod(expanded + five + [0] * 6) ^ 1
    check = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in five + check)


def age_x25519_recipient(pub: IdentityPublic) -> str:
    """What `ssh-to-age` prints for the host's ed25519 key: `age1...`."""
    blob = ssh_blob(pub.ssh_ed25519)  # string "ssh-ed25519" | string key[32]
    if blob[:15] != b"\x00\x00\x00\x0bssh-ed25519" or blob[15:19] != b"\x00\x00\x00\x20":
        raise InvalidInput("not an ssh-ed25519 public key")
    return bech32("age", ed25519_to_x25519_public(blob[19:51]))
