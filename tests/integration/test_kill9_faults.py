"""kill -9 during the commands that write state (issue #13): `role add`, `enroll`, `role build`
(the fake NixOS fixture, real nix-bin: testbed/nixenv.py), `iscsi reconcile` (which clones the
hosts' LUNs) and `iscsi reclone`, at random points of a run, then the integrity check:

- no row without its file: every artifact a generation names is in the artifact store; every
  LUN row's files are in its host directory;
- no file without its row after gc: `images gc --grace 0` leaves exactly the referenced
  artifacts, and no temp file anywhere (artifacts, compose cache, iSCSI host directories);
- no host without identity: every host enrolled with one has one (after the operator re-runs
  the enroll that was killed).

Kill points are drawn from a seeded RNG (NETBOOTD_FAULT_SEED, default 13; the seed and the
delays are in the assertion message) over the duration of a clean run measured first;
NETBOOTD_FAULT_KILLS (default 3) kills per command; `make fuzz` runs more. Processes are killed
by their PID (the CLI child the test started).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netbootd import fsutil
from netbootd.model import MacAddress
from testbed import REPO, nixenv, sanboot_disk
from testbed.netns import cleanup_stale, owned_dir
from testbed.skips import missing_tools, not_root, require, unavailable
from testbed.tgtd import Tgtd
from tests.conftest import Cli, free_port

pytestmark = pytest.mark.timeout(600)

SEED = int(os.environ.get("NETBOOTD_FAULT_SEED", "13"))
KILLS = int(os.environ.get("NETBOOTD_FAULT_KILLS", "3"))
PREFIX = "nbdkl"


def start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NETBOOTD_STATE_DIR": str(cli.state_dir)}
    env.pop("NETBOOTD_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "netbootd", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def clean_run(cli: Cli, *args: str) -> float:
    """Run to completion (it must succeed); its duration."""
    t0 = time.monotonic()
    cli.run(*args)
    return time.monotonic() - t0


def killed_run(cli: Cli, delay: float, *args: str) -> bool:
    """Start the command, SIGKILL it (by its PID) after `delay` s; True if it was still running."""
    p = start(cli, *args)
    try:
        p.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        return True
    finally:
        if p.stderr:
            p.stderr.close()


def kill_when(cli: Cli, cond: Callable[[], bool], *args: str) -> bool:
    """Start the command and SIGKILL it (by its PID) as soon as cond() holds (polled every
    2 ms); True if it was killed, False if it ended first."""
    p = start(cli, *args)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            if cond():
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
                return True
            time.sleep(0.002)
        p.wait(10)
        return False
    finally:
        if p.stderr:
            p.stderr.close()


def delays(rng: random.Random, duration: float, n: int = KILLS) -> list[float]:
    """n kill points spread over a run of `duration` s (one per slice, at random within it)."""
    return [duration * (i + rng.random()) / n for i in range(n)]


# -- the integrity check ----------------------------------------------------------------------


def integrity(cli: Cli, *config: str, identity_macs: set[str] = frozenset(),
              iscsi_dir: Path | None = None) -> dict[str, list[str]]:
    """What is wrong, by rule (empty lists: nothing). Runs `images gc --grace 0` first."""
    state = cli.state_dir
    art = state / "artifacts"
    referenced: set[str] = set()
    rows_without_file = []
    for role in cli.json(*config, "role", "list"):
        for g in cli.json(*config, "role", "generations", role["name"]):
            for sha in (g["kernel"], *g["initrds"]):
                referenced.add(sha)
                if not (art / sha[:2] / sha).is_file():
                    rows_without_file.append(f"role {role['name']} gen {g['generation']}: {sha}")
    gc = json.loads(cli.run(*config, "images", "gc", "--grace", "0", "--json").stdout)
    files = [p for p in art.rglob("*") if p.is_file()] if art.is_dir() else []
    files_without_row = [str(p.relative_to(state)) for p in files if p.name not in referenced]
    cache = state / "compose-cache"
    temps = [str(p.relative_to(state)) for p in cache.rglob(".*") if p.is_file()] \
        if cache.is_dir() else []
    if iscsi_dir is not None:
        luns = cli.json(*config, "iscsi", "list")["luns"]
        hosts_dir = iscsi_dir / "hosts"
        rowed = set()
        for lun in luns:
            d = hosts_dir / MacAddress.parse(lun["mac"]).hyphen
            rowed.add(d.name)
            for f in ("root", "data"):
                if not any(d.glob(f"{f}.*")):
                    rows_without_file.append(f"LUN of {lun['mac']}: no {f} file in {d}")
        if hosts_dir.is_dir():
            for d in hosts_dir.iterdir():
                left = [p.name for p in d.iterdir() if p.name.startswith(".")]
                temps += [f"{d.name}/{n}" for n in left]
                if d.name not in rowed and any(d.iterdir()):
                    files_without_row.append(f"iSCSI host directory {d.name} without a LUN row")
    with_identity = {k["mac"] for k in cli.json(*config, "keys", "list")}
    return {
        "rows without their file": rows_without_file,
        "files without their row after gc": files_without_row + temps,
        "hosts without identity": sorted(identity_macs - with_identity),
        "(gc report)": [] if gc is not None else ["gc printed nothing"],
    }


def assert_intact(problems: dict[str, list[str]], why: str) -> None:
    bad = {k: v for k, v in problems.items() if v}
    assert not bad, f"{why}: {json.dumps(bad, indent=1)}"


# -- role add ---------------------------------------------------------------------------------


def test_kill9_during_role_add(cli: Cli, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    k, i = tmp_path / "vmlinuz", tmp_path / "initrd"
    k.write_bytes(os.urandom(24 << 20))
    i.write_bytes(os.urandom(24 << 20))
    add = ("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    duration = clean_run(cli, *add)
    points = delays(rng, duration)
    for n, d in enumerate(points):
        k.write_bytes(os.urandom(24 << 20) if n % 2 else k.read_bytes()[::-1])  # new content
        killed_run(cli, d, *add)
    clean_run(cli, *add)  # the next import (it sweeps what the killed ones left)
    assert_intact(integrity(cli), f"seed {SEED}, killed at {points}")


# -- enroll -----------------------------------------------------------------------------------


def _row_then_kill(cli: Cli, mac: str) -> None:
    """`enroll MAC`, SIGKILLed the moment its host row is committed (read-only reads of the
    database): during key generation on 7fc1555 -- finding 5's case, deterministically."""
    db = f"file:{cli.state_dir / 'netbootd.sqlite3'}?mode=ro"

    def row() -> bool:
        with sqlite3.connect(db, uri=True, timeout=1) as c:
            return c.execute("SELECT 1 FROM hosts WHERE mac = ?", (mac,)).fetchone() is not None

    kill_when(cli, row, "enroll", mac, "web")


def test_kill9_during_enroll(cli: Cli, role_files: tuple[Path, Path]) -> None:
    """Enrolls killed at random points and right after the host row is committed, each then
    re-run (as an operator would). No host without identity is finding 5 (fixed on main,
    494e97e: the identity is made before the row, in one unit of work, and enroll of a host
    without one makes it); on 7fc1555 the row-killed host and the random kills that landed in
    key generation stayed without identity."""
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    rng = random.Random(SEED)
    duration = clean_run(cli, "enroll", "52:54:00:4b:00:00", "web")
    macs, points = ["52:54:00:4b:00:00"], delays(rng, duration)
    for n, d in enumerate(points, 1):
        mac = f"52:54:00:4b:00:{n:02x}"
        killed_run(cli, d, "enroll", mac, "web")
        macs.append(mac)
    _row_then_kill(cli, "52:54:00:4b:01:00")
    macs.append("52:54:00:4b:01:00")
    for mac in macs:  # the operator re-runs the enroll that was killed
        cli.run("enroll", mac, "web")
    assert_intact(integrity(cli, identity_macs=set(macs)),
                  f"seed {SEED}, killed at {points} and after the row")
    assert {h["mac"] for h in cli.json("hosts")} == set(macs)


# -- role build (fake NixOS, real nix-bin) ----------------------------------------------------


def test_kill9_during_role_build(cli: Cli, tmp_path: Path) -> None:
    why = nixenv.missing()
    if why:
        unavailable(why)
    rng = random.Random(SEED)
    with nixenv.exported(tmp_path / "nix"):
        flake = nixenv.fixture_copy(tmp_path / "flake", version="1")
        build = ("role", "build", "web", "--flake", f"path:{flake}#fake", "--mode", "compose")
        (flake / "version").write_text("0")
        duration = clean_run(cli, *build)  # (the first build: the whole closure composed)
        points = delays(rng, duration)
        for n, d in enumerate(points, 1):
            (flake / "version").write_text(str(n))  # each run has new paths to build + compose
            killed_run(cli, d, *build)
        clean_run(cli, *build)
        assert_intact(integrity(cli), f"seed {SEED}, killed at {points}")


# -- iscsi reconcile / reclone (real tgtd) ------------------------------------------------------


def test_kill9_during_iscsi_reconcile_and_reclone(cli: Cli) -> None:
    require(not_root("tgtd") or missing_tools({"tgtd": "tgt", "tgtadm": "tgt"}))
    cleanup_stale(PREFIX)
    work = owned_dir(PREFIX)
    tgtd = Tgtd(f"127.0.0.1:{free_port()}").start()
    try:
        cfg = work / "netbootd.toml"
        cfg.write_text(f'[iscsi]\ntgtd_control_port = {tgtd.port}\nportal = "{tgtd.portal}"\n'
                       f'data_size = "8M"\nclone = "copy"\n')
        config = ("--config", str(cfg))
        k, i = work / "vmlinuz", work / "initrd"
        k.write_bytes(os.urandom(4096))
        i.write_bytes(os.urandom(4096))
        sanboot_disk.write_disk(work / "gold.img")
        cli.run(*config, "role", "add", "san", "--kernel", str(k), "--initrd", str(i))
        cli.run(*config, "iscsi", "gold", "import", "deb12", str(work / "gold.img"))
        cli.run(*config, "role", "mode", "san", "iscsi", "--gold", "deb12")
        rng = random.Random(SEED)
        points: list[float] = []
        for n in range(KILLS + 1):
            cli.run(*config, "enroll", f"52:54:00:5d:00:{n:02x}", "san", "--no-identity")
            if n == 0:
                duration = clean_run(cli, *config, "iscsi", "reconcile")
                continue
            points += delays(rng, duration, 1)
            killed_run(cli, points[-1], *config, "iscsi", "reconcile")
        reclone = (*config, "iscsi", "reclone", "52:54:00:5d:00:00", "--force")
        duration = clean_run(cli, *reclone)
        for d in delays(rng, duration):
            points.append(d)
            killed_run(cli, d, *reclone)
        # Mid-clone, deterministically: the moment the new root's temp file exists. On 7fc1555
        # the old root was already gone then, and reconcile failed for good ("backing store
        # ... root.img does not exist").
        host = cli.state_dir / "iscsi" / "hosts" / "52-54-00-5d-00-00"
        kill_when(cli, lambda: any(host.glob(".root.img.tmp-*")), *reclone)
        clean_run(cli, *config, "iscsi", "reconcile")  # every row's files are there
        clean_run(cli, *reclone)  # the operator re-runs the reclone that was killed
        clean_run(cli, *config, "iscsi", "reconcile")
        assert_intact(integrity(cli, *config, iscsi_dir=cli.state_dir / "iscsi"),
                      f"seed {SEED}, killed at {points} and mid-clone")
    finally:
        tgtd.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


# -- iscsi gold import -----------------------------------------------------------------------


def test_kill9_during_gold_import_leaves_nothing_for_good(cli: Cli, tmp_path: Path) -> None:
    """A gold import killed mid-copy leaves its temp files (it cannot clean up after SIGKILL);
    the next import removes them (before: `.import-<pid>.img` stayed forever, one per kill),
    and an import that is still running keeps its own."""
    src = tmp_path / "gold.img"
    with open(src, "wb") as f:  # incompressible data, so the copy takes a while
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    gold = cli.state_dir / "iscsi" / "gold" / "deb12"

    def temps() -> list[Path]:
        return sorted(p for p in gold.glob("*") if "import-" in p.name)

    assert kill_when(cli, lambda: bool(temps()), "iscsi", "gold", "import", "deb12", str(src))
    left = temps()
    assert left, "the killed import left no temp file: the test did not kill it mid-copy"
    # a live import's temp file (this process's name) is not a killed one's
    live = gold / f".import-{fsutil.owner_tag()}gold.img"
    live.write_bytes(b"x")
    # an older release named its temp file by pid only; that writer is gone too
    ended = subprocess.Popen(["true"])
    ended.wait()
    (gold / f".import-{ended.pid}.img").write_bytes(b"y")
    cli.run("iscsi", "gold", "import", "deb12", str(src))
    assert temps() == [live], temps()
    assert (gold / "1.img").stat().st_size == src.stat().st_size
    live.unlink()
