"""Writing secrets to disk: private directories (0700) and files written whole (temp file,
fsync, rename) with their final mode from the first byte, so no reader ever sees a partly
written key or a key with a wider mode than it ends up with. And temp files that name their
writer and hold its flock (`new_temp`), so a killed writer's can be told from a live one's."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from pathlib import Path

from netbootd.errors import StoreError


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as e:
        raise StoreError(f"cannot create private directory {path}: {e.strerror or e}") from None
    return path


def write_file(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False,
               durable: bool = True) -> None:
    """Write `data` to `path` atomically with `mode`. exclusive: fail if `path` exists
    (FileExistsError), for files only the first writer may create (a secret). durable=False
    skips the fsyncs: for a batch whose caller calls os.sync() once before it relies on the
    files (bulk enrollment: 1,000 identities)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError if another writer was first
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except FileExistsError:
        _unlink(tmp)
        raise
    except OSError as e:
        _unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None when no such live process.
    pid + start time names one process for the machine's uptime; a pid alone is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def owner_tag() -> str:
    """`<pid>-<starttime>-`: names a temp file after its writer, for writer_gone."""
    return f"{os.getpid()}-{proc_starttime(os.getpid()) or 0}-"


def new_temp(directory: Path, prefix: str) -> tuple[int, str]:
    """A new temp file `<prefix><pid>-<starttime>-<random>` in `directory`, open for writing
    and exclusively flock()ed: the lock lasts while the descriptor is open, so the writer must
    rename it into place before closing it. (descriptor, path)"""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix + owner_tag())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        _unlink(Path(name))
        raise
    return fd, name


def writer_gone(name: str, prefix: str) -> bool | None:
    """Whether the writer a `new_temp` name names is gone (no live process with its pid and
    start time); None when `name` names no writer. Without /proc, never gone."""
    pid, _, rest = name[len(prefix):].partition("-")
    start, sep, _ = rest.partition("-")
    if not (pid.isdigit() and start.isdigit() and sep):
        return None
    if not Path("/proc/self/stat").exists():
        return False
    return proc_starttime(int(pid)) != int(start)
