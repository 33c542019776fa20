"""One power action with a deadline and retries, off the caller's thread.

`run` starts the BMC call in a daemon thread and waits at most `timeout` seconds for each
attempt; a BMC that does not answer (no reply, a refused or reset connection, or a reply that
does not come before the deadline) is tried `retries` more times, then `run` raises a
BmcError that says so -- within (retries + 1) x timeout (+ the retry pause), whatever the
protocol library does. Credentials and commands refused by a BMC that did answer are not
retried. A thread left behind by a deadline is a daemon and ends on its library's own timeout
(clients.py); nothing waits for it.

`offload` runs such a call for the servers' event loop: the loop awaits, never blocks.

The protocol libraries' loggers are held at WARNING: at DEBUG sushy logs request bodies (it
masks them, but a password is not left to a third party's masking) and pyghmi traces packets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from netbootd.errors import BmcError
from netbootd.power import clients
from netbootd.power.clients import Client, NoAnswer
from netbootd.power.credentials import Secret
from netbootd.power.settings import BmcSettings, PowerAction

T = TypeVar("T")
log = logging.getLogger("netbootd.power")
for _name in ("sushy", "pyghmi", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="power")
ClientFactory = Callable[[BmcSettings, Secret, float], Client]


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # seconds per attempt
    retries: int = 1  # more attempts after a BMC that did not answer
    pause: float = 1.0  # seconds between attempts


def _attempt(fn: Callable[[], T], timeout: float, target: str, what: str) -> T:
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the waiting thread)
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name=f"bmc {target}", daemon=True).start()
    if not done.wait(timeout):
        raise NoAnswer(f"BMC {target}: no answer to {what} within {timeout:g} s")
    if "error" in box:
        err = box["error"]
        assert isinstance(err, BaseException)
        if isinstance(err, BmcError):
            raise err
        # anything else from a protocol library: a BMC that answered something unreadable
        raise BmcError(f"BMC {target}: {what}: {type(err).__name__}: "
                       f"{' '.join(str(err).split())[:300]}") from None
    return box["value"]  # type: ignore[return-value]


def act(c: Client, action: PowerAction) -> str | None:
    """Do `action` on a client; the power state for STATUS, else None."""
    if action is PowerAction.STATUS:
        return c.status()
    {PowerAction.ON: c.on, PowerAction.OFF: c.off, PowerAction.CYCLE: c.cycle,
     PowerAction.BOOT_ONCE_PXE: c.boot_once_pxe}[action]()
    return None


def run(bmc: BmcSettings, password: Secret, action: PowerAction, limits: Limits,
        factory: ClientFactory = clients.client) -> str | None:
    """Blocking: `action` on the BMC, with the deadline and retries of `limits`."""
    c = factory(bmc, password, limits.timeout)
    attempts = 1 + max(0, limits.retries)
    started = time.monotonic()
    for n in range(1, attempts + 1):
        try:
            return _attempt(lambda: act(c, action), limits.timeout, bmc.target, str(action))
        except BmcError as e:
            secret = password.reveal()
            if secret and secret in str(e):  # a library that quoted it: never pass it on
                raise type(e)(str(e).replace(secret, "***")) from None
            if not isinstance(e, NoAnswer):
                raise
            if n == attempts:
                raise NoAnswer(f"{e} (tried {attempts} time(s) in "
                               f"{time.monotonic() - started:.1f} s; is the BMC up and "
                               "reachable from this server?)") from None
            log.warning("mac=%s %s; trying again (%d/%d)", bmc.mac, e, n + 1, attempts)
            time.sleep(limits.pause)
    raise AssertionError("unreachable")


async def offload(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking power action (actions.power, ...) for an event loop: in the power
    executor (its own few threads, so BMCs that do not answer cannot take the default
    executor's threads from the rest); the loop awaits, never blocks."""
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, fn, *args)
