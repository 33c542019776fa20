"""A private, throw-away Nix store for tests: Debian's nix-bin (2.8) as root or not, no daemon,
no sandbox, no build users, no substituters (no network), flakes on. Every path the store uses
is under `root`, so tests are hermetic and parallel runs do not share state."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed import REPO
from testbed.procs import environ

FIXTURE = REPO / "tests" / "nix" / "fake-nixos"

NIX_CONFIG = "\n".join([
    "experimental-features = nix-command flakes",
    "sandbox = false",
    "build-users-group =",
    "substituters =",
    "flake-registry = /dev/null",  # never fetch the global flake registry
    "warn-dirty = false",
]) + "\n"


def missing() -> str | None:
    """Why real-Nix tests cannot run here, or None."""
    for tool in ("nix", "nix-store", "nix-instantiate"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package nix-bin; `make deps` installs it)"
    if platform.machine() != "x86_64":
        return "the fixture system is x86_64-linux"
    return None


def env(root: Path) -> dict[str, str]:
    """Environment variables that point Nix at a private store under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        "NIX_STORE_DIR": str(root / "store"),
        "NIX_STATE_DIR": str(root / "var"),
        "NIX_LOG_DIR": str(root / "var" / "log"),
        "NIX_CONF_DIR": str(root / "etc"),  # no /etc/nix/nix.conf from the host
        "NIX_CONFIG": NIX_CONFIG,
        "NIX_REMOTE": "",  # no daemon
        "XDG_CACHE_HOME": str(root / "cache"),
        "HOME": str(root / "home"),
    }


@contextmanager
def exported(root: Path) -> Iterator[dict[str, str]]:
    """env(root) put into os.environ (so the CLI subprocesses a test runs use the private store)
    for the duration, the previous values restored afterwards."""
    with environ(env(root)) as values:
        yield values


def fixture_copy(dest: Path, version: str = "1") -> Path:
    """A writable copy of tests/nix/fake-nixos with its `version` file set."""
    shutil.copytree(FIXTURE, dest)
    (dest / "version").write_text(version)
    return dest
