"""Snapshot stores: SQLite (embedded default) and PostgreSQL, behind :class:`Store`."""

from __future__ import annotations

from store.base import HeldLock, Lease, Store, SyncSummary

__all__ = ["HeldLock", "Lease", "Store", "SyncSummary", "open_store"]


def open_store(url: str, *, timeout: float = 30.0) -> Store:
    """Open (and migrate) the store at ``url``: ``sqlite:///path`` or ``postgresql://...``.

    ``timeout`` bounds how long one call waits for the database (a busy SQLite file, a
    PostgreSQL connection or row lock) before raising ``StoreUnavailableError``.

    Raises:
        ValueError: the URL's scheme is not supported.
    """
    store: Store
    if url.startswith("sqlite:///"):
        from store.sqlite import SqliteStore

        store = SqliteStore(url.removeprefix("sqlite:///"), busy_timeout=timeout)
    elif url.startswith(("postgresql://", "postgres://")):
        from store.postgres import PostgresStore

        store = PostgresStore(url, timeout=timeout)
    else:
        raise ValueError(f"unsupported database URL {url!r}; use sqlite:/// or postgresql://")
    store.migrate()
    return store
