"""Running Nix: evaluate a NixOS configuration's kernel, initrd and toplevel, build them, and
ask the store for a closure and its registration.

Only the Nix command-line tools are used (`nix eval`, `nix-instantiate`, `nix-store`), in the
user's environment (their nix.conf, store and daemon). One evaluation yields all derivation
paths and output paths at once; `nix-store --realise` then builds them, its log streamed line by
line to the caller. Every imported build is a GC root (`nix-store --add-root` under
`<state>/gcroots/`), so `nix-collect-garbage` keeps what a kept generation was made from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from netbootd.errors import BuildError, InvalidInput

Mode = Literal["netboot", "compose"]
MODES: tuple[Mode, ...] = ("netboot", "compose")
LogFn = Callable[[str], None]

_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
DEFAULT_KERNEL_FILE = "bzImage"  # for a configuration that does not name its kernel file
GCROOTS_DIR = "gcroots"


def attr_path(text: str, what: str) -> list[str]:
    """`config.system.build.kernel` -> its elements, each a plain Nix identifier."""
    parts = text.split(".") if isinstance(text, str) else []
    if not parts or not all(_ATTR.fullmatch(p) for p in parts):
        raise InvalidInput(f"{what}: not an attribute path: {text!r} "
                           "(e.g. config.system.build.kernel)")
    return parts


def _select(parts: Sequence[str]) -> str:
    return "".join(f'."{p}"' for p in parts)


@dataclass(frozen=True)
class Attrs:
    """Where a configuration keeps what netbootd needs (attribute paths below the configuration;
    file names inside the built outputs)."""

    kernel: str = "config.system.build.kernel"
    netboot_initrd: str = "config.system.build.netbootRamdisk"
    stage1_initrd: str = "config.system.build.initialRamdisk"
    toplevel: str = "config.system.build.toplevel"
    kernel_params: str = "config.boot.kernelParams"
    # The kernel's file name inside the kernel output: NixOS says it in
    # config.system.boot.loader.kernelFile (bzImage on x86_64, Image on aarch64); `kernel_file`
    # overrides what the configuration says.
    kernel_file_attr: str = "config.system.boot.loader.kernelFile"
    kernel_file: str | None = None
    initrd_file: str = "initrd"

    def initrd(self, mode: Mode) -> str:
        return self.netboot_initrd if mode == "netboot" else self.stage1_initrd

    def check(self) -> Attrs:
        for what in ("kernel", "netboot_initrd", "stage1_initrd", "toplevel", "kernel_params",
                     "kernel_file_attr"):
            attr_path(getattr(self, what), what.replace("_", "-"))
        for what in ("kernel_file", "initrd_file"):
            value = getattr(self, what)
            if value is not None:
                file_name(value, what.replace("_", "-"))
        return self


def file_name(value: object, what: str) -> str:
    """A plain file name (no directory part), as a build output names its kernel or initrd."""
    if not isinstance(value, str) or not _FILE_NAME.fullmatch(value):
        raise InvalidInput(f"{what}: not a file name: {value!r}")
    return value


@dataclass(frozen=True)
class Source:
    """A flake (`<ref>#<name>`: nixosConfigurations.<name>) or a file + attribute path."""

    flake: str | None = None
    file: Path | None = None
    attr: str | None = None

    @classmethod
    def parse(cls, flake: str | None, file: str | None, attr: str | None) -> Source:
        if (flake is None) == (file is None):
            raise InvalidInput("give either --flake <ref>#<name> or --file FILE --attr ATTR")
        if flake is not None:
            if attr is not None:
                raise InvalidInput("--attr goes with --file; a flake names its configuration "
                                   "after '#': --flake <ref>#<name>")
            ref, sep, name = flake.rpartition("#")
            if not sep or not ref or not _NAME.fullmatch(name) or any(c in ref for c in "\n\0"):
                raise InvalidInput("--flake: expected <flake ref>#<configuration name>, "
                                   f"got {flake!r}")
            return cls(flake=flake)
        assert file is not None
        if attr is None:
            raise InvalidInput("--file needs --attr (the configuration's attribute path)")
        attr_path(attr, "--attr")
        return cls(file=Path(file).resolve(), attr=attr)

    @property
    def ref(self) -> str:
        """What the generation records as its source."""
        if self.flake is not None:
            return self.flake
        return f"file:{self.file}#{self.attr}"


@dataclass(frozen=True)
class Evaluated:
    kernel_drv: str
    kernel: Path
    initrd_drv: str
    initrd: Path
    toplevel_drv: str
    toplevel: Path
    kernel_params: tuple[str, ...]
    kernel_file: str | None = None  # what the configuration names (kernelFile), if anything

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.kernel, self.initrd, self.toplevel


@dataclass(frozen=True)
class Built:
    evaluated: Evaluated
    kernel_file: Path
    initrd_file: Path
    seconds: float


class Nix:
    """The Nix CLI. `env` adds to the inherited environment (tests point it at a private store)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}

    def _tool(self, name: str) -> str:
        path = shutil.which(name, path=self.env.get("PATH"))
        if path is None:
            raise BuildError(f"{name} not found: install Nix (Debian: apt-get install nix-bin)")
        return path

    def _run(self, argv: list[str], what: str, log: LogFn | None = None,
             timeout: float | None = None) -> str:
        """Run, stream stderr lines to `log`, return stdout; BuildError with the tail on failure."""
        argv = [self._tool(argv[0]), *argv[1:]]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=self.env, text=True,
                                    errors="replace")
        except OSError as e:
            raise BuildError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        tail: deque[str] = deque(maxlen=25)
        out: list[str] = []

        def pump_out() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.read())

        reader = threading.Thread(target=pump_out, daemon=True)
        reader.start()
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            if log is not None:
                log(line)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BuildError(f"{what}: timed out") from None
        reader.join()
        if rc != 0:
            shown = "\n".join(tail) or "(no output)"
            raise BuildError(f"{what} failed (exit status {rc}):\n{shown}")
        return "".join(out)

    # -- evaluation ---------------------------------------------------------------------------

    def _apply_fn(self, attrs: Attrs, mode: Mode) -> str:
        def get(path: str) -> str:
            return "c" + _select(attr_path(path, "attribute"))

        fields = []
        for key, path in (("kernel", attrs.kernel), ("initrd", attrs.initrd(mode)),
                          ("toplevel", attrs.toplevel)):
            # drvPath is absent for an already-built path given as { outPath = "..."; } (the
            # NixOS module's role list): then there is nothing to build, only to check.
            fields.append(f"{key} = {{ drv = {get(path)}.drvPath or null; "
                          f"out = {get(path)}.outPath; }};")
        fields.append(f"params = {get(attrs.kernel_params)} or [];")
        fields.append(f"kernelFile = {get(attrs.kernel_file_attr)} or null;")
        return "c: { " + " ".join(fields) + " }"

    def evaluate(self, source: Source, attrs: Attrs, mode: Mode,
                 log: LogFn | None = None) -> Evaluated:
        attrs.check()
        fn = self._apply_fn(attrs, mode)
        if source.flake is not None:
            ref, _, name = source.flake.rpartition("#")
            installable = f'{ref}#nixosConfigurations."{name}"'
            out = self._run(["nix", "eval", "--json", installable, "--apply", fn],
                            f"evaluating {source.flake}", log)
        else:
            assert source.file is not None and source.attr is not None
            if not source.file.exists():
                raise InvalidInput(f"--file: no such file: {source.file}")
            expr = (f"let f = import {json.dumps(str(source.file))}; "
                    f"v = if builtins.isFunction f then f {{}} else f; "
                    f"in ({fn}) v{_select(attr_path(source.attr, '--attr'))}")
            out = self._run(["nix-instantiate", "--eval", "--strict", "--json",
                             "--read-write-mode", "--expr", expr],
                            f"evaluating {source.ref}", log)
        try:
            v = json.loads(out)
            params = v["params"]
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                raise TypeError("kernel params are not a list of strings")
            kfile = v.get("kernelFile")
            if kfile is not None:
                kfile = file_name(kfile, "the configuration's system.boot.loader.kernelFile")
            return Evaluated(
                str(v["kernel"]["drv"] or ""), Path(v["kernel"]["out"]),
                str(v["initrd"]["drv"] or ""), Path(v["initrd"]["out"]),
                str(v["toplevel"]["drv"] or ""), Path(v["toplevel"]["out"]),
                tuple(params), kfile,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise BuildError(f"evaluating {source.ref}: unexpected result ({e}): "
                             f"{out[:300]}") from None

    # -- building -----------------------------------------------------------------------------

    def realise(self, drvs: Sequence[str], log: LogFn | None = None) -> None:
        self._run(["nix-store", "--realise", *drvs], "nix-store --realise", log)

    def add_roots(self, paths: Sequence[Path], roots: Path) -> None:
        """Make each store path a GC root: `roots/<its name>` (an indirect root, as
        `nix-build -o` makes), so `nix-collect-garbage` keeps it."""
        for p in paths:
            self._run(["nix-store", "--realise", str(p), "--add-root", str(roots / p.name)],
                      f"nix-store --add-root {roots / p.name}")

    def build(self, ev: Evaluated, source: Source, attrs: Attrs, mode: Mode,
              log: LogFn | None = None, t0: float | None = None) -> Built:
        """Build what `evaluate` found (nothing for already-built paths) and check the files.
        `t0`: when the evaluation started (the build time includes it)."""
        t0 = time.monotonic() if t0 is None else t0
        if log:
            log(f"netbootd: building {source.ref} (kernel, {mode} initrd, toplevel)")
        drvs = [d for d in (ev.kernel_drv, ev.initrd_drv, ev.toplevel_drv) if d]
        if drvs:
            self.realise(drvs, log)
        kernel = ev.kernel / (attrs.kernel_file or ev.kernel_file or DEFAULT_KERNEL_FILE)
        initrd = ev.initrd / attrs.initrd_file
        for f, what in ((kernel, "kernel-file"), (initrd, "initrd-file")):
            if not f.is_file():
                raise BuildError(f"the build has no {f} (set --{what} to the file name inside "
                                 f"{f.parent})")
        if not ev.toplevel.exists():
            raise BuildError(f"the build has no toplevel {ev.toplevel}")
        return Built(ev, kernel, initrd, time.monotonic() - t0)

    # -- queries ------------------------------------------------------------------------------

    def closure(self, path: Path) -> list[Path]:
        out = self._run(["nix-store", "--query", "--requisites", str(path)],
                        f"nix-store -qR {path}")
        return sorted(Path(line) for line in out.splitlines() if line.strip())

    def registration(self, paths: Sequence[Path]) -> bytes:
        """`nix-store --dump-db` of `paths`: what `nix-store --load-db` reads on the booted host."""
        return self._run(["nix-store", "--dump-db", *map(str, paths)],
                         "nix-store --dump-db").encode()
