"""netbootd.ratelimit on a clock the test moves."""

from __future__ import annotations

import pytest

from netbootd.ratelimit import KeyedBuckets, LogBudget, Summary, Tally, TokenBucket


def test_token_bucket_bursts_then_refills_at_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.allow(0.4)  # 0.8 of a token
    assert b.allow(0.5)  # 1 token after 0.5 s at 2/s
    assert not b.allow(0.5)
    assert [b.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not b.allow(99.0)  # a clock going backwards refills nothing
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0, now=0)


def test_keyed_buckets_are_per_key_and_bounded() -> None:
    kb = KeyedBuckets(rate=0.0, burst=1, max_keys=3)
    assert kb.allow("a", 0) and not kb.allow("a", 1)
    assert kb.allow("b", 0) and kb.allow("c", 0)
    assert kb.allow("d", 0)  # a fourth key forgets the least recently used ("a")
    assert len(kb) == 3
    assert kb.allow("a", 2)  # forgotten: starts full again


def test_log_budget_logs_the_first_keys_then_counts() -> None:
    lb = LogBudget(interval=60, budget=3)
    assert lb.take(0) is None and lb.due() is None  # nothing runs on a quiet server
    verdicts = [lb.admit(10 + i * 0.01, f"mac{i % 5}") for i in range(1000)]
    assert verdicts[:3] == [True, True, True] and not any(verdicts[3:])
    assert lb.due() == 70
    assert lb.take(69.9) is None  # still running
    t = lb.take(70)
    assert t == Tally(seconds=60, events=1000, logged=3, keys=5, keys_capped=False)
    assert t.held == 997 and t.key_count("MAC", "MACs") == "5 MACs"
    assert lb.take(71) is None and lb.due() is None
    # the next interval starts with the next event, budget and keys afresh
    assert lb.admit(200, "mac0") and not lb.admit(200.5, "mac0")  # a key once per interval
    t = lb.take(400)
    assert (t.events, t.logged, t.keys) == (2, 1, 1) and t.key_count("MAC", "MACs") == "1 MAC"


def test_log_budget_key_cap_and_a_missed_take() -> None:
    lb = LogBudget(interval=10, budget=100, max_keys=4)
    for i in range(10):
        lb.admit(0, i)
    # no take() at the end of the interval: the next event closes it first, nothing is lost
    assert lb.admit(15, "x")
    t = lb.take(15.5)
    # past max_keys a key cannot be told new or not: written in full while the budget lasts
    assert (t.events, t.logged, t.keys, t.keys_capped) == (10, 10, 4, True)
    assert t.key_count("MAC", "MACs") == "at least 4 MACs"
    t = lb.take(15.5, force=True)  # shutdown: the running interval counts as over
    assert (t.seconds, t.events) == (0.5, 1)


def test_summary_is_written_when_the_interval_ends_even_if_the_flood_stops() -> None:
    now = [0.0]
    timers: list[tuple[float, object]] = []
    lines: list[Tally] = []
    s = Summary(LogBudget(60, 2), lambda: now[0], lines.append,
                lambda delay, cb: timers.append((now[0] + delay, cb)))
    assert [s.admit(k) for k in "abcd"] == [True, True, False, False]
    assert len(timers) == 1 and timers[0][0] == 60  # asked once per interval
    now[0] = 59.999  # a loop that wakes early: no summary yet, asked again
    timers.pop()[1]()  # type: ignore[operator]
    assert lines == [] and timers[0][0] == 60
    now[0] = 60
    timers.pop()[1]()  # type: ignore[operator]
    assert [(t.events, t.held, t.keys) for t in lines] == [(4, 2, 4)]
    s.flush(force=True)
    assert len(lines) == 1  # nothing new: no line


def test_summary_report_all_and_nothing_held() -> None:
    now = [0.0]
    lines: list[Tally] = []
    quiet = Summary(LogBudget(10, 5), lambda: now[0], lines.append)
    quiet.admit("a")
    quiet.flush(force=True)
    assert lines == []  # everything was written in full: no summary needed
    every = Summary(LogBudget(10, 5), lambda: now[0], lines.append, report_all=True)
    every.admit("a")
    now[0] = 11
    every.admit("b")  # closes the first interval: without a scheduler, it comes now
    assert [(t.events, t.held) for t in lines] == [(1, 0)]
