"""Stores, chosen by URL: ``sqlite:///path`` (embedded) or ``postgresql://...``."""

from __future__ import annotations

from conveyor.config import mask_url
from conveyor.errors import ConfigError
from conveyor.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        from conveyor.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from conveyor.preflight import check_postgres
        from conveyor.store.postgres import PostgresStore

        check_postgres(url)  # the server's own reason now, not a pool timeout in 10 s
        return PostgresStore(url)
    raise ConfigError(f"unsupported store URL {mask_url(url)!r}: use sqlite:///PATH or postgresql://...")
