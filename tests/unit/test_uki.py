"""UKI assembly per role generation and per boot (roles/uki.py), its Authenticode hash from a
saved state (codec/pe.py) checked against sbsign's (sbsigntool: the independent signer), and
signing with netbootd's Secure Boot db key (identity/secureboot.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from netbootd.codec import efi, pe
from netbootd.identity import secureboot
from netbootd.roles.artifacts import Artifacts
from netbootd.roles.uki import CMDLINE_SIZE, UkiBuilder
from netbootd.store import Store

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.exists() or shutil.which("sbsign") is None,
                                reason="needs systemd-boot-efi and sbsigntool (make deps)")


@pytest.fixture
def image(tmp_path: Path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"MZ" + bytes(range(256)) * 4000)  # objcopy does not look inside
    initrd.write_bytes(b"070701" + b"x" * 300_001)
    from netbootd.cli import main

    assert main(["--state-dir", str(tmp_path / "st"), "role", "add", "r", "--kernel",
                 str(kernel), "--initrd", str(initrd), "--cmdline", "console=ttyS0"]) == 0
    store = Store(tmp_path / "st")
    img = store.image("r", None)
    assert img is not None
    return tmp_path / "st", img


def _sbsign_digest(signed: bytes) -> bytes:
    """The SHA-256 in the SpcIndirectDataContent sbsign wrote (after the sha256 OID)."""
    p = pe.parse(signed)
    table = signed[p.cert_table[0] + 8 : p.cert_table[0] + p.cert_table[1]]
    oid = bytes.fromhex("0609608648016503040201")  # 2.16.840.1.101.3.4.2.1
    i = table.index(oid)
    j = table.index(b"\x04\x20", i)
    return table[j + 2 : j + 34]


def _masked(b: bytes, n: int) -> bytes:
    """The first n bytes without CheckSum and the certificate directory entry (sbsign sets them)."""
    p = pe.parse(b)
    out = bytearray(b[:n])
    out[p.checksum_offset : p.checksum_offset + 4] = bytes(4)
    out[p.cert_dir_offset : p.cert_dir_offset + 8] = bytes(8)
    return bytes(out)


def test_template_once_then_per_boot_command_line(image):
    state, img = image
    b = UkiBuilder(state, Artifacts(state))
    t = b.template(img, STUB)
    assert t is b.template(img, STUB), "cached in memory"
    assert UkiBuilder(state, Artifacts(state)).template(img, STUB).data == t.data, "and on disk"
    names = [s.name for s in sorted(t.image.sections, key=lambda s: s.raw_offset)]
    assert names[-4:] == [".osrel", ".linux", ".initrd", ".cmdline"]
    one = t.assemble("console=ttyS0 netbootd.boot=AAA")
    two = t.assemble("console=ttyS0 netbootd.boot=BBBB")
    assert len(one) == len(two) == t.size and t.size % 8 == 0
    sec = pe.parse(one).section(".cmdline")
    assert one[sec.raw_offset : sec.raw_offset + sec.raw_size].rstrip(b" ") == \
        b"console=ttyS0 netbootd.boot=AAA" and sec.raw_size == CMDLINE_SIZE
    kernel = Artifacts(state).path(img.kernel.sha256).read_bytes()
    lin = pe.parse(one).section(".linux")
    assert one[lin.raw_offset : lin.raw_offset + len(kernel)] == kernel
    with pytest.raises(Exception, match="holds"):
        t.assemble("x" * (CMDLINE_SIZE + 1))


def test_saved_hash_state_is_sbsigns_authenticode_digest(image, tmp_path):
    state, img = image
    t = UkiBuilder(state, Artifacts(state)).template(img, STUB)
    secureboot.init(state)
    signer = secureboot.Signer.load(state)
    assert signer is not None
    for cmdline in ("console=ttyS0 netbootd.boot=one", "quiet netbootd.boot=" + "z" * 300):
        unsigned = t.assemble(cmdline)
        signed = signer.sign(unsigned)
        assert _masked(signed, len(unsigned)) == _masked(unsigned, len(unsigned)), \
            "sbsign appends the certificate table only"
        assert _sbsign_digest(signed) == t.digest(cmdline)
        assert pe.authenticode_hasher(signed, pe.parse(signed)).digest() == t.digest(cmdline)
        (tmp_path / "s.efi").write_bytes(signed)
        r = subprocess.run(["sbverify", "--cert", str(secureboot.sb_dir(state) / "db.crt"),
                            str(tmp_path / "s.efi")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_secureboot_keys_private_and_exported(tmp_path):
    d = secureboot.init(tmp_path)
    for name in secureboot.KEYS:
        assert (d / f"{name}.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(Exception, match="exist"):
        secureboot.init(tmp_path)
    files = secureboot.export(tmp_path, tmp_path / "out")
    assert {f.name for f in files} == {f"{n}{s}" for n in secureboot.KEYS
                                       for s in (".esl", ".cer", ".crt", ".auth")}
    for f in files:
        assert b"PRIVATE" not in f.read_bytes()
    db = x509.load_pem_x509_certificate((d / "db.crt").read_bytes())
    [(kind, owner, der)] = efi.parse((tmp_path / "out" / "db.esl").read_bytes())
    assert kind == efi.EFI_CERT_X509_GUID and str(owner) == secureboot.owner(tmp_path)
    assert x509.load_der_x509_certificate(der) == db
