"""Rate limits for what a peer can make netbootd write: audit rows and log lines.

Anything on the LAN can send requests and packets netbootd would like to record (a report
without a token, a tampered identity token, a malformed request, an unknown MAC). Recording each
one lets a flood grow the database and the log without bound, so records pass through a limiter
here. Pure: the clock is an argument (`now`, seconds, any monotonic origin), so the tests drive
time and nothing here sleeps, schedules or logs; every table of keys is bounded (the oldest key
is forgotten first: a flood of random keys costs bounded memory, and loses only counts). The
callers decide what one event is and what the summary says.

    PerKey        at most one record per key (a MAC, a source address, a token) per interval;
                  the hits in between are counted, and due() hands back, once their interval
                  is over, the keys that have some -- with the context of the last one -- for
                  one summary record each (audit rows). An interval of 0 records every hit.
    TokenBucket   `rate` tokens a second, at most `burst` saved up: allow(now) spends one
    KeyedBuckets  one TokenBucket per key, at most `max_keys` remembered (LRU)
    LogBudget     per interval, at most `budget` events written in full, each key at most once;
                  the rest only counted. take(now) hands over the finished interval's Tally for
                  one summary line ("N requests from M unknown MACs in the last 60 s").
    Summary       a LogBudget with its clock and its summary line written when the interval
                  ends (the adapter passes loop.call_later), so it comes even if a flood stops.

Why intervals rather than a bucket for log lines: an operator reading a flood wants the first few
lines whole (which MAC, which peer) and then one line that says how big it was -- a bucket alone
drops the excess silently, so the size of the flood would be lost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
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


class TokenBucket:
    """`rate` events a second on average, bursts of up to `burst`. Starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("a token bucket needs rate >= 0 and burst >= 1")
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many (refilled up to `now`); False otherwise."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class KeyedBuckets:
    """A TokenBucket per key, made full on first use; at most `max_keys` kept (LRU). A key
    forgotten and seen again starts full, so `max_keys` should exceed the keys active at once."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class Tally:
    """One finished interval of a LogBudget."""

    seconds: float  # how long the interval ran (its nominal length once it is over)
    events: int  # everything counted
    logged: int  # of which written in full
    keys: int  # distinct keys seen (at most the budget's max_keys)
    keys_capped: bool  # there were more keys than max_keys: `keys` is a lower bound

    @property
    def held(self) -> int:
        """Events not written in full: what the summary line is for."""
        return self.events - self.logged

    def key_count(self, one: str, many: str) -> str:
        """'1 MAC', '3 MACs' or 'at least 4,096 MACs': the distinct keys, for a summary line."""
        noun = one if self.keys == 1 and not self.keys_capped else many
        return f"{'at least ' if self.keys_capped else ''}{self.keys:,} {noun}"


class LogBudget:
    """At most `budget` events a `interval` written in full, each key once; the rest counted.

    An interval begins with the first event after the previous one was taken (so a quiet server
    has no interval running) and lasts `interval` seconds. `take(now)` returns the Tally of an
    interval that is over (None while it runs) and starts afresh; an
    event that arrives after the end but before anyone called take() closes the old interval
    first, so nothing is lost or counted twice."""

    def __init__(self, interval: float, budget: int, max_keys: int = 4096) -> None:
        if interval <= 0 or budget < 0:
            raise ValueError("a log budget needs interval > 0 and budget >= 0")
        self.interval, self.budget, self.max_keys = interval, budget, max_keys
        self._start: float | None = None
        self._events = self._logged = 0
        self._keys: set[Hashable] = set()
        self._capped = False
        self._done: Tally | None = None  # an interval that ended before take() was called

    def admit(self, now: float, key: Hashable = None) -> bool:
        """Count one event; True if it may be written in full (budget left in this interval and,
        with a key, the first time this key is seen in it)."""
        if self._start is not None and now >= self._start + self.interval:
            self._close(self.interval)
        if self._start is None:
            self._start = now
        self._events += 1
        new_key = True
        if key is not None:
            if key in self._keys:
                new_key = False
            elif len(self._keys) < self.max_keys:
                self._keys.add(key)
            else:
                self._capped = True
        if new_key and self._logged < self.budget:
            self._logged += 1
            return True
        return False

    def due(self) -> float | None:
        """When the running interval ends (None: none is running)."""
        return None if self._start is None else self._start + self.interval

    def take(self, now: float, force: bool = False) -> Tally | None:
        """The Tally of the interval that is over (None while one runs or none ran); a summary
        line is due if its `held` is not 0. With `force` (shutdown), the running interval
        counts as over now."""
        if self._start is not None and (force or now >= self._start + self.interval):
            self._close(min(self.interval, max(0.0, now - self._start)))
        done, self._done = self._done, None
        return done

    def _close(self, seconds: float) -> None:
        t = Tally(seconds, self._events, self._logged, len(self._keys), self._capped)
        if self._done is not None:  # two intervals without a take(): report them as one
            d = self._done
            t = Tally(d.seconds + t.seconds, d.events + t.events, d.logged + t.logged,
                      max(d.keys, t.keys), d.keys_capped or t.keys_capped)
        self._done = t
        self._start = None
        self._events = self._logged = 0
        self._keys = set()
        self._capped = False


class Summary:
    """A LogBudget with its clock, and its summary line written when the interval ends.

    `emit(tally)` writes the summary of an interval that held something back (with
    `report_all`, of every interval that counted anything); `schedule(delay, callback)` (the
    adapter passes the event loop's call_later) is asked once per such interval, so the summary
    comes even if the flood stops. Without `schedule`, the summary waits for the next event or
    flush(). Nothing else here touches a loop or a logger."""

    def __init__(self, budget: LogBudget, clock: Callable[[], float],
                 emit: Callable[[Tally], None],
                 schedule: Callable[[float, Callable[[], None]], object] | None = None,
                 report_all: bool = False) -> None:
        self.budget, self.clock, self.emit, self.schedule = budget, clock, emit, schedule
        self.report_all = report_all
        self._scheduled = False

    def admit(self, key: Hashable = None) -> bool:
        now = self.clock()
        if not self._scheduled:
            self._emit(self.budget.take(now))
        full = self.budget.admit(now, key)
        if (self.report_all or not full) and not self._scheduled and self.schedule is not None:
            due = self.budget.due()
            if due is not None:
                self._scheduled = True
                self.schedule(max(0.0, due - now), self._due)
        return full

    def flush(self, force: bool = False) -> None:
        """Write the summary of a finished interval (with `force`, of the running one too)."""
        self._emit(self.budget.take(self.clock(), force))

    def _due(self) -> None:
        self._scheduled = False
        now, due = self.clock(), self.budget.due()
        if due is not None and now < due and self.schedule is not None:  # woken a bit early
            self._scheduled = True
            self.schedule(due - now, self._due)
            return
        self.flush()

    def _emit(self, tally: Tally | None) -> None:
        if tally is not None and (tally.held or (self.report_all and tally.events)):
            self.emit(tally)
