"""Bounding what unauthenticated traffic can make netbootd write: audit rows and log lines.

Anything on the LAN can send requests that netbootd would like to record (a report without a
token, a tampered identity token, a script fetched from the wrong address). Recording each one
lets a flood grow the database and the log without bound, so each kind of record passes through
a `PerKey` limiter: at most one record per key (a MAC, a source address, a token) per interval.
The hits suppressed in between are counted, and `due()` hands back, once their interval is
over, the keys that have some -- with the context of the last one -- so the caller writes one
summary for them. The clock is passed in; the table of keys is bounded (the oldest key is
forgotten first: a flood of random keys costs bounded memory, and loses only counts).
An interval of 0 records every hit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Slot:
    start: float  # when the current interval began (the last admitted hit)
    suppressed: int = 0
    context: object = None  # what the last suppressed hit was about


class PerKey:
    """At most one admitted hit per key per `interval` seconds."""

    def __init__(self, interval: float, max_keys: int = 4096) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Slot] = OrderedDict()

    def admit(self, key: Hashable, now: float, context: object = None) -> int | None:
        """None: suppress this hit (counted, with its `context`, for `due`). Otherwise record
        it: the number is how many hits it stands for (itself and those still uncounted)."""
        slot = self._keys.pop(key, None)
        if slot is not None and now - slot.start < self.interval:
            slot.suppressed += 1
            slot.context = context
            self._keys[key] = slot
            return None
        self._keys[key] = _Slot(now)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return 1 + (slot.suppressed if slot is not None else 0)

    def due(self, now: float) -> list[tuple[Hashable, int, object]]:
        """(key, suppressed hits, context of the last) for every key whose interval is over with
        hits still uncounted; they are counted now (their next hit starts afresh)."""
        out = []
        for key, slot in list(self._keys.items()):
            if slot.suppressed and now - slot.start >= self.interval:
                out.append((key, slot.suppressed, slot.context))
                del self._keys[key]
        return out
