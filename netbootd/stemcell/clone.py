"""Copy-on-write clones of disk images, and serving qcow2 overlays as raw files.

A host's root LUN is a clone of a gold image, made the cheapest way the filesystem allows:

- **reflink**: `ioctl(FICLONE)` -- the clone shares every block with the gold image until
  either is written (XFS with reflink=1, btrfs, bcachefs; not ext4). Instant, no daemon.
- **qcow2**: `qemu-img create -f qcow2 -b <gold> -F raw` -- an overlay holding only the host's
  writes. tgtd serves raw files only, so the overlay is exported as a raw file through FUSE by
  `qemu-storage-daemon` (one daemon per clone, started and stopped by PID, see QcowExport).
  Needs qemu-img, qemu-storage-daemon and /dev/fuse; tgtd and netbootd must share a mount
  namespace (the FUSE mount is what tgtd opens).
- **copy**: a full copy, sparse (runs of zeros are skipped), with a progress callback.

Every method writes under a temporary name and renames into place, so a failed clone leaves
nothing behind under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from netbootd.errors import CloneError, InvalidInput

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
CHUNK = 1 << 20
Progress = Callable[[int, int], None]
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
               errno.EPERM}




class Method(StrEnum):
    REFLINK = "reflink"
    QCOW2 = "qcow2"
    COPY = "copy"


AUTO = "auto"


def _tmp(dest: Path) -> Path:
    """dest's temp name. Any other temp file of the same destination is a killed writer's
    (a kill -9 during `iscsi reconcile` left a whole clone, #13): LUN files are made under the
    iSCSI lock (exclusive), and gold imports name their destination after their own pid, so
    nobody else can be writing one now. It is removed."""
    for old in dest.parent.glob(f".{dest.name}.tmp-*"):
        _unlink(old)
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}")


def _unlink(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


def reflink(src: Path, dest: Path) -> bool:
    """Clone src to dest with FICLONE. False (and no dest) when the filesystem cannot."""
    tmp = _tmp(dest)
    try:
        with open(src, "rb") as fin:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(fd, FICLONE, fin.fileno())
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, dest)
        return True
    except OSError as e:
        _unlink(tmp)
        if e.errno in _NO_REFLINK:
            return False
        raise CloneError(f"cannot clone {src} to {dest}: {e.strerror or e}") from None


def sparse_copy(src: Path, dest: Path, progress: Progress | None = None) -> None:
    """Copy src to dest, leaving holes where src has runs of zeros; fsync, then rename."""
    tmp = _tmp(dest)
    zero = bytes(CHUNK)
    try:
        total = src.stat().st_size
        done = 0
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            os.fchmod(fout.fileno(), 0o600)
            while chunk := fin.read(CHUNK):
                if chunk == zero[: len(chunk)]:
                    fout.seek(len(chunk), os.SEEK_CUR)
                else:
                    fout.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            fout.truncate(total)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        _unlink(tmp)
        raise CloneError(f"cannot copy {src} to {dest}: {e.strerror or e}") from None


def qcow2_available() -> str | None:
    """None when qcow2 overlays can be made and served here, else why not."""
    for tool in ("qemu-img", "qemu-storage-daemon"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: qemu-utils, qemu-system-common)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    return None


def qcow2_overlay(gold: Path, dest: Path) -> None:
    """A qcow2 overlay at dest whose backing file is gold (raw, by absolute path)."""
    tmp = _tmp(dest)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(gold.resolve()), "-F", "raw",
            str(tmp)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError as e:
        raise CloneError(f"cannot run qemu-img: {e.strerror or e}") from None
    if r.returncode != 0:
        _unlink(tmp)
        raise CloneError(f"qemu-img create failed: {(r.stderr or r.stdout).strip()}")
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)


def make_empty(dest: Path, size: int) -> None:
    """A sparse file of `size` bytes (a fresh data LUN)."""
    if size < 1:
        raise InvalidInput(f"a disk of {size} bytes?")
    tmp = _tmp(dest)
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.truncate(size)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        _unlink(tmp)
        raise CloneError(f"cannot create {dest}: {e.strerror or e}") from None


# -- serving a qcow2 overlay as a raw file (FUSE) ------------------------------------------------


def _mounted(path: Path) -> bool:
    """Is `path` a mount point in this mount namespace (per /proc/self/mountinfo)?"""
    target = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        return False
    return False


def _pid_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class QcowExport:
    """One qemu-storage-daemon exporting `overlay` (qcow2) as the raw file `mountpoint` (FUSE).

    The daemon's PID is kept in `pidfile`; it is only ever signalled after checking that the PID
    still runs a qemu-storage-daemon for this overlay (PIDs are reused)."""

    def __init__(self, overlay: Path, mountpoint: Path, pidfile: Path) -> None:
        self.overlay = overlay
        self.mountpoint = mountpoint
        self.pidfile = pidfile

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = _pid_cmdline(pid)
        if "qemu-storage-daemon" in cmd and str(self.overlay) in cmd:
            return pid
        return None

    def running(self) -> bool:
        return _mounted(self.mountpoint) and self.pid() is not None

    def start(self) -> bool:
        """Start the export unless it runs. True if it was started now."""
        if self.running():
            return False
        if not self.overlay.is_file():
            raise CloneError(f"no qcow2 overlay {self.overlay}")
        self.stop()  # a half-dead one (mounted without a daemon, or a daemon without a mount)
        self.mountpoint.touch(mode=0o600, exist_ok=True)
        argv = [
            "qemu-storage-daemon", "--daemonize", "--pidfile", str(self.pidfile),
            "--blockdev", f"driver=file,filename={self.overlay},node-name=file0",
            "--blockdev", "driver=qcow2,file=file0,node-name=disk0",
            "--export", (f"type=fuse,id=export0,node-name=disk0,mountpoint={self.mountpoint},"
                         "writable=on"),
        ]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CloneError(f"cannot start qemu-storage-daemon for {self.overlay}: {e}") from None
        if r.returncode != 0 or not self.running():
            raise CloneError(f"qemu-storage-daemon did not export {self.overlay} at "
                             f"{self.mountpoint}: {(r.stderr or r.stdout).strip() or 'no mount'}")
        return True

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            gone = pid is None or not _pid_cmdline(pid)
            if gone and not _mounted(self.mountpoint):
                break
            time.sleep(0.05)
        else:
            raise CloneError(f"qemu-storage-daemon (pid {pid}) did not stop exporting "
                             f"{self.mountpoint} within {timeout:.0f}s")
        if _mounted(self.mountpoint):  # pragma: no cover - a daemon killed hard left its mount
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False,
                           capture_output=True)
        _unlink(self.pidfile)


def clone(gold: Path, dest_base: Path, method: str = AUTO,
          progress: Progress | None = None) -> tuple[Method, Path]:
    """Clone `gold` next to `dest_base` (`root`): returns the method used and the file made
    (`root.img` for reflink/copy, `root.qcow2` for an overlay). `method` is auto (reflink, else
    qcow2 when it can be served here, else copy) or one of Method; an explicit method that the
    filesystem or the machine cannot do is an error."""
    img = dest_base.with_name(dest_base.name + ".img")
    if method in (AUTO, Method.REFLINK):
        if reflink(gold, img):
            return Method.REFLINK, img
        if method == Method.REFLINK:
            raise CloneError(f"the filesystem of {img.parent} cannot reflink (XFS with "
                             "reflink=1, btrfs) -- use clone = \"auto\", \"qcow2\" or \"copy\"")
    if method in (AUTO, Method.QCOW2):
        why = qcow2_available()
        if why is None:
            q = dest_base.with_name(dest_base.name + ".qcow2")
            qcow2_overlay(gold, q)
            return Method.QCOW2, q
        if method == Method.QCOW2:
            raise CloneError(f"qcow2 clones cannot be served here: {why}")
    if method not in (AUTO, Method.COPY, Method.REFLINK, Method.QCOW2):
        raise InvalidInput(f"unknown clone method {method!r} (auto, reflink, qcow2, copy)")
    sparse_copy(gold, img, progress)
    return Method.COPY, img
