"""compose.py on a synthetic store directory (no Nix needed): per-path archives, cache hits,
and an incremental compose that unpacks (GNU cpio, member by member) to the from-scratch tree."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
from pathlib import Path

import pytest
from initrd_tools import snapshot, split_members, unpack

from netbootd.codec import cpio
from netbootd.errors import InvalidInput
from netbootd.roles.compose import ComposeCache, compose, compose_file

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def make_store(root: Path, n: int = 12, version: str = "1") -> list[Path]:
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = store / f"{i:032d}-pkg{i}"
        if i == 0:  # a store path that is a single file
            if not p.exists():
                p.write_text("just a file\n")
                p.chmod(0o444)
        elif not p.exists():
            (p / "bin").mkdir(parents=True)
            (p / "bin" / f"tool{i}").write_bytes(os.urandom(1000 + i) + b"tool" * 50)
            (p / "bin" / f"tool{i}").chmod(0o555)
            (p / "share").mkdir()
            (p / "share" / "doc").write_text(f"doc {i}\n" * 10)
            os.symlink(f"../bin/tool{i}", p / "share" / "link")
        paths.append(p)
    changed = store / f"{'c' * 32}-config-{version}"
    if not changed.exists():
        changed.mkdir()
        (changed / "etc").mkdir()
        (changed / "etc" / "version").write_text(version + "\n")
    paths.append(changed)
    return paths


def composed(paths: list[Path], cache: ComposeCache, **kw) -> tuple[bytes, object]:
    buf = io.BytesIO()
    stats = compose(paths, cache, buf.write, **kw)
    return buf.getvalue(), stats


def test_each_path_is_one_gzip_member_and_cached(tmp_path: Path) -> None:
    paths = make_store(tmp_path / "s")
    cache = ComposeCache(tmp_path / "state")
    data, stats = composed(paths, cache, registration=b"reg\n")
    assert (stats.paths, stats.hits, stats.misses) == (len(paths), 0, len(paths))
    assert sorted(stats.compressed) == sorted(map(str, paths))
    members = split_members(data)
    assert len(members) == 1 + len(paths) + 1  # leader + one per path + registration
    assert stats.size == len(data)
    # The leader makes every parent of the store directory; the kernel will not.
    leader = [e.name for e in cpio.parse(members[0]) if e is not None]
    store_rel = str(paths[0].parent).lstrip("/")
    assert leader[-1] == store_rel and all(store_rel.startswith(n) for n in leader)
    # Cached: one file per store path, named after it.
    assert sorted(p.name for p in cache.entries()) == sorted(p.name for p in paths)
    again, stats2 = composed(paths, cache, registration=b"reg\n")
    assert (stats2.hits, stats2.misses, stats2.compressed) == (len(paths), 0, [])
    assert again == data  # reproducible


@needs_cpio
def test_incremental_equals_from_scratch(tmp_path: Path) -> None:
    cache = ComposeCache(tmp_path / "state")
    gen1 = make_store(tmp_path / "s", version="1")
    composed(gen1, cache)
    gen2 = make_store(tmp_path / "s", version="2")  # one path replaced
    inc, stats = composed(gen2, cache)
    assert stats.misses == 1 and stats.compressed == [str(gen2[-1])]
    assert stats.hits == len(gen2) - 1
    scratch, s2 = composed(gen2, ComposeCache(tmp_path / "fresh"))
    assert s2.misses == len(gen2)
    assert inc == scratch
    # And what the kernel would see, member by member through GNU cpio, is the store itself.
    unpack(inc, tmp_path / "root")
    root_store = tmp_path / "root" / str(gen2[0].parent).lstrip("/")
    got = snapshot(root_store)
    want = {k: v for k, v in snapshot(gen2[0].parent).items()
            if k.split("/")[0] in {p.name for p in gen2}}
    assert got == want
    assert (root_store / gen2[-1].name / "etc" / "version").read_text() == "2\n"


def test_xz_and_none(tmp_path: Path) -> None:
    paths = make_store(tmp_path / "s", n=3)
    for kind in ("xz", "none"):
        data, _ = composed(paths, ComposeCache(tmp_path / kind, kind))
        trees = [cpio.tree(m) for m in split_members(data)]
        assert len(trees) == 1 + len(paths)
        merged = {k: v for t in trees for k, v in t.items()}
        f = str(paths[1] / "share" / "doc").lstrip("/")
        assert merged[f] == (stat.S_IFREG | 0o644, b"doc 1\n" * 10)


def test_gzip_decompresses_as_one_stream_too(tmp_path: Path) -> None:
    # Multi-member gzip is also valid to plain gunzip: tools that treat the initrd as one
    # gzip file (file(1), lsinitramfs) still work.
    paths = make_store(tmp_path / "s", n=3)
    data, _ = composed(paths, ComposeCache(tmp_path / "st"))
    assert gzip.decompress(data).count(b"TRAILER!!!") == 1 + len(paths)


def test_compose_file_hashes(tmp_path: Path) -> None:
    import hashlib
    paths = make_store(tmp_path / "s", n=2)
    stats, sha = compose_file(paths, ComposeCache(tmp_path / "st"), tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == sha
    assert stats.size == (tmp_path / "out").stat().st_size


def test_bad_inputs(tmp_path: Path) -> None:
    cache = ComposeCache(tmp_path / "st")
    with pytest.raises(InvalidInput, match="empty"):
        compose([], cache, lambda b: None)
    with pytest.raises(InvalidInput, match="one store directory"):
        compose([tmp_path / "a" / "x", tmp_path / "b" / "y"], cache, lambda b: None)
    with pytest.raises(InvalidInput, match="does not exist"):
        compose([tmp_path / "store" / "nope"], cache, lambda b: None)
    with pytest.raises(InvalidInput, match="unknown compression"):
        ComposeCache(tmp_path, "lz4")  # type: ignore[arg-type]
    assert not list((tmp_path / "st").rglob(".new-*")), "a failed compose leaves no temp file"
