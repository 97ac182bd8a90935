"""PostgreSQL schema migrations: versioned ``sql/migrations/NNNN_name.sql`` files, applied in order.

Applied versions are recorded in ``schema_migrations``. The whole upgrade runs in one transaction
under a transaction-level advisory lock keyed on the current schema, so processes that start at
the same time apply each migration exactly once, and a failing migration leaves nothing behind.
Tables are unqualified: the connection's ``search_path`` chooses the schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from conveyor.errors import StoreError

__all__ = ["Migration", "apply_pending", "migrations", "upgrade"]

_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# First half of the two-int advisory lock key ("conv" in ASCII); the second half is the schema's hash.
_LOCK_CLASS = 0x636F6E76


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, oldest first."""
    folder = resources.files("conveyor.store").joinpath("sql", "migrations")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise StoreError(f"two migrations share version {version}: {found[version].name}, {entry.name}")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def apply_pending(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the migrations ``conn``'s schema lacks, in one transaction; return their versions.

    ``conn`` must not be inside a transaction already (autocommit or idle)."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(coalesce(current_schema(), '')))", (_LOCK_CLASS,)
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for migration in migrations():
            if migration.version in done:
                continue
            # No parameters: psycopg sends the file as one simple query, so it may hold many statements.
            conn.execute(migration.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            applied_now.append(migration.version)
    return applied_now


def upgrade(url: str) -> list[int]:
    """Bring the database at ``url`` up to date; return the versions applied (empty if none)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return apply_pending(conn)
    except psycopg.Error as exc:
        raise StoreError(f"database upgrade failed: {exc}") from exc
