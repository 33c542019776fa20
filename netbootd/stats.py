"""What the servers count for /metrics: plain integers in one process-wide table, bumped on the
hot paths at the cost of a dict update (no locks: CPython's dict increment of a small key is
cheap, and a lost increment between the TFTP thread and the event loop would cost one count,
never a wrong state). servers/metrics.py turns them into Prometheus families at scrape time;
nothing else reads them. Labels are short, fixed vocabularies (never a client's text)."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[tuple[str, ...]] = Counter()


def inc(name: str, *labels: str, n: int = 1) -> None:
    COUNTS[(name, *labels)] += n


def snapshot() -> dict[tuple[str, ...], int]:
    return dict(COUNTS)
