"""Temp files of killed imports (issue #13, finding 13): a writer killed with SIGKILL leaves its
`.import-*` file; the next import (or `serve` start) removes it, and never a live writer's.

The writers are real child processes blocked half-way through `Artifacts.writer()` (so they
hold whatever a writer holds) and killed with SIGKILL, as an operator's kill -9 would."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netbootd.roles.artifacts import (
    LOCK_NAME,
    Artifacts,
    artifacts_lock,
    remove_dead_temp_files,
)
from netbootd.roles.compose import ComposeCache
from testbed.procs import stop_popen
from tests.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.timeout(60)

# A writer that writes 1 MiB into a new artifact, says "ready", and waits to be killed.
WRITER = """
import sys, time
from pathlib import Path
from netbootd.roles.artifacts import Artifacts
with Artifacts(Path(sys.argv[1])).writer() as w:
    w.write(b"x" * (1 << 20))
    print("ready", flush=True)
    time.sleep(600)
"""


def temps(state: Path) -> list[Path]:
    return sorted((state / "artifacts").glob(".import-*"))


def start_writer(state: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE,
                         text=True, cwd=Path(__file__).resolve().parents[2])
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def killed_writer(state: Path) -> Path:
    """The temp file a writer killed with SIGKILL half-way left behind."""
    before = set(temps(state))
    p = start_writer(state)
    p.kill()
    p.wait(5)
    (left,) = set(temps(state)) - before
    assert left.stat().st_size == 1 << 20
    return left


def test_next_import_removes_a_killed_imports_temp_file_and_keeps_a_live_ones(tmp_path):
    state = tmp_path / "state"
    dead = killed_writer(state)
    live = start_writer(state)
    try:
        (live_temp,) = set(temps(state)) - {dead}
        src = tmp_path / "kernel"
        src.write_bytes(os.urandom(4096))
        art = Artifacts(state).import_file(src)  # the next import
        assert Artifacts(state).has(art.sha256)
        assert not dead.exists()  # before: kept until `images gc` after its grace period (1 h)
        assert live_temp.exists()  # a live import never loses its temp file
    finally:
        stop_popen(live)


def test_serve_start_removes_a_killed_imports_temp_file(tmp_path, cli):
    dead = killed_writer(cli.state_dir)
    d = start_daemon(cli, tmp_path / "serve.log")
    try:
        assert not dead.exists()
        assert "removed 1 temp file(s) of killed imports (1048576 bytes)" in d.log.read_text()
    finally:
        stop_daemon(d)


def test_a_temp_file_whose_flock_is_held_is_kept_even_if_its_pid_looks_dead(tmp_path):
    """A writer in another pid namespace: the pid in the name means nothing here, the flock
    does."""
    root = tmp_path / "state" / "artifacts"
    root.mkdir(parents=True)
    foreign = root / ".import-999999999-1-abcdefgh"  # no such pid here
    foreign.write_bytes(b"y" * 100)
    fd = os.open(foreign, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rep = remove_dead_temp_files(tmp_path / "state")
        assert foreign.exists() and rep.removed == 0 and rep.kept_live == 1
    finally:
        os.close(fd)
    rep = remove_dead_temp_files(tmp_path / "state")  # its writer has let go: removed
    assert not foreign.exists() and (rep.removed, rep.bytes) == (1, 100)


def test_ownerless_temp_files_go_only_while_nobody_holds_the_images_lock(tmp_path):
    """Names from before temp files carried their writer (mkstemp's `.import-k3j_x9q2`): their
    writer cannot be told, so they are removed only when no import or build is running."""
    state = tmp_path / "state"
    cache = ComposeCache(state)
    cache.root.mkdir(parents=True)
    old = [state / "artifacts" / ".import-k3j_x9q2", cache.root / ".new-a8b_c7d6"]
    old[0].parent.mkdir(parents=True, exist_ok=True)
    for f in old:
        f.write_bytes(b"z" * 10)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(600)",
         str(state / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        rep = remove_dead_temp_files(state)
        assert all(f.exists() for f in old) and not rep.legacy
    finally:
        stop_popen(holder)
    rep = remove_dead_temp_files(state)
    assert rep.legacy and rep.removed == 2 and not any(f.exists() for f in old)


def test_an_import_holding_the_lock_sweeps_only_dead_writers(tmp_path):
    """The sweep an import makes runs under its own shared images lock: ownerless names stay."""
    state = tmp_path / "state"
    dead = killed_writer(state)
    ownerless = state / "artifacts" / ".import-k3j_x9q2"
    ownerless.write_bytes(b"z")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    with artifacts_lock(state, exclusive=False):
        Artifacts(state).import_file(src)
    assert not dead.exists() and ownerless.exists()
