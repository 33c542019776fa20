"""`netbootd role build`: a NixOS configuration -> a new generation of a role.

    evaluate + build (nixbuild.Nix)  ->  kernel file, initrd file, toplevel, kernel params
    mode "netboot":  initrds = [netbootRamdisk/initrd]   (stock NixOS netboot: stage 1 + a
                                                          squashfs of the whole closure)
    mode "compose":  initrds = [initialRamdisk/initrd,   (stage 1 only)
                                composed closure]        (compose.py: leader + one cached archive
                                                          per store path + registration)
    cmdline = init=<toplevel>/init <boot.kernelParams> <--cmdline>
    -> GC roots for the kernel, initrd and toplevel (<state>/gcroots/), artifacts
       (content-addressed), one generation row (made current), prune to --keep.

`--if-changed` (what the NixOS module's netbootd-roles unit runs at every start): when the role's
newest generation was built from the same kernel, initrd and toplevel, in the same mode, with the
same command line, nothing is built or imported (only --keep is applied). A changed setting
(`cmdline`, `mode`) or configuration makes a new generation; a `role rollback` stays in effect
until the configuration or its settings change.

The compose mode needs the booted system to take its store from the initramfs: nixos/client.nix
(`services.netbootd-client.composedStore`) does that in stage 1; see README "NixOS".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netbootd import model
from netbootd.errors import InvalidInput
from netbootd.fsutil import private_dir
from netbootd.model import Image, NixBuild
from netbootd.roles.artifacts import Artifacts, artifacts_lock
from netbootd.roles.compose import ComposeCache, ComposeStats, Compression, compose
from netbootd.roles.nixbuild import GCROOTS_DIR, MODES, Attrs, Evaluated, Mode, Nix, Source
from netbootd.store import Store

DEFAULT_KEEP = 5
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    image: Image
    compose: ComposeStats | None
    pruned: list[int]
    unchanged: bool = False  # --if-changed found the newest generation equal: nothing imported


def build_role(
    store: Store,
    state_dir: Path,
    role: str,
    source: Source,
    *,
    mode: Mode = "netboot",
    attrs: Attrs | None = None,
    cmdline: str = "",
    keep: int = DEFAULT_KEEP,
    compression: Compression = "gzip",
    nix: Nix | None = None,
    log: LogFn | None = None,
    jobs: int | None = None,
    if_changed: bool = False,
) -> BuildResult:
    """Build `source` and import it as a new, current generation of `role` (with `if_changed`:
    unless the role's newest generation is that build already)."""
    role = model.role_name(role)
    extra = model.cmdline(cmdline)
    if mode not in MODES:
        raise InvalidInput(f"unknown initrd mode {mode!r} (one of {', '.join(MODES)})")
    if keep < 1:
        raise InvalidInput("--keep must be at least 1")
    attrs = (attrs or Attrs()).check()
    cache = ComposeCache(state_dir, compression)  # validates the compression up front
    nix = nix or Nix()
    say = log or (lambda _line: None)

    t0 = time.monotonic()
    ev = nix.evaluate(source, attrs, mode, log)
    full = model.cmdline(" ".join([f"init={ev.toplevel}/init", *ev.kernel_params, extra]).strip())
    if if_changed:
        gens = store.generations(role)
        if gens and same_build(gens[-1], ev, mode, full):
            say(f"netbootd: role {role}: generation {gens[-1].generation} is this build already "
                "(same kernel, initrd, toplevel, mode and command line): nothing to import")
            return BuildResult(gens[-1], None, _prune(store, role, keep, say), unchanged=True)
    built = nix.build(ev, source, attrs, mode, log, t0)
    say(f"netbootd: built in {built.seconds:.1f}s: toplevel {ev.toplevel}")

    artifacts = Artifacts(state_dir)
    stats = None
    closure: list[Path] = []
    with artifacts_lock(state_dir, exclusive=False):
        # rooted before the row exists; `images gc` (exclusive lock) drops roots no kept
        # generation names
        nix.add_roots(ev.paths, private_dir(state_dir / GCROOTS_DIR))
        kernel = artifacts.import_file(built.kernel_file)
        initrds = [artifacts.import_file(built.initrd_file)]
        if mode == "compose":
            closure = nix.closure(ev.toplevel)
            say(f"netbootd: composing the initrd from {len(closure)} store paths "
                f"({compression}, cached per path)")
            registration = nix.registration(closure)
            with artifacts.writer() as w:
                stats = compose(closure, cache, w.write, registration=registration, jobs=jobs)
            assert w.artifact is not None
            initrds.append(w.artifact)
            say(f"netbootd: composed initrd: {stats.summary()}")
        info = NixBuild(
            mode=mode,
            kernel_path=str(ev.kernel),
            initrd_path=str(ev.initrd),
            toplevel_path=str(ev.toplevel),
            build_seconds=round(built.seconds, 3),
            compose_hits=stats.hits if stats else 0,
            compose_misses=stats.misses if stats else 0,
        )
        image = store.add_generation(role, kernel, initrds, full, source.ref, info,
                                     [str(p) for p in closure])
    return BuildResult(image, stats, _prune(store, role, keep, say))


def same_build(newest: Image, ev: Evaluated, mode: Mode, cmdline: str) -> bool:
    """Is `newest` what importing `ev` in `mode` with `cmdline` would make?"""
    b = newest.build
    return (b is not None and b.mode == mode and newest.cmdline == cmdline
            and (b.kernel_path, b.initrd_path, b.toplevel_path)
            == (str(ev.kernel), str(ev.initrd), str(ev.toplevel)))


def _prune(store: Store, role: str, keep: int, say: LogFn) -> list[int]:
    pruned = store.prune(role, keep)
    if pruned:
        say(f"netbootd: kept the newest {keep} generations; forgot {_nums(pruned)} "
            "(their files go with `netbootd images gc`)")
    return pruned


def _nums(ns: list[int]) -> str:
    return ", ".join(str(n) for n in ns)
