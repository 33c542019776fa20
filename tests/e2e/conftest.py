"""Fixtures for the end-to-end tests: real QEMU PXE clients booting from netbootd in namespaces.

Missing prerequisites (not root, no netns, no QEMU/dnsmasq/OVMF, no kernel) SKIP the e2e tests with
the reason; with NETBOOTD_REQUIRE_E2E=1 (CI) the same reasons FAIL them instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any, NoReturn

import e2e_harness as h
import pytest

REQUIRE = os.environ.get("NETBOOTD_REQUIRE_E2E") == "1"
BOOT_TIMES: list[tuple[str, float, str]] = []  # (test, seconds, note) for the summary


def unavailable(reason: str) -> NoReturn:
    if REQUIRE:
        pytest.fail(f"e2e prerequisite missing and NETBOOTD_REQUIRE_E2E=1: {reason}", pytrace=False)
    pytest.skip(f"e2e: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`) runs the fixture finalizers like Ctrl-C does, so namespaces and
    # VMs go away; SIGKILL cannot be caught: the next run's cleanup_stale() handles that.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, _term)


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Prerequisites checked once, stale leftovers removed, the test image built once."""
    why = h.missing_prerequisites()
    if why:
        unavailable("; ".join(why))
    h.cleanup_stale()
    try:
        return h.build_image(tmp_path_factory.mktemp("image"))
    except h.E2EError as e:
        if str(e).startswith("missing:"):
            unavailable(f"no guest kernel: {str(e).removeprefix('missing:').strip()}")
        raise


@pytest.fixture(scope="module")
def site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Site]:
    """One lab + one `netbootd serve` (role `e2e` added) shared by a test module."""
    s = h.Site.start(tmp_path_factory.mktemp("site"), e2e_env)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def boot_timer(request: pytest.FixtureRequest) -> Any:
    """record(seconds, note): print the boot time and add it to the end-of-run summary."""

    def record(seconds: float, note: str = "") -> None:
        BOOT_TIMES.append((request.node.name, seconds, note))
        print(f"\nboot time {request.node.name}: {seconds:.1f}s (QEMU start -> booted) {note}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not BOOT_TIMES:
        return
    terminalreporter.section("e2e boot times (QEMU start -> booted event)")
    for name, secs, note in BOOT_TIMES:
        terminalreporter.write_line(f"{secs:6.1f}s  {name} {note}")
