"""Snapshot stores: SQLite (embedded default) and PostgreSQL, behind :class:`Store`."""

from __future__ import annotations

from pydantic import SecretStr

from spinner_jobs.store.base import HeldLock, Lease, Store, SyncSummary
from spinner_jobs.store.secrets import keyring_from_setting

__all__ = ["HeldLock", "Lease", "Store", "SyncSummary", "open_store"]


def open_store(url: str, *, timeout: float = 30.0, secret_key: SecretStr | None = None) -> Store:
    """Open (and migrate) the store at ``url``: ``sqlite:///path`` or ``postgresql://...``.

    Args:
        url: where the store is.
        timeout: how long one call waits for the database (a busy SQLite file, a
            PostgreSQL connection or row lock) before raising ``StoreUnavailableError``.
        secret_key: ``SPINNER_SECRET_KEY``, the keys of account secrets. Unset: SQLite
            keeps a generated key beside its file, PostgreSQL refuses account secrets.

    Raises:
        ValueError: the URL's scheme is not supported.
        SecretKeyError: ``secret_key`` is malformed.
    """
    store: Store
    keyring = keyring_from_setting(secret_key, setting="SPINNER_SECRET_KEY")
    if url.startswith("sqlite:///"):
        from spinner_jobs.store.sqlite import SqliteStore

        store = SqliteStore(url.removeprefix("sqlite:///"), busy_timeout=timeout, secrets=keyring)
    elif url.startswith(("postgresql://", "postgres://")):
        from spinner_jobs.store.postgres import PostgresStore

        store = PostgresStore(url, timeout=timeout, secrets=keyring)
    else:
        raise ValueError(f"unsupported database URL {url!r}; use sqlite:/// or postgresql://")
    store.migrate()
    return store
