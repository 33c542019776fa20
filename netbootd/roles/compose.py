"""Incremental initrd composition: one compressed newc archive per store path, cached.

A NixOS closure is hundreds to thousands of immutable store paths. Stock NixOS netboot packs them
all into one squashfs inside one initrd and recompresses everything on every rebuild. Here each
store path gets its own compressed cpio archive, kept in `<state>/compose-cache/` under the store
path's name (store paths never change content, so the name is the key); an initrd is the
concatenation

    leader (the store directory and its parents)
    + the cached archive of every path in the closure, in path order
    + the registration archive (`<store>/nix-path-registration`, for `nix-store --load-db`)

which Linux unpacks member by member (each compressed on its own). A rebuild after one path
changed compresses only the paths that are new in the closure; everything else is a cache hit.

I/O lives here (reading the store, the cache directory); the archive format is codec/cpio.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, Protocol

from netbootd.codec import cpio
from netbootd.errors import InvalidInput, StoreError
from netbootd.fsutil import new_temp

CACHE_DIR = "compose-cache"
FORMAT = "v1"  # bump when the bytes of an archive for the same path would change
CHUNK = 1 << 20
TEMP_PREFIX = ".new-"  # entries being written (artifacts.remove_dead_temp_files)
STORE_MTIME = 1  # what Nix sets on everything in the store
Compression = Literal["gzip", "xz", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "xz", "none")
REGISTRATION = "nix-path-registration"


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(kind: Compression, level: int | None = None) -> _Compressor:
    """A streaming compressor whose output Linux's initramfs unpacker reads."""
    if kind == "gzip":  # wbits 31: a gzip header (mtime 0), so the output is reproducible
        return zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
    if kind == "xz":  # the kernel's xz decoder supports the CRC32 check only
        return lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                   preset=6 if level is None else level)
    if kind == "none":
        return _Identity()
    raise InvalidInput(f"unknown compression {kind!r} (one of {', '.join(COMPRESSIONS)})")


# -- one path -> one archive -------------------------------------------------------------------


def _walk(root: Path) -> Iterable[Path]:
    """`root` and everything below it, depth first, names sorted: a directory always comes
    before its contents (the kernel needs that), and the order never depends on the disk."""
    stack = [root]
    while stack:
        p = stack.pop()
        yield p
        if p.is_dir() and not p.is_symlink():
            stack.extend(sorted(p.iterdir(), key=lambda c: c.name, reverse=True))


def _entries_of(src: Path, name: PurePosixPath) -> Iterable[tuple[cpio.Entry, Path | None]]:
    """(entry without data for regular files, file to stream) for the tree at `src`, archived
    under `name`. Ownership root, mtime STORE_MTIME; permissions as on disk."""
    for p in _walk(src):
        rel = p.relative_to(src)
        arc = str(name / rel) if str(rel) != "." else str(name)
        st = p.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            yield cpio.Entry(arc, stat.S_IFDIR | perm, mtime=STORE_MTIME, nlink=2), None
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(p).encode()
            yield cpio.Entry(arc, stat.S_IFLNK | 0o777, target, mtime=STORE_MTIME), None
        elif stat.S_ISREG(st.st_mode):
            yield cpio.Entry(arc, stat.S_IFREG | perm, mtime=STORE_MTIME), p
        else:
            raise InvalidInput(f"{p}: neither file, directory nor symlink (not a store path?)")


def write_tree_archive(
    src: Path, name: PurePosixPath, out: BinaryIO, kind: Compression, level: int | None = None
) -> None:
    """Write the compressed archive of the tree at `src` (named `name` inside) to `out`."""
    comp = compressor(kind, level)
    ino = 0
    for e, file in _entries_of(src, name):
        ino += 1
        if file is None:
            out.write(comp.compress(cpio.entry(cpio.Entry(
                e.name, e.mode, e.data, e.mtime, e.uid, e.gid, e.nlink, ino))))
            continue
        size = file.stat().st_size
        out.write(comp.compress(cpio.header(
            cpio.Entry(e.name, e.mode, b"", e.mtime, e.uid, e.gid, e.nlink, ino), size)))
        done = 0
        with file.open("rb") as f:
            while chunk := f.read(CHUNK):
                done += len(chunk)
                out.write(comp.compress(chunk))
        if done != size:
            raise StoreError(f"{file} changed size while being archived")
        out.write(comp.compress(b"\0" * (-size % 4)))
    out.write(comp.compress(cpio.trailer()))
    out.write(comp.flush())


def leader_archive(store_dir: PurePosixPath, kind: Compression, level: int | None = None) -> bytes:
    """The directories from / down to the store directory (the kernel does not make parents)."""
    parts = store_dir.relative_to("/").parts
    entries = []
    for i in range(1, len(parts) + 1):
        last = i == len(parts)
        entries.append(cpio.Entry("/".join(parts[:i]),
                                  stat.S_IFDIR | (0o1775 if last else 0o755),
                                  mtime=STORE_MTIME, nlink=2))
    return _compressed(cpio.archive(entries), kind, level)


def registration_archive(
    store_dir: PurePosixPath, registration: bytes, kind: Compression, level: int | None = None
) -> bytes:
    """`<store>/nix-path-registration` (what `nix-store --dump-db` printed for the closure):
    the booted system loads it with `nix-store --load-db` (nixos/client.nix)."""
    e = cpio.Entry(str((store_dir / REGISTRATION).relative_to("/")), stat.S_IFREG | 0o444,
                   registration, mtime=STORE_MTIME)
    return _compressed(cpio.archive([e]), kind, level)


def _compressed(data: bytes, kind: Compression, level: int | None) -> bytes:
    c = compressor(kind, level)
    return c.compress(data) + c.flush()


# -- the cache -------------------------------------------------------------------------------


@dataclass
class ComposeStats:
    paths: int = 0
    hits: int = 0
    misses: int = 0
    compressed: list[str] = field(default_factory=list)  # store paths (re)compressed this time
    size: int = 0  # bytes of the composed initrd
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.paths} store paths: {self.hits} cached, {self.misses} compressed; "
                f"{self.size / 1e6:.1f} MB in {self.seconds:.2f}s")


class ComposeCache:
    """`<state>/compose-cache/<format>-<compression>/<store path name>`: one compressed archive
    per store path, written whole (temp file + rename), touched on every use (so `images gc`'s
    grace period protects entries a running compose is about to read)."""

    def __init__(self, state_dir: Path, kind: Compression = "gzip", level: int | None = None):
        if kind not in COMPRESSIONS:
            raise InvalidInput(f"unknown compression {kind!r} (one of {', '.join(COMPRESSIONS)})")
        self.base = state_dir / CACHE_DIR
        self.kind = kind
        self.level = level
        self.root = self.base / (f"{FORMAT}-{kind}" + ("" if level is None else f"-{level}"))

    @staticmethod
    def key(store_path: PurePosixPath) -> str:
        name = store_path.name
        if not name or name.startswith(".") or "/" in name:
            raise InvalidInput(f"not a store path: {store_path}")
        return name

    def path(self, store_path: PurePosixPath) -> Path:
        return self.root / self.key(store_path)

    def ensure(self, store_path: Path) -> tuple[Path, bool]:
        """The cached archive of `store_path`, made if missing. Returns (file, was_cached)."""
        dst = self.path(PurePosixPath(store_path))
        try:
            os.utime(dst)
            return dst, True
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"compose cache {dst}: {e.strerror or e}") from None
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp(self.root, TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                write_tree_archive(store_path, PurePosixPath(store_path).relative_to("/"),
                                   out, self.kind, self.level)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dst)  # (still open: its flock held; see artifacts.py)
                tmp = ""
        except FileNotFoundError:
            raise InvalidInput(f"store path {store_path} does not exist") from None
        except OSError as e:
            raise StoreError(f"cannot write {dst}: {e.strerror or e}") from None
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return dst, False

    def entries(self) -> list[Path]:
        """Every cache file of every format/compression (for gc)."""
        if not self.base.is_dir():
            return []
        return sorted(p for d in self.base.iterdir() if d.is_dir() for p in d.iterdir())


Sink = Callable[[bytes], object]


def compose(
    paths: Sequence[Path],
    cache: ComposeCache,
    write: Sink,
    *,
    registration: bytes | None = None,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ComposeStats:
    """Write the initrd for the closure `paths` (absolute store paths, one store directory) to
    `write`: leader + one cached archive per path (made where missing, in parallel) in sorted
    order + the registration archive. Returns what was cached and what was compressed."""
    t0 = time.monotonic()
    ordered = sorted({Path(p) for p in paths}, key=str)
    if not ordered:
        raise InvalidInput("nothing to compose: the closure is empty")
    store_dirs = {PurePosixPath(p).parent for p in ordered}
    if len(store_dirs) != 1 or not all(p.is_absolute() for p in ordered):
        raise InvalidInput(f"store paths must be absolute and in one store directory, got "
                           f"{sorted(map(str, store_dirs))[:3]}")
    (store_dir,) = store_dirs
    stats = ComposeStats(paths=len(ordered))
    workers = max(1, jobs or min(8, os.cpu_count() or 1))
    files: list[Path] = []
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:  # zlib/lzma release the GIL
        for p, (f, hit) in zip(ordered, pool.map(cache.ensure, ordered), strict=True):
            files.append(f)
            if hit:
                stats.hits += 1
            else:
                stats.misses += 1
                stats.compressed.append(str(p))
            done += 1
            if progress:
                progress(done, len(ordered))
    size = 0

    def emit(b: bytes) -> None:
        nonlocal size
        size += len(b)
        write(b)

    emit(leader_archive(store_dir, cache.kind, cache.level))
    for f in files:
        with f.open("rb") as fin:
            while chunk := fin.read(4 * CHUNK):
                emit(chunk)
    if registration is not None:
        emit(registration_archive(store_dir, registration, cache.kind, cache.level))
    stats.size = size
    stats.seconds = time.monotonic() - t0
    return stats


def compose_file(
    paths: Sequence[Path], cache: ComposeCache, out: Path, **kw: object
) -> tuple[ComposeStats, str]:
    """compose() into the file `out`; returns the stats and the file's sha256."""
    digest = hashlib.sha256()
    with out.open("wb") as f:
        def write(b: bytes) -> None:
            digest.update(b)
            f.write(b)
        stats = compose(paths, cache, write, **kw)  # type: ignore[arg-type]
    return stats, digest.hexdigest()
