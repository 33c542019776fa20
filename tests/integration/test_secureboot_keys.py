"""`netbootd secureboot import` of keys the operator made with openssl, and the signed .auth
updates `secureboot export` writes (efitools' sign-efi-sig-list), checked with openssl's CMS
verifier against the bytes UEFI signs (name, vendor GUID, attributes, timestamp, the list):
PK.auth signed by PK, KEK.auth by PK, db.auth by KEK. The firmware's own check of those files
is tests/e2e/test_e2e_sb_enroll.py."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed.skips import require

GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # EFI_GLOBAL_VARIABLE (PK, KEK)
IMAGE_DB = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")  # EFI_IMAGE_SECURITY_DATABASE
PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")  # EFI_CERT_TYPE_PKCS7_GUID
TIME_AUTH_ATTRS = 0x27  # NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
OWNER = "0c8a3b4e-6f1d-4c2a-9e5b-7d3f2a1b0c9d"


def _netbootd(state: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "netbootd", "--state-dir", str(state), *args],
                       capture_output=True, text=True, check=False, timeout=120)
    assert (r.returncode == 0) is ok, (args, r.returncode, r.stdout, r.stderr)
    return r


def _openssl_keys(d: Path, *names: str, bits: int = 2048) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", f"rsa:{bits}", "-nodes",
                        "-subj", f"/CN=operator {n}/", "-days", "3650", "-sha256",
                        "-keyout", str(d / f"{n}.key"), "-out", str(d / f"{n}.crt")],
                       check=True, capture_output=True, timeout=120)
    return d


SIGNED_DATA_OID = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _split_auth(auth: bytes) -> tuple[bytes, bytes, bytes]:
    """EFI_VARIABLE_AUTHENTICATION_2: EFI_TIME, WIN_CERTIFICATE_UEFI_GUID (PKCS7), the ESL."""
    timestamp = auth[:16]
    length, revision, cert_type = struct.unpack_from("<IHH", auth, 16)
    assert (revision, cert_type) == (0x0200, 0x0EF1)  # WIN_CERT_TYPE_EFI_GUID
    assert uuid.UUID(bytes_le=auth[24:40]) == PKCS7_GUID
    return timestamp, auth[40:16 + length], auth[16 + length:]


def _verify(tmp: Path, var: str, auth_path: Path, signer: Path) -> None:
    """openssl checks the PKCS7 signature over what UEFI signs, and that `signer` made it."""
    timestamp, pkcs7, esl = _split_auth(auth_path.read_bytes())
    vendor = IMAGE_DB if var == "db" else GLOBAL
    signed = (var.encode("utf-16-le") + vendor.bytes_le + struct.pack("<I", TIME_AUTH_ATTRS)
              + timestamp + esl)
    (tmp / "content").write_bytes(signed)
    # UEFI carries a bare SignedData; openssl reads a ContentInfo (id-signedData, [0] content)
    (tmp / "sig.der").write_bytes(_der(0x30, _der(0x06, SIGNED_DATA_OID) + _der(0xA0, pkcs7)))
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        str(tmp / "sig.der"), "-content", str(tmp / "content"), "-noverify",
                        "-signer", str(tmp / "signer.pem"), "-out", "/dev/null"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, (var, r.stderr)
    made_by = x509.load_pem_x509_certificate((tmp / "signer.pem").read_bytes())
    want = x509.load_pem_x509_certificate(signer.read_bytes())
    assert made_by == want, (var, made_by.subject, want.subject)
    # ... and a changed byte of the list fails the check
    (tmp / "content").write_bytes(signed[:-1] + bytes([signed[-1] ^ 1]))
    bad = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                          str(tmp / "sig.der"), "-content", str(tmp / "content"), "-noverify",
                          "-out", "/dev/null"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0


@pytest.fixture
def tools() -> None:
    require([f"{t} not found (Debian: {p})" for t, p in
             (("openssl", "openssl"), ("sign-efi-sig-list", "efitools"))
             if shutil.which(t) is None])


def test_import_openssl_keys_and_export_signed_auth_files(tmp_path: Path, tools: None) -> None:
    src = _openssl_keys(tmp_path / "mine", "PK", "KEK", "db")
    state = tmp_path / "state"
    out = _netbootd(state, "secureboot", "import", str(src), "--owner", OWNER).stdout
    assert "KEK, PK, db key(s)" in out, out
    d = state / "secureboot"
    for n in ("PK", "KEK", "db"):
        assert (d / f"{n}.key").stat().st_mode & 0o777 == 0o600
        assert (d / f"{n}.crt").read_bytes() == (src / f"{n}.crt").read_bytes()
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "owner").read_text().strip() == OWNER
    exported = tmp_path / "export"
    text = _netbootd(state, "secureboot", "export", str(exported)).stdout
    assert "efi-updatevar -f" in text and OWNER in text
    for var, signer in (("PK", "PK"), ("KEK", "PK"), ("db", "KEK")):
        auth = exported / f"{var}.auth"
        _, _, esl = _split_auth(auth.read_bytes())
        assert esl == (exported / f"{var}.esl").read_bytes()  # the list it carries
        assert str(uuid.UUID(bytes_le=esl[28:44])) == OWNER  # its signature owner
        _verify(tmp_path, var, auth, src / f"{signer}.crt")
    assert not any(p.suffix == ".key" for p in exported.iterdir())  # public halves only
    # db.auth was made by KEK, not by PK
    with pytest.raises(AssertionError):
        _verify(tmp_path, "db", exported / "db.auth", src / "PK.crt")


def test_import_without_pk_and_kek_keys_exports_no_auth(tmp_path: Path, tools: None) -> None:
    src = _openssl_keys(tmp_path / "mine", "PK", "KEK", "db")
    (src / "PK.key").unlink()
    (src / "KEK.key").unlink()
    state = tmp_path / "state"
    out = _netbootd(state, "secureboot", "import", str(src)).stdout
    assert "db key(s)" in out and "no PK/KEK/db .auth" in out, out
    assert not (state / "secureboot" / "PK.key").exists()
    exported = tmp_path / "export"
    _netbootd(state, "secureboot", "export", str(exported))
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        f"{n}.{s}" for n in ("PK", "KEK", "db") for s in ("esl", "cer", "crt"))


def test_bad_imports_are_refused_and_leave_the_keys_alone(tmp_path: Path, tools: None) -> None:
    state = tmp_path / "state"
    _netbootd(state, "secureboot", "init")
    before = {p.name: p.read_bytes() for p in (state / "secureboot").iterdir()}
    good = _openssl_keys(tmp_path / "good", "PK", "KEK", "db")
    other = _openssl_keys(tmp_path / "other", "db")

    def broken(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    mismatched = broken("mismatched")
    shutil.copyfile(other / "db.key", mismatched / "db.key")
    no_db_key = broken("no-db-key")
    (no_db_key / "db.key").unlink()
    garbage = broken("garbage")
    (garbage / "KEK.crt").write_bytes(b"not a certificate\x00\xff")
    ec = broken("ec")
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=ec db/", "-keyout",
                    str(ec / "db.key"), "-out", str(ec / "db.crt")], check=True,
                   capture_output=True)
    small = broken("small")
    _openssl_keys(small, "db", bits=1024)
    cases = {mismatched: "is not the key of db.crt", no_db_key: "db.key",
             garbage: "not an X.509 certificate", ec: "RSA of at least 2048",
             small: "RSA of at least 2048"}
    for src, why in cases.items():
        r = _netbootd(state, "secureboot", "import", str(src), "--force", ok=False)
        assert r.returncode == 2 and why in r.stderr, (src.name, r.stderr)
        assert "Traceback" not in r.stderr
        assert {p.name: p.read_bytes() for p in (state / "secureboot").iterdir()} == before
    r = _netbootd(state, "secureboot", "import", str(good), ok=False)  # no --force
    assert "--force replaces them" in r.stderr
    _netbootd(state, "secureboot", "import", str(good), "--force")
    assert (state / "secureboot" / "db.crt").read_bytes() == (good / "db.crt").read_bytes()
    assert not [p for p in state.iterdir() if p.name.startswith(".secureboot")]
    key = serialization.load_pem_private_key((state / "secureboot" / "db.key").read_bytes(),
                                             None)
    assert key.key_size == 2048  # type: ignore[union-attr]
