"""A background job that `serve` runs every `interval` seconds, beside the servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from netbootd.errors import NetbootdError


class Periodic:
    """Subclasses set `name` and implement `tick()`. A failing tick is logged (an operator error
    without a traceback, a bug with one) and the job carries on: it is an adapter edge."""

    name = "periodic job"

    def __init__(self, interval: float, log: logging.Logger) -> None:
        self.interval = interval
        self.log = log
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except NetbootdError as e:
                self.log.error("%s failed: %s", self.name, e)
            except Exception:  # the adapter edge: keep the job (and the server) alive
                self.log.exception("%s crashed", self.name)
            self.rounds += 1
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
