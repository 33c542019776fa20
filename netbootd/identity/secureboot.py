"""Secure Boot with the operator's own keys: PK, KEK and db, UKI signing, key export.

    <state>/secureboot/   0700
      PK.key KEK.key db.key     0600  RSA-2048 (made by `netbootd secureboot init`, or imported)
      PK.crt KEK.crt db.crt     0644  self-signed, 10 years
      owner                     0644  the signature owner GUID written into the ESLs

`import_keys` takes the operator's own instead: db.key + its certificate (what signs) and the
PK and KEK certificates (what is enrolled), PK.key and KEK.key only if given.
`export` writes what firmware enrolls: `<name>.esl` (EFI signature lists, codec/efi), `.crt`
(PEM), `.cer` (DER, for setup menus and `mokutil --import`), and `.auth`: each list as a signed,
time-based authenticated variable update (efitools' sign-efi-sig-list: PK.auth signed by PK,
KEK.auth by PK, db.auth by KEK) that firmware setup menus, KeyTool and `efi-updatevar` accept in
user mode -- written only for the keys whose signer's private key netbootd holds. Machines that
keep Microsoft's keys boot Debian's shim (boot.shim, served as is: netbootd never signs it),
which verifies the UKI against MokList: db.cer enrolled as a MOK. Every UKI netbootd serves is
signed with db.key by sbsign (sbsigntool): a well-kept, widely used signer whose output EDK2
and shim verify; netbootd's own Authenticode hash (codec/pe) is checked against it in the tests.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from netbootd.codec import efi
from netbootd.errors import InvalidInput, NetbootdError, NotFound
from netbootd.fsutil import private_dir, write_file

KEYS = ("PK", "KEK", "db")
DAYS = 3650


def sb_dir(state_dir: Path) -> Path:
    return state_dir / "secureboot"


def _self_signed(name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netbootd"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"netbootd Secure Boot {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def init(state_dir: Path, force: bool = False) -> Path:
    """Make PK, KEK and db (refuses to replace existing keys unless `force`)."""
    d = private_dir(sb_dir(state_dir))
    if (d / "db.key").exists() and not force:
        raise NetbootdError(f"Secure Boot keys exist in {d} (--force replaces them; enrolled "
                            "machines then refuse netbootd's UKIs until re-enrolled)")
    for name in KEYS:
        key, cert = _self_signed(name)
        write_file(d / f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        write_file(d / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    write_file(d / "owner", f"{uuid.uuid4()}\n".encode(), 0o644)
    return d


@dataclass(frozen=True)
class Signer:
    """netbootd's db key and certificate; `sign` returns a signed copy of a PE image."""

    key: Path
    cert: Path

    @classmethod
    def load(cls, state_dir: Path) -> Signer | None:
        d = sb_dir(state_dir)
        if not (d / "db.key").is_file() or not (d / "db.crt").is_file():
            return None
        return cls(d / "db.key", d / "db.crt")

    def sign(self, image: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="netbootd-sign-") as tmp:
            src, out = Path(tmp) / "in.efi", Path(tmp) / "out.efi"
            src.write_bytes(image)
            try:
                r = subprocess.run(["sbsign", "--key", str(self.key), "--cert", str(self.cert),
                                    "--output", str(out), str(src)], capture_output=True,
                                   text=True, timeout=120, check=False)
            except FileNotFoundError:
                raise NetbootdError("sbsign not found (Debian: sbsigntool)") from None
            if r.returncode != 0:
                raise NetbootdError(f"sbsign failed: {r.stderr.strip()[-300:]}")
            return out.read_bytes()


def _load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: missing") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    try:
        return (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        raise InvalidInput(f"{path}: not an X.509 certificate (PEM or DER)") from None


def _load_key(path: Path, cert: x509.Certificate) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise InvalidInput(f"{path}: Secure Boot keys are RSA of at least 2048 bits")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise InvalidInput(f"{path} is not the key of {path.with_suffix('.crt').name}")
    return key


def import_keys(state_dir: Path, src: Path, owner_guid: uuid.UUID | None = None,
                force: bool = False) -> list[str]:
    """The operator's keys from `src` (<name>.crt PEM or DER, <name>.key PEM): db.key, db.crt,
    KEK.crt and PK.crt are needed; PK.key and KEK.key are taken when present (only the .auth
    exports need them: keep them offline otherwise). Checked first (each key is its
    certificate's, RSA >= 2048), then the whole directory is replaced at once. Returns the key
    names whose private halves were imported."""
    d = sb_dir(state_dir)
    if (d / "db.key").exists() and not force:
        raise NetbootdError(f"Secure Boot keys exist in {d} (--force replaces them; enrolled "
                            "machines then refuse netbootd's UKIs until re-enrolled)")
    certs = {n: _load_cert(src / f"{n}.crt") for n in KEYS}
    keys = {n: _load_key(src / f"{n}.key", certs[n]) for n in KEYS
            if n == "db" or (src / f"{n}.key").exists()}
    parent = private_dir(d.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".secureboot-", dir=parent))  # 0700
    old = parent / f".secureboot-old-{os.getpid()}"
    try:
        for n, cert in certs.items():
            write_file(tmp / f"{n}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        for n, key in keys.items():
            write_file(tmp / f"{n}.key", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600)
        write_file(tmp / "owner", f"{owner_guid or uuid.uuid4()}\n".encode(), 0o644)
        if d.exists():
            os.replace(d, old)
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: the old keys stay as they were
        if old.exists() and not d.exists():
            os.replace(old, d)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return sorted(keys)


# what signs each variable's .auth: PK itself, PK for KEK, KEK for db
AUTH_SIGNER = {"PK": "PK", "KEK": "PK", "db": "KEK"}


def _auth(d: Path, name: str, esl: Path, out: Path, owner_guid: str) -> Path | None:
    signer = AUTH_SIGNER[name]
    if not (d / f"{signer}.key").is_file():
        return None
    dest = out / f"{name}.auth"
    try:
        r = subprocess.run(["sign-efi-sig-list", "-g", owner_guid, "-k", str(d / f"{signer}.key"),
                            "-c", str(d / f"{signer}.crt"), name, str(esl), str(dest)],
                           capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise NetbootdError("sign-efi-sig-list not found (Debian: efitools)") from None
    if r.returncode != 0 or not dest.is_file():
        raise NetbootdError(f"sign-efi-sig-list {name} failed: {r.stderr.strip()[-300:]}")
    dest.chmod(0o644)
    return dest


def export(state_dir: Path, out: Path) -> list[Path]:
    """PK/KEK/db as ESL, PEM, DER and signed .auth updates into `out`; public halves only."""
    d = sb_dir(state_dir)
    if not (d / "PK.crt").is_file():
        raise NotFound(f"no Secure Boot keys in {d}: netbootd secureboot init")
    owner = uuid.UUID((d / "owner").read_text().strip())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in KEYS:
        cert = x509.load_pem_x509_certificate((d / f"{name}.crt").read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        for suffix, data in ((".esl", efi.signature_list(der, owner)), (".cer", der),
                             (".crt", cert.public_bytes(serialization.Encoding.PEM))):
            write_file(out / f"{name}{suffix}", data, 0o644)
            written.append(out / f"{name}{suffix}")
    for name in KEYS:
        auth = _auth(d, name, out / f"{name}.esl", out, str(owner))
        if auth is not None:
            written.append(auth)
    return written


def owner(state_dir: Path) -> str:
    return (sb_dir(state_dir) / "owner").read_text().strip()


def db_fingerprint(state_dir: Path) -> str | None:
    """SHA-256 of netbootd's db certificate (what a MOK or db entry must be), or None."""
    path = sb_dir(state_dir) / "db.crt"
    if not path.is_file():
        return None
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def shim_notes(state_dir: Path, shim: Path) -> list[str]:
    """What the shim path needs, as lines: the binary, the keys, the MOK."""
    out = [f"shim: {shim} (Microsoft-signed, verified by the firmware's db; served as is)"
           if shim.is_file() else
           f"shim: {shim} is MISSING: shim hosts are refused (Debian: shim-signed, or set "
           "boot.shim)"]
    fp = db_fingerprint(state_dir)
    if fp is None:
        out.append("no signing keys: shim hosts are refused (netbootd secureboot init)")
    else:
        out.append(f"UKIs signed by db {fp[:32]}...: enroll db.cer as a MOK (`netbootd "
                   "secureboot export DIR`, then `mokutil --import DIR/db.cer` and reboot)")
    return out


def show(state_dir: Path, shim: Path) -> list[str]:
    """`secureboot show`: the keys (certificates' fingerprints and expiry) and the shim path."""
    d = sb_dir(state_dir)
    if not (d / "PK.crt").is_file():
        lines = [f"no Secure Boot keys in {d}: UKIs are served unsigned (netbootd secureboot "
                 "init)"]
    else:
        lines = [f"Secure Boot keys in {d} (owner GUID {owner(state_dir)})"]
        for name in KEYS:
            cert = x509.load_pem_x509_certificate((d / f"{name}.crt").read_bytes())
            lines.append(f"  {name:4} sha256 {cert.fingerprint(hashes.SHA256()).hex()} "
                         f"until {cert.not_valid_after_utc.date()}")
    return [*lines, *shim_notes(state_dir, shim)]
