"""`netbootd role build`: a NixOS configuration -> a new generation of a role.

    evaluate + build (nixbuild.Nix)  ->  kernel file, initrd file, toplevel, kernel params
    mode "netboot":  initrds = [netbootRamdisk/initrd]   (stock NixOS netboot: stage 1 + a
                                                          squashfs of the whole closure)
    mode "compose":  initrds = [initialRamdisk/initrd,   (stage 1 only)
                                composed closure]        (compose.py: leader + one cached archive
                                                          per store path + registration)
    cmdline = init=<toplevel>/init <boot.kernelParams> <--cmdline>
    -> artifacts (content-addressed), one generation row (made current), prune to --keep.

The compose mode needs the booted system to take its store from the initramfs: nixos/client.nix
(`services.netbootd-client.composedStore`) does that in stage 1; see README "NixOS".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netbootd import model
from netbootd.errors import InvalidInput
from netbootd.model import Image, NixBuild
from netbootd.roles.artifacts import Artifacts, artifacts_lock
from netbootd.roles.compose import ComposeCache, ComposeStats, Compression, compose
from netbootd.roles.nixbuild import MODES, Attrs, Mode, Nix, Source
from netbootd.store import Store

DEFAULT_KEEP = 5
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    image: Image
    compose: ComposeStats | None
    pruned: list[int]


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
) -> BuildResult:
    """Build `source` and import it as a new, current generation of `role`."""
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

    built = nix.build(source, attrs, mode, log)
    ev = built.evaluated
    say(f"netbootd: built in {built.seconds:.1f}s: toplevel {ev.toplevel}")
    full = model.cmdline(" ".join([f"init={ev.toplevel}/init", *ev.kernel_params, extra]).strip())

    artifacts = Artifacts(state_dir)
    stats = None
    closure: list[Path] = []
    with artifacts_lock(state_dir, exclusive=False):
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
    pruned = store.prune(role, keep)
    if pruned:
        say(f"netbootd: kept the newest {keep} generations; forgot {_nums(pruned)} "
            "(their files go with `netbootd images gc`)")
    return BuildResult(image, stats, pruned)


def _nums(ns: list[int]) -> str:
    return ", ".join(str(n) for n in ns)
