"""The content-addressed artifact store and role import.

Files live at `<state>/artifacts/<sha256[:2]>/<sha256>`: identical files are stored once, a
name never changes meaning, and a URL that names a digest can be cached forever. A file is
written to a temp file in the same directory, hashed while copied, fsync'd and renamed into
place, so a crash or a full disk never leaves a half-written artifact under a real name.
The database row is written only after the file is in place.

Temp files of killed writers. A temp file is named `.import-<pid>-<starttime>-<random>` after
its writer (compose-cache entries: `.new-...`), which holds an exclusive flock on it from the
moment it exists until it has been renamed into place; a process that dies loses its flock.
`remove_dead_temp_files` (at a process's first import or build, and at `serve` start) removes a
temp file only when its writer is gone by both tests: no live process has that pid and start
time, and its flock can be taken. So a live import never loses its temp file (even one in
another pid namespace: the flock), and a killed one's (9.6 GB after 40 kills) goes at the next
import instead of after gc's grace period. Temp files without an owner in their name (written
before names carried one) are removed only while nobody holds the images lock (no import or
build at all).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from netbootd import model
from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.fsutil import new_temp, writer_gone
from netbootd.model import Artifact, Image
from netbootd.roles.compose import TEMP_PREFIX as COMPOSE_TEMP_PREFIX
from netbootd.roles.compose import ComposeCache
from netbootd.roles.nixbuild import GCROOTS_DIR
from netbootd.store import Store

CHUNK = 1 << 20
TEMP_PREFIX = ".import-"  # artifacts being written; compose-cache entries: compose.TEMP_PREFIX
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
LOCK_NAME = "images.lock"
GC_GRACE = 3600.0  # seconds: `images gc` never deletes a file younger than this


@contextmanager
def artifacts_lock(state_dir: Path, exclusive: bool) -> Iterator[None]:
    """Imports and builds hold this shared from their first artifact write until their
    generation row is committed; `images gc` holds it exclusively. So gc never sees a file
    whose row is still being added."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open {state_dir / LOCK_NAME}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class ArtifactWriter:
    """A new artifact being written (see Artifacts.writer): hashed as it is written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.size = 0
        self.artifact: Artifact | None = None  # set once the file is in place

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._out.write(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class Artifacts:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "artifacts"
        self._swept = False  # remove_dead_temp_files() ran before our first write

    def _new_temp(self) -> tuple[int, str]:
        """A locked temp file for a new artifact (see the module docstring); the first one a
        process makes removes what killed writers left."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            remove_dead_temp_files(self.root.parent)
        return new_temp(self.root, TEMP_PREFIX)

    def path(self, sha256: str) -> Path:
        model.sha256_hex(sha256)
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def import_file(self, src: Path, progress: Progress | None = None) -> Artifact:
        try:
            total = src.stat().st_size
            fin = src.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no such file: {src}") from None
        except IsADirectoryError:
            raise InvalidInput(f"{src} is a directory, not a file") from None
        except OSError as e:
            raise InvalidInput(f"cannot read {src}: {e.strerror}") from None
        digest = hashlib.sha256()
        done = 0
        tmp_name = None
        try:
            with fin:
                fd, tmp_name = self._new_temp()
                with os.fdopen(fd, "wb") as out:
                    while chunk := fin.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                    out.flush()
                    os.fsync(out.fileno())
                    sha = digest.hexdigest()
                    self._place(tmp_name, sha, done)  # (still open: its flock held)
                    tmp_name = None
            return Artifact(sha, done)
        except OSError as e:
            raise StoreError(f"cannot store {src} in {self.root}: {e.strerror or e}") from None
        finally:
            if tmp_name is not None:
                with suppress(OSError):
                    os.unlink(tmp_name)


    def _place(self, tmp_name: str, sha: str, size: int) -> None:
        final = self.path(sha)
        if final.is_file() and final.stat().st_size == size:
            os.unlink(tmp_name)  # already stored: identical content is kept once
            os.utime(final)  # in use again: young for `images gc`'s grace period
        else:
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, final)

    @contextmanager
    def writer(self) -> Iterator[ArtifactWriter]:
        """Write a new artifact: `with store.writer() as w: w.write(...)`; afterwards
        `w.artifact` names it. Temp file + fsync + rename, like import_file."""
        fd, tmp_name = self._new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                w = ArtifactWriter(out)
                yield w
                out.flush()
                os.fsync(out.fileno())
                sha = w.hexdigest()
                self._place(tmp_name, sha, w.size)  # (still open: its flock held)
                tmp_name = ""
            w.artifact = Artifact(sha, w.size)
        except OSError as e:
            raise StoreError(f"cannot write an artifact in {self.root}: "
                             f"{e.strerror or e}") from None
        finally:
            if tmp_name:
                with suppress(OSError):
                    os.unlink(tmp_name)

    def files(self) -> Iterator[Path]:
        """Every file under the store: artifacts and leftover temp files."""
        if self.root.is_dir():
            yield from (p for p in self.root.rglob("*") if p.is_file())


def import_role(
    store: Store,
    artifacts: Artifacts,
    role: str,
    kernel: Path,
    initrds: Sequence[Path],
    cmdline: str = "",
    progress: Callable[[Path], Progress | None] | None = None,
) -> Image:
    """Import files as a new generation of `role` (created if needed) and make it current.

    Validation happens before anything is written; files are stored before the row.
    """
    role = model.role_name(role)
    cmdline = model.cmdline(cmdline)
    if not initrds:
        raise InvalidInput("a role needs at least one --initrd")
    for p in (kernel, *initrds):
        if p.is_dir():
            raise InvalidInput(f"{p} is a directory: give the kernel or initrd file inside it "
                               "(e.g. DIR/bzImage, DIR/vmlinuz, DIR/initrd)")
        if not p.is_file():
            raise NotFound(f"no such file: {p}")
    with artifacts_lock(artifacts.root.parent, exclusive=False):
        k = artifacts.import_file(kernel, progress(kernel) if progress else None)
        rds = [artifacts.import_file(p, progress(p) if progress else None) for p in initrds]
        return store.add_generation(role, k, rds, cmdline, "import")


# -- temp files of killed writers -----------------------------------------------------------


@dataclass
class TempSweep:
    removed: int = 0
    bytes: int = 0
    kept_live: int = 0  # temp files of writers still running
    legacy: bool = False  # ownerless names were considered (nobody held the images lock)


def remove_dead_temp_files(state_dir: Path) -> TempSweep:
    """Remove the temp files (artifacts and compose cache) whose writer is gone: see the module
    docstring. Never raises for a file that vanished or cannot be removed (gc reports it)."""
    rep = TempSweep()
    dirs = [(state_dir / "artifacts", TEMP_PREFIX)]
    cache_base = ComposeCache(state_dir).base
    if cache_base.is_dir():
        dirs += [(d, COMPOSE_TEMP_PREFIX) for d in sorted(cache_base.iterdir()) if d.is_dir()]
    lock_fd = _try_exclusive_lock(state_dir)
    rep.legacy = lock_fd is not None
    try:
        for d, prefix in dirs:
            try:
                names = [n for n in os.listdir(d) if n.startswith(prefix)]
            except OSError:
                continue
            for name in names:
                gone = writer_gone(name, prefix)
                if gone is None:
                    gone = rep.legacy  # ownerless: only while no import holds the lock
                if not gone:
                    rep.kept_live += 1
                    continue
                size = _unlink_unlocked(d / name)
                if size is None:
                    rep.kept_live += 1
                else:
                    rep.removed += 1
                    rep.bytes += size
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return rep


def _try_exclusive_lock(state_dir: Path) -> int | None:
    """The images lock, exclusive, if nobody holds it now (else None); close() releases it."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlink_unlocked(path: Path) -> int | None:
    """Remove `path` if no writer holds its flock: its size, or None (kept, or vanished)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        size = os.fstat(fd).st_size
        os.unlink(path)
        return size
    except OSError:  # BlockingIOError: a live writer; else vanished or not ours to remove
        return None
    finally:
        os.close(fd)


# -- gc -----------------------------------------------------------------------------------------


@dataclass
class GcReport:
    artifacts: list[str] = field(default_factory=list)  # sha256 of the artifacts deleted
    artifact_bytes: int = 0
    cache_entries: list[str] = field(default_factory=list)  # compose-cache entries deleted
    cache_bytes: int = 0
    temp_files: int = 0  # leftovers of interrupted imports / composes
    temp_bytes: int = 0
    kept_young: int = 0  # unreferenced, but younger than the grace period
    gc_roots: list[str] = field(default_factory=list)  # <state>/gcroots/ links removed

    @property
    def freed(self) -> int:
        return self.artifact_bytes + self.cache_bytes + self.temp_bytes


def gc(store: Store, state_dir: Path, grace: float = GC_GRACE, now: float | None = None,
       dry_run: bool = False,
       refs: tuple[set[str], set[str]] | None = None) -> GcReport:
    """Delete artifacts no kept generation references, compose-cache entries of store paths no
    kept generation's closure contains, and stale temp files -- none younger than `grace`
    seconds, and all under the exclusive images lock (no import is half-way through). `refs`
    (a dry run's): the artifacts and store paths to count as referenced instead of the store's
    (store.prune_preview: what would still be referenced after `--keep`)."""
    if grace < 0:
        raise InvalidInput("the grace period cannot be negative")
    rep = GcReport()
    artifacts = Artifacts(state_dir)
    # a dry run deletes nothing: no lock (a read-only account may run it)
    with contextlib.nullcontext() if dry_run else artifacts_lock(state_dir, exclusive=True):
        now = time.time() if now is None else now
        referenced = store.referenced_artifacts() if refs is None else refs[0]
        for name, size in _sweep(artifacts.files(), referenced, now, grace, dry_run, rep):
            rep.artifacts.append(name)
            rep.artifact_bytes += size
        if rep.artifacts and not dry_run:
            store.forget_artifacts(rep.artifacts)
        paths = store.referenced_store_paths() if refs is None else refs[1]
        wanted = {Path(p).name for p in paths}
        entries = ComposeCache(state_dir).entries()
        for name, size in _sweep(entries, wanted, now, grace, dry_run, rep):
            rep.cache_entries.append(name)
            rep.cache_bytes += size
        rep.gc_roots = _drop_roots(state_dir / GCROOTS_DIR, _built_paths(store), now, grace,
                                   dry_run, rep)
    return rep


def _built_paths(store: Store) -> set[str]:
    """Names of the store paths kept generations were built from (their GC roots' names)."""
    return {Path(p).name for r in store.roles() for img in store.generations(r.name)
            if img.build is not None
            for p in (img.build.kernel_path, img.build.initrd_path, img.build.toplevel_path)}


def _drop_roots(roots: Path, keep: set[str], now: float, grace: float, dry_run: bool,
                rep: GcReport) -> list[str]:
    """Remove the GC roots (symlinks into the Nix store, made by `role build`) of store paths
    no kept generation names, once older than `grace`; Nix's own gc may then collect them."""
    dropped = []
    for link in sorted(roots.iterdir()) if roots.is_dir() else []:
        if link.name in keep or not link.is_symlink():
            continue
        if now - link.lstat().st_mtime < grace:
            rep.kept_young += 1
            continue
        if not dry_run:
            _unlink(link)
        dropped.append(link.name)
    return dropped


def _sweep(
    files: Iterable[Path], keep: set[str], now: float, grace: float, dry_run: bool, rep: GcReport
) -> list[tuple[str, int]]:
    """Delete (unless `dry_run`) the files not named in `keep` and older than `grace` seconds.
    Temp files (leading dot) are counted in `rep.temp_*`, young ones in `rep.kept_young`;
    returns (name, size) of the other files removed."""
    removed = []
    for f in sorted(files):
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        temp = f.name.startswith(".")
        if not temp and f.name in keep:
            continue
        if now - st.st_mtime < grace:
            rep.kept_young += 1
            continue
        if not dry_run:
            _unlink(f)
        if temp:
            rep.temp_files += 1
            rep.temp_bytes += st.st_size
        else:
            removed.append((f.name, st.st_size))
    return removed


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreError(f"cannot delete {p}: {e.strerror or e}") from None
