"""Host identities at rest, and the operations that make new ones.

    <state>/identity/                      0700
      token.secret                         0600  HMAC key for per-boot tokens (keys.py)
      <mac aa-bb-cc-dd-ee-ff>/             0700
        <created>-<random>/                0700  one generation; its row in the store names it
          ssh_host_ed25519_key(.pub)       0600
          ssh_host_rsa_key(.pub)           0600
          machine-id  wireguard.key  wireguard.pub   0600

Every file is 0600, public halves too: the directory is the operator's, not the world's. A
generation is written to a temporary directory and renamed into place; its store row (public
keys, generation number, arming) is added only after that, so a crash leaves at worst an
unreferenced directory, never a row without keys. Older generations are kept (`keys rotate`).

**RSA later.** An RSA-4096 key takes ~1 s to make, everything else ~1 ms: `enroll --from`
(bulk) records identities with the RSA key pending (an empty `ssh_rsa`), and `complete_rsa`
makes it -- in `serve`'s background job (servers/rsa_filler.py), or on first need: before a
bundle is delivered. It writes the two files into the generation's directory, then records the
public half only where it is still pending, under a lock file in that directory, so two
processes never record different keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import time
from pathlib import Path

from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.fsutil import fsync_dir, private_dir, write_file
from netbootd.identity import hostkeys
from netbootd.identity.hostkeys import IdentityKeys
from netbootd.model import Host, IdentityPublic, MacAddress
from netbootd.store import Store

SECRET_NAME = "token.secret"
_FILES = {
    "ssh_ed25519_key": "ssh_host_ed25519_key",
    "ssh_ed25519_pub": "ssh_host_ed25519_key.pub",
    "ssh_rsa_key": "ssh_host_rsa_key",
    "ssh_rsa_pub": "ssh_host_rsa_key.pub",
    "machine_id": "machine-id",
    "wg_private": "wireguard.key",
    "wg_public": "wireguard.pub",
}


class Vault:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "identity"

    def host_dir(self, mac: MacAddress) -> Path:
        return self.root / mac.hyphen

    def write(self, mac: MacAddress, keys: IdentityKeys, created: float,
              durable: bool = True) -> str:
        """Write one generation; returns its directory name (recorded in the store).
        durable=False: no fsyncs (the bulk caller runs os.sync() once before recording)."""
        host_dir = private_dir(self.host_dir(mac))
        private_dir(self.root)
        name = f"{int(created)}-{secrets.token_hex(4)}"
        tmp = host_dir / f".{name}.tmp"
        try:
            tmp.mkdir(mode=0o700)
            os.chmod(tmp, 0o700)
            for attr, fname in _FILES.items():
                value = getattr(keys, attr)
                if attr.startswith("ssh_rsa") and not keys.ssh_rsa_pub:
                    continue  # pending: complete_rsa writes them
                data = value if isinstance(value, bytes) else (value + "\n").encode()
                write_file(tmp / fname, data, 0o600, durable=durable)
            os.rename(tmp, host_dir / name)
            if durable:
                fsync_dir(host_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot write the identity of {mac} in {host_dir}: "
                             f"{e.strerror or e}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def remove(self, mac: MacAddress, directory: str) -> None:
        """Remove a generation that was written but never recorded (and the host's directory,
        if that leaves it empty)."""
        if directory and "/" not in directory and not directory.startswith("."):
            shutil.rmtree(self.host_dir(mac) / directory, ignore_errors=True)
            with contextlib.suppress(OSError):  # not empty: other generations live there
                self.host_dir(mac).rmdir()

    def path(self, pub: IdentityPublic) -> Path:
        if not pub.directory or "/" in pub.directory or pub.directory.startswith("."):
            raise StoreError(f"identity generation {pub.generation} of {pub.mac} names no "
                             "directory")
        return self.host_dir(pub.mac) / pub.directory

    def read(self, pub: IdentityPublic) -> IdentityKeys:
        """The private keys of the generation `pub` describes; a StoreError if they are missing,
        unreadable or do not belong to `pub` (never a silently different identity)."""
        d = self.path(pub)
        values: dict[str, object] = {}
        try:
            for attr, fname in _FILES.items():
                if attr.startswith("ssh_rsa") and not pub.ssh_rsa:
                    values[attr] = b"" if attr.endswith("_key") else ""
                    continue
                data = (d / fname).read_bytes()
                values[attr] = data if attr.endswith("_key") else data.decode().strip()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not text"
            raise StoreError(f"cannot read the identity of {pub.mac} in {d}: {why}") from None
        keys = IdentityKeys(**values)  # type: ignore[arg-type]
        if (keys.ssh_ed25519_pub, keys.ssh_rsa_pub, keys.machine_id, keys.wg_public) != (
            pub.ssh_ed25519, pub.ssh_rsa, pub.machine_id, pub.wg_public
        ):
            raise StoreError(f"the key files in {d} do not match the store's record of {pub.mac}")
        return keys

    def token_secret(self) -> bytes:
        """The HMAC key for per-boot tokens, created (0600) by whoever needs it first."""
        path = self.root / SECRET_NAME
        for _ in range(2):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                private_dir(self.root)
                with contextlib.suppress(FileExistsError):
                    write_file(path, secrets.token_bytes(32), 0o600, exclusive=True)
                continue
            except OSError as e:
                raise StoreError(f"cannot read {path}: {e.strerror}") from None
            if len(data) < 32:
                raise StoreError(f"{path} is damaged (shorter than 32 bytes); remove it to make a "
                                 "new one")
            return data
        raise StoreError(f"cannot create {path}")  # pragma: no cover


def prepare_identity(store: Store, keys_at_rest: Vault, mac: MacAddress, name: str,
                     taken: set[str] | None = None, with_rsa: bool = True,
                     durable: bool = True) -> IdentityPublic:
    """Generate a new identity for `mac` in memory and write its files (0600); return its public
    half for the store to record (generation 0: the store numbers it). The caller records it in
    a transaction and calls `keys_at_rest.remove` if that fails. `taken`: the hostIds in use
    (read from the store unless given; the new one is added); `with_rsa=False`: RSA pending."""
    if taken is None:
        taken = store.identity_hostids(exclude=mac)
    keys = hostkeys.generate(f"root@{name}", taken, with_rsa=with_rsa)
    taken.add(keys.hostid)
    now = time.time()
    directory = keys_at_rest.write(mac, keys, now, durable)
    return keys.public(mac, 0, now, directory)


def complete_rsa(store: Store, keys_at_rest: Vault, pub: IdentityPublic) -> IdentityPublic:
    """Make the pending RSA host key of the generation `pub` names (a no-op if it has one):
    files first (0600), then the public half in the store where still pending. Returns the
    generation as recorded afterwards."""
    if pub.ssh_rsa:
        return pub
    d = keys_at_rest.path(pub)
    try:
        lock = os.open(d / ".rsa.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot lock {d}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = store.identity(pub.mac, pub.generation)
        if now is None:
            raise NotFound(f"{pub.mac} has no identity generation {pub.generation}")
        if now.ssh_rsa:  # another process made it while we waited for the lock
            return now
        comment = pub.ssh_ed25519.split()[2] if len(pub.ssh_ed25519.split()) > 2 else ""
        rsa_pub, rsa_key = hostkeys.rsa_keypair(comment)
        write_file(d / _FILES["ssh_rsa_key"], rsa_key, 0o600)
        write_file(d / _FILES["ssh_rsa_pub"], (rsa_pub + "\n").encode(), 0o600)
        store.set_identity_rsa(pub.mac, pub.generation, rsa_pub)
        done = store.identity(pub.mac, pub.generation)
        assert done is not None
        return done
    finally:
        os.close(lock)


def create_identity(
    store: Store, keys_at_rest: Vault, host: Host, *, arm: bool, event: str, via: str = "cli"
) -> IdentityPublic:
    """Make a new identity generation for `host` (keeping older ones) and optionally arm it.

    Keys are generated in memory, written to disk, then recorded (with an audit `event`) in one
    store transaction. If recording fails, the files just written are removed again.
    """
    pub = prepare_identity(store, keys_at_rest, host.mac, host.hostname or host.mac.hyphen)
    try:
        return store.add_identity(pub, arm=arm, event=event, via=via)
    except BaseException:
        keys_at_rest.remove(host.mac, pub.directory)
        raise


def enroll(store: Store, keys_at_rest: Vault, mac: MacAddress, role: str,
           hostname: str | None, canon: str | None, tags: list[str], *, identity: bool
           ) -> tuple[Host, bool, IdentityPublic | None, bool]:
    """Enroll `mac` and, unless `identity` is False, make sure it has an identity: a new host
    gets one in the same transaction as its row (keys written first), an enrolled host that has
    none (an enroll killed before this fix, or `--no-identity` earlier) gets one now. Returns
    (host, created, identity made now or None, whether an existing identity was re-armed)."""
    if store.role(role) is None:  # before the keys are made: an RSA key takes a second
        known = ", ".join(r.name for r in store.roles())
        raise NotFound(f"unknown role {role!r} (known roles: {known or 'none yet'})")
    existing = store.host(mac)
    if identity and (existing is None or store.identity(mac) is None):
        name = hostname or (existing.name if existing else mac.hyphen)
        pub = prepare_identity(store, keys_at_rest, mac, name)
        try:
            host, created, made = store.enroll_with_identity(mac, role, hostname, canon, tags,
                                                             pub)
        except BaseException:
            keys_at_rest.remove(mac, pub.directory)
            raise
        return host, created, made, False
    host, created = store.enroll(mac, role, hostname, canon, tags)
    if created and identity:  # re-enrolled: its kept identity is handed out again
        store.arm_identity(mac, armed=True)
        return host, created, None, True
    return host, created, None, False


def current(store: Store, host: Host) -> IdentityPublic:
    pub = store.identity(host.mac)
    if pub is None:
        raise NotFound(f"{host.name} has no identity yet: netbootd keys generate {host.name}")
    return pub


def check_new(store: Store, host: Host) -> None:
    """`keys generate` makes a first identity only; replacing one is `keys rotate`."""
    pub = store.identity(host.mac)
    if pub is not None:
        raise InvalidInput(
            f"{host.name} already has an identity (generation {pub.generation}); "
            f"`netbootd keys rotate {host.name}` replaces it"
        )
