"""``isinstance`` against a class without importing its module: an object of a class can only
exist once its module is loaded. Keeps drivers out of processes that do not use them (a worker
loads neither psycopg nor sqlite3, the API not asyncpg): every module is resident memory."""

from __future__ import annotations

import sys


def is_instance(obj: object, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, False (without importing) when ``module`` is not loaded."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(obj, getattr(loaded, name))
