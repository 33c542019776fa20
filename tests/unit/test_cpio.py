"""codec/cpio.py: the newc writer against GNU cpio (both directions) and the pure parser."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from netbootd.codec import cpio

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def _entries() -> list[cpio.Entry]:
    return [
        cpio.Entry("d", stat.S_IFDIR | 0o755, nlink=2),
        cpio.Entry("d/file", stat.S_IFREG | 0o644, b"hello\n"),
        cpio.Entry("d/odd", stat.S_IFREG | 0o755, b"x" * 5),  # data needs padding
        cpio.Entry("d/empty", stat.S_IFREG | 0o444),
        cpio.Entry("d/link", stat.S_IFLNK | 0o777, b"file"),
        cpio.Entry("d/sub", stat.S_IFDIR | 0o555, nlink=2),
        cpio.Entry("d/sub/a-very-long-name" + "n" * 100, stat.S_IFREG | 0o600, b"\0\1\2"),
    ]


def test_header_layout_is_newc() -> None:
    e = cpio.Entry("ab", stat.S_IFREG | 0o644, b"xyz", mtime=1, ino=7)
    h = cpio.header(e)
    assert h[:6] == b"070701" and len(h) % 4 == 0
    assert h[6:14] == b"00000007"  # ino
    assert h[14:22] == b"000081A4"  # mode
    assert h[54:62] == b"00000003"  # filesize
    assert h[94:102] == b"00000003"  # namesize incl. NUL
    assert h[110:113] == b"ab\0"
    assert cpio.entry(e) == h + b"xyz\0"
    assert cpio.trailer().startswith(b"070701") and b"TRAILER!!!\0" in cpio.trailer()


def test_out_of_range_fields_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        cpio.header(cpio.Entry("x", stat.S_IFREG | 0o644, mtime=1 << 33))
    with pytest.raises(ValueError, match="too long"):
        cpio.header(cpio.Entry("x" * 5000, stat.S_IFREG))


def test_roundtrip_and_inode_numbers() -> None:
    data = cpio.archive(_entries())
    parsed = list(cpio.parse(data))
    assert parsed[-1] is None
    members = [e for e in parsed if e is not None]
    assert [e.name for e in members] == [e.name for e in _entries()]
    assert [e.ino for e in members] == list(range(1, len(members) + 1))
    assert members[4].data == b"file" and stat.S_ISLNK(members[4].mode)


def test_parse_concatenated_with_padding_and_later_members_win() -> None:
    a = cpio.archive([cpio.Entry("f", stat.S_IFREG | 0o644, b"one")])
    b = cpio.archive([cpio.Entry("f", stat.S_IFREG | 0o644, b"two"),
                      cpio.Entry("g", stat.S_IFREG | 0o644, b"")])
    data = a + b"\0" * 512 + b
    assert sum(1 for e in cpio.parse(data) if e is None) == 2
    assert cpio.tree(data) == {
        "f": (stat.S_IFREG | 0o644, b"two"),
        "g": (stat.S_IFREG | 0o644, b""),
    }


@pytest.mark.parametrize(
    "bad", [b"070702" + b"0" * 104, b"070701" + b"0" * 10, b"070701" + b"Z" * 104 + b"\0\0"]
)
def test_parse_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(cpio.CpioError):
        list(cpio.parse(bad))


@needs_cpio
def test_gnu_cpio_extracts_what_we_write(tmp_path: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        cwd=out,
        input=cpio.archive(_entries()),
        check=True,
    )
    assert (out / "d/file").read_bytes() == b"hello\n"
    assert (out / "d/empty").read_bytes() == b""
    assert os.readlink(out / "d/link") == "file"
    assert stat.S_IMODE((out / "d/odd").stat().st_mode) == 0o755
    assert (out / ("d/sub/a-very-long-name" + "n" * 100)).read_bytes() == b"\0\1\2"


@needs_cpio
def test_we_parse_what_gnu_cpio_writes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/c").write_bytes(b"data" * 1000)
    os.symlink("b/c", src / "a/l")
    names = "a\na/b\na/b/c\na/l\n"
    data = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=src,
        input=names.encode(),
        capture_output=True,
        check=True,
    ).stdout
    t = cpio.tree(data)
    assert t["a/b/c"][1] == b"data" * 1000 and t["a/l"][1] == b"b/c"
    assert stat.S_ISDIR(t["a/b"][0])
