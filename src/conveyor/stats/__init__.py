"""Task statistics derived from the store's timeline: exact across processes, kept across
restarts. ``tally.py`` says what is counted, ``store.py`` how it is kept (fold, reconcile,
prune); ``open_stats(store)`` gives the statistics of a SqliteStore or PostgresStore."""

from __future__ import annotations

from conveyor.stats.store import StatsStore
from conveyor.stats.tally import BUCKETS_S, COUNTERS, HISTOGRAMS, quantile

__all__ = ["BUCKETS_S", "COUNTERS", "HISTOGRAMS", "StatsStore", "open_stats", "quantile"]


def open_stats(store: object) -> StatsStore:
    from conveyor.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from conveyor.stats.sqlite import SqliteStats

        return SqliteStats(store.url)
    from conveyor.stats.postgres import PostgresStats
    from conveyor.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return PostgresStats(store)
    raise TypeError(f"no statistics for {type(store).__name__}")
