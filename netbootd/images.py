"""The content-addressed artifact store and role import.

Files live at `<state>/artifacts/<sha256[:2]>/<sha256>`: identical files are stored once, a
name never changes meaning, and a URL that names a digest can be cached forever. A file is
written to a temp file in the same directory, hashed while copied, fsync'd and renamed into
place, so a crash or a full disk never leaves a half-written artifact under a real name.
The database row is written only after the file is in place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from netbootd import model
from netbootd.errors import InvalidInput, NotFound, StoreError
from netbootd.model import Artifact, Image
from netbootd.store import Store

CHUNK = 1 << 20
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ArtifactStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "artifacts"

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
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        done = 0
        tmp_name = None
        try:
            with fin:
                fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".import-")
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
            final = self.path(sha)
            if final.is_file() and final.stat().st_size == done:
                os.unlink(tmp_name)  # already stored: identical content is kept once
            else:
                final.parent.mkdir(exist_ok=True)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)
            tmp_name = None
            return Artifact(sha, done)
        except OSError as e:
            raise StoreError(f"cannot store {src} in {self.root}: {e.strerror or e}") from None
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass


def import_role(
    store: Store,
    artifacts: ArtifactStore,
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
        if not p.is_file():
            raise NotFound(f"no such file: {p}")
    k = artifacts.import_file(kernel, progress(kernel) if progress else None)
    rds = [artifacts.import_file(p, progress(p) if progress else None) for p in initrds]
    return store.add_generation(role, k, rds, cmdline, "import")
