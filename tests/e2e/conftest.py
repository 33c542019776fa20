"""Fixtures for the end-to-end tests: real QEMU PXE clients booting from netbootd in namespaces.

The lab itself is testbed/ (testbed.lab, testbed.vm). Missing prerequisites (not root, no netns, no
QEMU/dnsmasq/OVMF, no kernel) SKIP the e2e tests with the reason; with NETBOOTD_REQUIRE_E2E=1 (CI)
the same reasons FAIL them instead (testbed.skips.unavailable).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.lab import PREFIX, Missing, Site, build_image, log
from testbed.netns import cleanup_stale
from testbed.skips import missing_prerequisites, require, unavailable

BOOT_TIMES: list[tuple[str, float, str]] = []  # (test, seconds, note) for the summary


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
    require(missing_prerequisites())
    cleanup_stale(PREFIX, log)
    try:
        return build_image(tmp_path_factory.mktemp("image"))
    except Missing as e:
        unavailable(f"no guest kernel: {e}")


@pytest.fixture(scope="module")
def site(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One lab + one `netbootd serve` (role `e2e` added) shared by a test module."""
    with Site.start(tmp_path_factory.mktemp("site"), e2e_env) as s:
        yield s


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
