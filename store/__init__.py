"""Snapshot stores: SQLite (embedded default) and PostgreSQL, behind :class:`Store`."""

from __future__ import annotations

from store.base import Store, SyncSummary

__all__ = ["Store", "SyncSummary", "open_store"]


def open_store(url: str) -> Store:
    """Open (and migrate) the store at ``url``: ``sqlite:///path`` or ``postgresql://...``.

    Raises:
        ValueError: the URL's scheme is not supported.
    """
    store: Store
    if url.startswith("sqlite:///"):
        from store.sqlite import SqliteStore

        store = SqliteStore(url.removeprefix("sqlite:///"))
    elif url.startswith(("postgresql://", "postgres://")):
        from store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ValueError(f"unsupported database URL {url!r}; use sqlite:/// or postgresql://")
    store.migrate()
    return store
