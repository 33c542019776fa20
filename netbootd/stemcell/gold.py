"""Gold images of iSCSI stem-cell hosts: `<iscsi.dir>/gold/<name>/<version>.img`, read-only
(0444), imported as sparse copies; a version no LUN is based on is pruned. Clones of them are
the hosts' root LUNs (stemcell/iscsi.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from netbootd import fsutil, model
from netbootd.config import Config
from netbootd.errors import InvalidInput, NotFound
from netbootd.model import GoldImage
from netbootd.stemcell import clone
from netbootd.store import Store

MIN_SANBOOT_SIZE = 8 << 20  # iPXE's int13 geometry guess gives 0 cylinders below ~8 MiB


GOLD_TEMP_PREFIX = ".import-"  # `.import-<pid>-<starttime>-gold.img` (and its copy's temp)


def remove_dead_gold_imports(cfg: Config) -> int:
    """Killed imports' temp files in the gold directories (`.import-...` and sparse_copy's
    `..import-....tmp-<pid>`), removed when their writer is gone (fsutil.writer_gone: no live
    process with that pid and start time), so kill -9 of a 100 GB import does not leave 100 GB
    behind for good; a live import's are kept. At every import and at `serve` start. How many."""
    removed = 0
    for p in sorted((cfg.iscsi_dir / "gold").glob("*/*")):
        for prefix in (GOLD_TEMP_PREFIX, "." + GOLD_TEMP_PREFIX):
            if not p.name.startswith(prefix):
                continue
            gone = fsutil.writer_gone(p.name, prefix)
            if gone is None:  # an older release's name, by pid only: `.import-<pid>.img`
                pid = p.name[len(prefix):].split(".")[0]
                gone = pid.isdigit() and not Path(f"/proc/{pid}").exists()
            if gone:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
    return removed


def import_gold(store: Store, cfg: Config, name: str, src: Path,
                progress: clone.Progress | None = None) -> tuple[GoldImage, list[str]]:
    """Copy `src` in as the next version of gold image `name` (sparse; made read-only).
    Returns the row and warnings for the operator."""
    name = model.gold_name(name)
    if not src.is_file():
        raise NotFound(f"no such file: {src}")
    size = src.stat().st_size
    warnings = []
    if size < MIN_SANBOOT_SIZE:
        warnings.append(f"{src} is {size} bytes: iPXE's sanboot needs a disk of at least 8 MiB "
                        "(its int13 geometry guess gives 0 cylinders below that)")
    if size % 512:
        raise InvalidInput(f"{src} is {size} bytes, not a whole number of 512-byte sectors")
    d = cfg.iscsi_dir / "gold" / name
    d.mkdir(parents=True, exist_ok=True)
    remove_dead_gold_imports(cfg)
    tmp = d / f"{GOLD_TEMP_PREFIX}{fsutil.owner_tag()}gold.img"
    try:
        clone.sparse_copy(src, tmp, progress)
        os.chmod(tmp, 0o444)

        def place(version: int) -> None:
            os.replace(tmp, d / f"{version}.img")

        gold = store.add_gold(name, lambda v: str(d / f"{v}.img"), size, str(src), place)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return gold, warnings


def prune_golds(store: Store) -> list[GoldImage]:
    """Delete superseded gold versions no LUN is based on (qcow2 overlays read theirs)."""
    gone = store.forget_unused_golds()
    for g in gone:
        with contextlib.suppress(FileNotFoundError):
            Path(g.file).unlink()
    return gone
