"""Disk clones: sparse copy (holes kept, progress reported), reflink detection, qcow2 overlays,
and the `auto` fallback order. The reflink success path and serving qcow2 overlays through FUSE
are exercised by tests/integration/test_iscsi_tgtd.py (XFS on a loop device,
qemu-storage-daemon)."""

import os
import shutil
import subprocess

import pytest

from netbootd.errors import InvalidInput
from netbootd.stemcell import clone


def gold(tmp_path, size=8 << 20):
    p = tmp_path / "gold.img"
    with open(p, "wb") as f:
        f.write(b"MBR" + bytes(509))
        f.seek(4 << 20)
        f.write(b"middle")
        f.truncate(size)
    return p


def test_sparse_copy_keeps_holes_and_reports_progress(tmp_path):
    src = gold(tmp_path)
    seen = []
    clone.sparse_copy(src, tmp_path / "copy.img", lambda d, t: seen.append((d, t)))
    out = tmp_path / "copy.img"
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_blocks * 512 <= 2 << 20  # only the two 1 MiB chunks holding data
    assert seen[-1] == (8 << 20, 8 << 20) and len(seen) == 8
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_reflink_says_no_on_a_filesystem_without_it(tmp_path):
    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fstype in ("xfs", "btrfs", "bcachefs"):
        pytest.skip(f"{tmp_path} is {fstype}: it may reflink")
    src = gold(tmp_path)
    assert clone.reflink(src, tmp_path / "r.img") is False
    assert not (tmp_path / "r.img").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(clone.CloneError, match="cannot reflink"):
        clone.clone(src, tmp_path / "root", "reflink")


@pytest.mark.skipif(
    clone.qcow2_available() is not None, reason="no qemu-img/qemu-storage-daemon/fuse"
)
def test_auto_falls_back_to_a_qcow2_overlay(tmp_path):
    src = gold(tmp_path)
    if clone.reflink(src, tmp_path / "probe.img"):
        pytest.skip("this filesystem reflinks")
    method, made = clone.clone(src, tmp_path / "root")
    assert method is clone.Method.QCOW2 and made == tmp_path / "root.qcow2"
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(made)], capture_output=True, text=True, check=True
    ).stdout
    assert f'"backing-filename": "{src}"' in info and '"backing-filename-format": "raw"' in info


def test_copy_when_asked(tmp_path):
    src = gold(tmp_path)
    method, made = clone.clone(src, tmp_path / "root", "copy")
    assert method is clone.Method.COPY and made.read_bytes() == src.read_bytes()


def test_unknown_method(tmp_path):
    with pytest.raises(InvalidInput):
        clone.clone(gold(tmp_path), tmp_path / "root", "rsync")


def test_qcow2_refused_when_it_cannot_be_served(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(clone.CloneError, match="cannot be served here"):
        clone.clone(gold(tmp_path), tmp_path / "root", "qcow2")
    # auto then copies
    assert clone.clone(gold(tmp_path), tmp_path / "root", "auto")[0] in (
        clone.Method.COPY,
        clone.Method.REFLINK,
    )


def test_make_empty(tmp_path):
    clone.make_empty(tmp_path / "data.img", 16 << 20)
    st = os.stat(tmp_path / "data.img")
    assert st.st_size == 16 << 20 and st.st_blocks == 0
