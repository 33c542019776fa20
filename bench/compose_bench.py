"""Cold vs incremental initrd composition (netbootd/roles/compose.py) on a synthetic closure.

    python -m bench.compose_bench [--paths 1000] [--mb 512] [--workdir DIR] [--json FILE]

Makes a store directory with `--paths` store paths totalling `--mb` MiB (sizes spread like a
real closure: many small paths, a few large ones; content compressible about 3:1 like binaries),
then times, through the same code `netbootd role build --mode compose` runs (compose -> a new
content-addressed artifact, hashed while written):

  cold         empty compose cache: every path compressed
  incremental  one store path replaced (a new path in the closure, as after a config change):
               one path compressed, the rest concatenated from the cache

Goal (issue 7): incremental <= 2 s. Prints both times and the ratio; exit status 0 either way
(a missed goal is reported, not a failure), 1 if the two initrds do not unpack to the closures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from netbootd.roles.artifacts import Artifacts
from netbootd.roles.compose import ComposeCache, compose

GOAL_INCREMENTAL = 2.0
MiB = 1 << 20


def _block(seed: int, size: int) -> bytes:
    """Compressible like machine code (~3:1 with gzip): random bytes from a small alphabet with
    runs, different per seed."""
    rnd = random.Random(seed)
    alphabet = bytes(rnd.sample(range(256), 24))
    base = bytes(rnd.choices(alphabet, k=4096))
    out = bytearray()
    while len(out) < size:
        i = rnd.randrange(0, 4096 - 512)
        out += base[i : i + rnd.randrange(64, 512)]
        out += rnd.randbytes(rnd.randrange(96, 320))
    return bytes(out[:size])


def make_store(root: Path, paths: int, total: int, seed: int = 1) -> list[Path]:
    """`paths` store paths under root/store totalling ~`total` bytes."""
    store = root / "store"
    store.mkdir(parents=True)
    rnd = random.Random(seed)
    # Pareto-ish sizes: a few large paths (a kernel's modules, firmware, glibc), many small
    weights = [rnd.paretovariate(1.2) for _ in range(paths)]
    scale = total / sum(weights)
    pool = _block(seed, 8 * MiB)
    out = []
    for i, w in enumerate(weights):
        size = max(256, int(w * scale))
        h = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:32]
        p = store / f"{h}-pkg{i}-1.0"
        (p / "lib").mkdir(parents=True)
        (p / "share" / "doc").mkdir(parents=True)
        n_files = 1 + min(5, size // (256 * 1024))
        per = size // n_files
        for j in range(n_files):
            off = rnd.randrange(0, len(pool) - min(per, len(pool)) + 1)
            data = pool[off : off + per]
            if len(data) < per:
                data = (data * (per // max(1, len(data)) + 1))[:per]
            # a per-file header so no two files are identical
            (p / "lib" / f"lib{i}_{j}.so").write_bytes(f"{p.name}/{j}\n".encode() + data)
        (p / "share" / "doc" / "README").write_text(f"package {i}\n" * 20)
        os.symlink(f"lib{i}_0.so", p / "lib" / f"lib{i}.so")
        out.append(p)
    return out


def timed_compose(paths: list[Path], cache: ComposeCache, artifacts: Artifacts) -> dict:
    t0 = time.monotonic()
    with artifacts.writer() as w:
        stats = compose(paths, cache, w.write)
    dt = time.monotonic() - t0
    assert w.artifact is not None
    return {"seconds": round(dt, 3), "hits": stats.hits, "misses": stats.misses,
            "initrd_bytes": w.artifact.size, "sha256": w.artifact.sha256}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=512, help="MiB of store content (default 512)")
    ap.add_argument("--workdir", type=Path, help="default: a temp dir, removed afterwards")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--md", type=Path, help="also write a markdown table here")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nbd-compose-bench-"))
    try:
        t0 = time.monotonic()
        paths = make_store(work / "s", args.paths, args.mb * MiB)
        content = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
        print(f"synthetic closure: {len(paths)} store paths, {content / MiB:.0f} MiB "
              f"(made in {time.monotonic() - t0:.1f}s); {os.cpu_count()} CPUs", flush=True)
        state = work / "state"
        cache = ComposeCache(state)
        artifacts = Artifacts(state)
        cold = timed_compose(paths, cache, artifacts)
        print(f"cold:        {cold['seconds']:7.2f}s  ({cold['misses']} compressed, "
              f"initrd {cold['initrd_bytes'] / MiB:.0f} MiB)", flush=True)
        # one store path changes: a rebuilt configuration has a new path in its closure
        changed = work / "s" / "store" / f"{'f' * 32}-etc-2"
        (changed / "etc").mkdir(parents=True)
        (changed / "etc" / "version").write_text("2\n")
        gen2 = paths[:-1] + [changed]
        inc = timed_compose(gen2, cache, artifacts)
        print(f"incremental: {inc['seconds']:7.2f}s  ({inc['misses']} compressed, "
              f"{inc['hits']} from the cache)", flush=True)
        ratio = cold["seconds"] / max(inc["seconds"], 1e-9)
        ok = inc["seconds"] <= GOAL_INCREMENTAL
        print(f"ratio cold/incremental: {ratio:.1f}x; goal incremental <= {GOAL_INCREMENTAL:.0f}s: "
              f"{'met' if ok else 'MISSED'}")
        result = {"paths": len(paths), "content_bytes": content, "cpus": os.cpu_count(),
                  "cold": cold, "incremental": inc, "ratio": round(ratio, 2),
                  "goal_seconds": GOAL_INCREMENTAL, "goal_met": ok}
        if inc["misses"] != 1 or cold["misses"] != len(paths):
            print("error: unexpected cache accounting", file=sys.stderr)
            return 1
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        if args.md:
            args.md.write_text(
                "# Initrd composition: cold vs incremental (`make bench`)\n\n"
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · synthetic closure of "
                f"{len(paths)} store paths, {content / MiB:.0f} MiB · {os.cpu_count()} CPUs · "
                "`python -m bench.compose_bench`\n\n"
                "| Compose | Seconds | Paths compressed | From cache | Initrd MiB |\n"
                "|---|---|---|---|---|\n"
                f"| cold (empty cache) | {cold['seconds']:.2f} | {cold['misses']} | {cold['hits']} "
                f"| {cold['initrd_bytes'] / MiB:.0f} |\n"
                f"| incremental (one path changed) | {inc['seconds']:.2f} | {inc['misses']} "
                f"| {inc['hits']} | {inc['initrd_bytes'] / MiB:.0f} |\n\n"
                f"Ratio cold / incremental: **{ratio:.1f}x**. Goal incremental <= "
                f"{GOAL_INCREMENTAL:.0f} s: {'met' if ok else '**missed**'}.\n"
            )
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
