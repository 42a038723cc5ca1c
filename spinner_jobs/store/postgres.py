"""PostgreSQL snapshot store: the production store (``SPINNER_DATABASE_URL=postgresql://...``).

Same contract and semantics as :class:`store.sqlite.SqliteStore`; the differences a
caller can see come from JSONB, which stores fields and table configs parsed:

- a record's keys come back in JSONB's order (shorter keys first), not the source's;
- a string holding a NUL character (U+0000), or a float that is NaN or infinite, cannot
  be stored: the page fails as a whole (a ``psycopg.errors.DataError``) and nothing of
  it is written;
- a naive ``synced_at`` is taken as UTC; timestamps come back aware, in UTC.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from spinner_jobs.core.errors import (
    AccountConflictError,
    AccountNotFoundError,
    InvalidJobError,
    LockLostError,
    StoreUnavailableError,
    TableConflictError,
    WorkbookConflictError,
)
from spinner_jobs.core.models import (
    AccountSummary,
    ApiKey,
    ConnectorAccount,
    RecordRow,
    Table,
    TableCheckpoint,
    Workbook,
)
from spinner_jobs.store.base import HeldLock, Lease, SyncSummary
from spinner_jobs.store.secrets import AccountSecrets, Keyring, sealed_key_id

P = ParamSpec("P")
R = TypeVar("R")

# A connection idle for longer than this is checked before use, so the first call after
# a server restart reconnects instead of failing on the dead socket.
_PING_AFTER_IDLE = 1.0

_Conn = psycopg.Connection[TupleRow]

# Key of the advisory lock that serializes concurrent migrate() calls: two
# `CREATE TABLE IF NOT EXISTS` racing on one name can both pass the check and one then
# fails on the catalog's unique index.
_MIGRATE_LOCK_KEY = 0x5350_494E_4E45_52  # "SPINNER"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS workbooks (
        id text PRIMARY KEY,
        organization_id text NOT NULL,
        name text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS workbook_tables (
        id text PRIMARY KEY,
        workbook_id text NOT NULL REFERENCES workbooks(id) ON DELETE CASCADE,
        position integer NOT NULL,
        name text NOT NULL,
        connector text NOT NULL,
        config jsonb NOT NULL,
        account_id text,
        locked_by text,
        locked_at timestamptz,
        last_synced_at timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS workbook_tables_workbook ON workbook_tables (workbook_id)",
    "CREATE INDEX IF NOT EXISTS workbook_tables_locked_by ON workbook_tables (locked_by)",
    # secret: sealed by store.secrets, enc:v1:<key id>:<base64>
    """CREATE TABLE IF NOT EXISTS connector_accounts (
        id text PRIMARY KEY,
        organization_id text NOT NULL,
        auth text NOT NULL,
        secret text NOT NULL,
        header text NOT NULL
    )""",
    # Ids are opaque keys: byte-order ("C") comparisons are faster than a linguistic
    # collation's and sort the same on every server.
    """CREATE TABLE IF NOT EXISTS records (
        table_id text COLLATE "C" NOT NULL,
        remote_id text COLLATE "C" NOT NULL,
        fields jsonb NOT NULL,
        dirty boolean NOT NULL DEFAULT false,
        seen_by text,
        PRIMARY KEY (table_id, remote_id)
    )""",
    "ALTER TABLE workbook_tables ADD COLUMN IF NOT EXISTS lock_gen bigint NOT NULL DEFAULT 0",
    "ALTER TABLE workbook_tables ADD COLUMN IF NOT EXISTS last_synced_by text",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        table_id text NOT NULL,
        job_id text NOT NULL,
        cursor text,
        records bigint NOT NULL,
        pages bigint NOT NULL,
        PRIMARY KEY (table_id, job_id)
    )""",
    "ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS config_hash text",
    # HTTP API keys: the SHA-256 hex of the whole key; the key itself is never stored.
    """CREATE TABLE IF NOT EXISTS api_keys (
        id text PRIMARY KEY,
        organization_id text NOT NULL,
        name text NOT NULL,
        key_hash text NOT NULL,
        created_at timestamptz NOT NULL,
        revoked_at timestamptz
    )""",
)

# A page is COPied into this per-connection temp table, then merged with one
# INSERT ... ON CONFLICT: measured about 1.5x the records/s of a pipelined executemany.
# Rows vanish at commit or rollback, so a failed page leaves nothing behind.
_PAGE_TABLE = """CREATE TEMP TABLE IF NOT EXISTS spinner_page (
    ord integer NOT NULL,
    remote_id text COLLATE "C",
    fields jsonb
) ON COMMIT DELETE ROWS"""

_COPY_PAGE = "COPY pg_temp.spinner_page (ord, remote_id, fields) FROM STDIN"

# DISTINCT ON keeps the last occurrence of a remote id repeated within a page (as the
# row-by-row SQLite upsert does; ON CONFLICT refuses to touch a row twice) and the sort
# makes concurrent writers lock rows in the same order.
_MERGE_PAGE = """
INSERT INTO records AS r (table_id, remote_id, fields, dirty, seen_by)
SELECT DISTINCT ON (remote_id) %(table_id)s, remote_id, fields, false, %(job_id)s
FROM pg_temp.spinner_page
ORDER BY remote_id, ord DESC
ON CONFLICT (table_id, remote_id) DO UPDATE SET
    fields = CASE WHEN r.dirty THEN r.fields ELSE excluded.fields END,
    seen_by = excluded.seen_by
"""


def _dumps(value: Any) -> str:
    """Compact JSON text (orjson: the encoding of records is on the hot path)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Translate driver errors a caller can meet into the engine's typed errors.

    A lost or refused connection, or a lock wait over the timeout, becomes
    StoreUnavailableError; text PostgreSQL cannot hold (NUL) becomes InvalidJobError.
    """

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            store = args[0]
            assert isinstance(store, PostgresStore)
            raise StoreUnavailableError(store.url, str(exc).strip().splitlines()[0]) from exc
        except psycopg.DataError as exc:
            if "0x00" in str(exc) or "NUL" in str(exc):
                raise InvalidJobError("id", "must not contain NUL characters") from exc
            raise

    return call


class PostgresStore:
    """Store in a PostgreSQL database; one connection per thread, explicit transactions."""

    def __init__(self, url: str, *, timeout: float = 30.0, secrets: Keyring | None = None) -> None:
        """Prepare the store; connections open lazily, one per calling thread.

        Args:
            url: ``postgresql://user:password@host:port/db?...`` (or a libpq
                ``key=value`` string). ``self.url`` keeps it without the password.
            timeout: seconds a connection attempt or a row-lock wait may take before
                the call fails with ``StoreUnavailableError``.
            secrets: keys of account secrets (``SPINNER_SECRET_KEY``); None refuses
                to store or read account secrets.

        """
        self._secrets = AccountSecrets(secrets)
        self._conninfo = url
        self.url = redact_url(url)
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[_Conn] = []
        self._all_lock = threading.Lock()

    # --- connections -----------------------------------------------------------------

    def _conn(self) -> _Conn:
        old: _Conn | None = getattr(self._local, "conn", None)
        now = time.monotonic()
        if old is not None:
            if not old.closed and now - getattr(self._local, "used", now) > _PING_AFTER_IDLE:
                try:
                    old.execute("SELECT 1")
                    old.rollback()
                except psycopg.Error:
                    old.close()
            if not old.closed:
                self._local.used = now
                return old
            # Lost (server restart, network): forget it so this thread reconnects.
            self._forget(old)
        conn = psycopg.connect(
            self._conninfo,
            autocommit=False,
            fallback_application_name="spinner-jobs",
            connect_timeout=max(1, round(self._wait_limit())),
        )
        try:
            # UTC sessions make returned timestamps independent of the server's zone.
            conn.execute("SET TIME ZONE 'UTC'")
            conn.execute(f"SET lock_timeout = {int(self._timeout * 1000)}")
            conn.execute(_PAGE_TABLE)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        self._local.used = now
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _forget(self, conn: _Conn) -> None:
        with suppress(psycopg.Error):
            conn.close()
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        self._local.conn = None

    @contextmanager
    def _tx(self) -> Iterator[_Conn]:
        """One transaction on this thread's connection: commit, or roll back on error."""
        conn = self._conn()
        limit = getattr(self._local, "limit", None)
        try:
            if limit is not None:  # a caller's tighter bound, for this transaction only
                conn.execute(f"SET LOCAL lock_timeout = {int(limit * 1000)}")
            yield conn
        except BaseException:
            if conn.broken:
                self._forget(conn)
            else:
                conn.rollback()
            raise
        conn.commit()

    @contextmanager
    def waiting_at_most(self, seconds: float) -> Iterator[None]:
        """Within the block, this thread's calls wait at most ``seconds`` for the database."""
        before = getattr(self._local, "limit", None)
        self._local.limit = seconds
        try:
            yield
        finally:
            self._local.limit = before

    def _wait_limit(self) -> float:
        limit: float | None = getattr(self._local, "limit", None)
        return self._timeout if limit is None else limit

    @_translated
    def migrate(self) -> None:
        """Create the schema if missing (safe under concurrent callers)."""
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK_KEY,))
            for statement in _SCHEMA:
                conn.execute(statement)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- catalog ---------------------------------------------------------------------

    @_translated
    def put_workbook(self, workbook: Workbook) -> None:
        """Create or replace a workbook and its tables (locks and sync times kept).

        Raises:
            AccountNotFoundError: a table names an account that is unknown or of
                another organization; nothing is written.
            WorkbookConflictError: the id is another organization's workbook.
            TableConflictError: table ids belong to another workbook.

        """
        keep = [t.id for t in workbook.tables]
        with self._tx() as conn:
            owner = conn.execute(
                "SELECT organization_id FROM workbooks WHERE id = %s FOR UPDATE", (workbook.id,)
            ).fetchone()
            if owner is not None and owner[0] != workbook.organization_id:
                raise WorkbookConflictError(workbook.id)
            account_ids = sorted({t.account_id for t in workbook.tables if t.account_id})
            if account_ids:
                # FOR SHARE: the accounts cannot move or vanish before this commits.
                owned = {
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM connector_accounts WHERE id = ANY(%s) "
                        "AND organization_id = %s FOR SHARE",
                        (account_ids, workbook.organization_id),
                    )
                }
                for account_id in account_ids:
                    if account_id not in owned:
                        raise AccountNotFoundError(account_id)
            # The workbook row lock serializes concurrent replacements of one workbook.
            conn.execute(
                "INSERT INTO workbooks (id, organization_id, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                (workbook.id, workbook.organization_id, workbook.name),
            )
            # Lock every table row this touches in id order, the order lock_tables uses,
            # so the two never deadlock.
            rows = conn.execute(
                "SELECT id, workbook_id FROM workbook_tables "
                "WHERE workbook_id = %s OR id = ANY(%s) ORDER BY id FOR UPDATE",
                (workbook.id, keep),
            ).fetchall()
            kept = set(keep)
            taken = sorted(tid for tid, wid in rows if wid != workbook.id)
            if taken:
                raise TableConflictError(taken)
            gone = [tid for tid, wid in rows if wid == workbook.id and tid not in kept]
            if gone:
                conn.execute("DELETE FROM records WHERE table_id = ANY(%s)", (gone,))
                conn.execute("DELETE FROM checkpoints WHERE table_id = ANY(%s)", (gone,))
                conn.execute("DELETE FROM workbook_tables WHERE id = ANY(%s)", (gone,))
            if workbook.tables:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO workbook_tables (id, workbook_id, position, name, "
                        "connector, config, account_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) "
                        "ON CONFLICT (id) DO UPDATE SET workbook_id = excluded.workbook_id, "
                        "position = excluded.position, name = excluded.name, "
                        "connector = excluded.connector, config = excluded.config, "
                        "account_id = excluded.account_id",
                        [
                            (
                                table.id,
                                workbook.id,
                                position,
                                table.name,
                                table.connector,
                                _dumps(table.config),
                                table.account_id,
                            )
                            for position, table in enumerate(workbook.tables)
                        ],
                    )

    @_translated
    def get_workbook(self, workbook_id: str) -> Workbook | None:
        """The workbook with its tables, or None."""
        with self._tx() as conn:
            # One statement: the workbook and its tables from the same snapshot.
            rows = conn.execute(
                "SELECT w.id, w.organization_id, w.name, t.id, t.name, t.connector, t.config, "
                "t.account_id, t.locked_by, t.last_synced_at "
                "FROM workbooks w LEFT JOIN workbook_tables t ON t.workbook_id = w.id "
                "WHERE w.id = %s ORDER BY t.position",
                (workbook_id,),
            ).fetchall()
        if not rows:
            return None
        tables = [
            Table(
                id=r[3],
                workbook_id=workbook_id,
                name=r[4],
                connector=r[5],
                config=r[6],
                account_id=r[7],
                locked_by=r[8],
                last_synced_at=r[9],
            )
            for r in rows
            if r[3] is not None
        ]
        first = rows[0]
        return Workbook(id=first[0], organization_id=first[1], name=first[2], tables=tables)

    @_translated
    def put_account(self, account: ConnectorAccount) -> None:
        """Create or replace a connector account; its secret is stored encrypted.

        Raises:
            AccountConflictError: the id belongs to an account of another organization.
            SecretKeyError: ``SPINNER_SECRET_KEY`` is not set.

        """
        sealed = self._secrets.seal(account.id, account.organization_id, account.secret)
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO connector_accounts (id, organization_id, auth, secret, header) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET auth = excluded.auth, "
                "secret = excluded.secret, header = excluded.header "
                "WHERE connector_accounts.organization_id = excluded.organization_id "
                "RETURNING id",
                (account.id, account.organization_id, account.auth, sealed, account.header),
            ).fetchone()
            if row is None:
                raise AccountConflictError(account.id)

    @_translated
    def get_account(self, account_id: str) -> ConnectorAccount | None:
        """A connector account with its secret decrypted, or None.

        Raises:
            SecretKeyError: ``SPINNER_SECRET_KEY`` is not set or lacks the key the
                secret was encrypted under, or the ciphertext is not this account's.

        """
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id, organization_id, auth, secret, header FROM connector_accounts "
                "WHERE id = %s",
                (account_id,),
            ).fetchone()
        if row is None:
            return None
        return ConnectorAccount(
            id=row[0],
            organization_id=row[1],
            auth=row[2],
            secret=self._secrets.open(row[0], row[1], row[3]),
            header=row[4],
        )

    def list_accounts(self, organization_id: str | None = None) -> list[AccountSummary]:
        """Accounts (of one organization, or all) by id, without their secrets."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, organization_id, auth, header, secret FROM connector_accounts "
                "WHERE %(org)s::text IS NULL OR organization_id = %(org)s "
                'ORDER BY id COLLATE "C"',
                {"org": organization_id},
            ).fetchall()
        return [
            AccountSummary(
                id=r[0], organization_id=r[1], auth=r[2], header=r[3], key_id=sealed_key_id(r[4])
            )
            for r in rows
        ]

    # --- locks -----------------------------------------------------------------------

    @_translated
    def lock_tables(
        self,
        table_ids: Sequence[str],
        job_id: str,
        *,
        take_over: Mapping[str, str] | None = None,
    ) -> dict[str, HeldLock]:
        """Lock all tables for ``job_id`` or none; return the conflicting holders."""
        stale = take_over or {}
        ids = list(table_ids)
        with self._tx() as conn:
            # FOR UPDATE makes a concurrent caller wait here and then read the committed
            # holder; locking rows in id order keeps overlapping callers from deadlocking.
            rows = conn.execute(
                "SELECT id, locked_by, extract(epoch FROM now() - locked_at) "
                "FROM workbook_tables WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (ids,),
            ).fetchall()
            others = [
                (tid, holder, age) for tid, holder, age in rows if holder not in (None, job_id)
            ]
            held = {
                tid: HeldLock(holder, float("inf") if age is None else float(age))
                for tid, holder, age in others
                if stale.get(tid) != holder
            }
            if held:
                return held
            for tid, holder, _ in others:  # taken over: the stale holder's progress goes
                conn.execute(
                    "DELETE FROM checkpoints WHERE table_id = %s AND job_id = %s", (tid, holder)
                )
            conn.execute(
                "UPDATE workbook_tables SET locked_by = %s, locked_at = now(), "
                "lock_gen = lock_gen + 1 "
                "WHERE id = ANY(%s) AND locked_by IS DISTINCT FROM %s",
                (job_id, ids, job_id),
            )
            return {}

    @_translated
    def unlock_tables(self, table_ids: Sequence[str], job_id: str) -> dict[str, int]:
        """Release the tables' locks held by ``job_id``; count what it wrote."""
        ids = list(table_ids)
        with self._tx() as conn:
            conn.execute(
                "UPDATE workbook_tables SET locked_by = NULL, locked_at = NULL "
                "WHERE locked_by = %s AND id = ANY(%s)",
                (job_id, ids),
            )
            conn.execute(
                "DELETE FROM checkpoints WHERE job_id = %s AND table_id = ANY(%s)", (job_id, ids)
            )
            rows = conn.execute(
                "SELECT table_id, count(*) FROM records WHERE table_id = ANY(%s) "
                "AND seen_by = %s GROUP BY table_id",
                (ids, job_id),
            ).fetchall()
        counts = {tid: int(n) for tid, n in rows}
        return {tid: counts.get(tid, 0) for tid in ids}

    @_translated
    def restart_table(self, lease: Lease) -> None:
        """Forget what the lease's job read of the table so far (fenced on the lease)."""
        with self._tx() as conn, conn.cursor() as cur:
            _check_lease(cur, lease)
            cur.execute(
                "UPDATE records SET seen_by = NULL WHERE table_id = %s AND seen_by = %s",
                (lease.table_id, lease.job_id),
            )
            cur.execute(
                "DELETE FROM checkpoints WHERE table_id = %s AND job_id = %s",
                (lease.table_id, lease.job_id),
            )

    @_translated
    def touch_locks(self, job_id: str) -> None:
        """Restart the age of ``job_id``'s locks."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE workbook_tables SET locked_at = now() WHERE locked_by = %s", (job_id,)
            )

    @_translated
    def lease(self, table_id: str, job_id: str) -> Lease:
        """A fresh lease of ``job_id`` on the table it holds locked (LockLostError if not).

        Each call bumps the lock's generation, so an earlier attempt of the same job
        (a worker that lost contact but still runs) can no longer write.
        """
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE workbook_tables SET lock_gen = lock_gen + 1 "
                "WHERE id = %s AND locked_by = %s RETURNING lock_gen",
                (table_id, job_id),
            ).fetchone()
        if row is None:
            raise LockLostError(table_id, job_id)
        return Lease(table_id, job_id, int(row[0]))

    @_translated
    def locks_held_by(self, job_id: str) -> list[str]:
        """Table ids locked by ``job_id``."""
        with self._tx() as conn:
            rows = conn.execute(
                # Byte order, as SQLite sorts, whatever the database's collation.
                'SELECT id FROM workbook_tables WHERE locked_by = %s ORDER BY id COLLATE "C"',
                (job_id,),
            ).fetchall()
        return [r[0] for r in rows]

    # --- records ---------------------------------------------------------------------

    @_translated
    def write_page(
        self, lease: Lease, records: Sequence[RecordRow], checkpoint: TableCheckpoint
    ) -> None:
        """Upsert a page and save the checkpoint in one transaction, fenced on the lease."""
        table_id, job_id = lease.table_id, lease.job_id
        # Encode before the transaction: a record that cannot be encoded fails the page
        # without a round trip.
        dumps, option = orjson.dumps, orjson.OPT_NON_STR_KEYS
        rows = [
            (i, remote_id, dumps(fields, option=option).decode())
            for i, (remote_id, fields) in enumerate(records)
        ]
        with self._tx() as conn, conn.cursor() as cur:
            # The row lock (FOR SHARE) holds the lease for the transaction: a takeover
            # waits until this page is committed, and then the generation moves on.
            _check_lease(cur, lease)
            if rows:
                with cur.copy(_COPY_PAGE) as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_MERGE_PAGE, {"table_id": table_id, "job_id": job_id})
            cur.execute(
                "INSERT INTO checkpoints (table_id, job_id, cursor, records, pages, config_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (table_id, job_id) DO UPDATE SET cursor = excluded.cursor, "
                "records = excluded.records, pages = excluded.pages, "
                "config_hash = excluded.config_hash",
                (
                    table_id,
                    job_id,
                    checkpoint.cursor,
                    checkpoint.records,
                    checkpoint.pages,
                    checkpoint.config,
                ),
            )

    @_translated
    def get_checkpoint(self, table_id: str, job_id: str) -> TableCheckpoint | None:
        """The last committed checkpoint of ``job_id`` on the table."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT cursor, records, pages, config_hash FROM checkpoints "
                "WHERE table_id = %s AND job_id = %s",
                (table_id, job_id),
            ).fetchone()
        if row is None:
            return None
        return TableCheckpoint(cursor=row[0], records=row[1], pages=row[2], config=row[3])

    @_translated
    def finish_sync(self, lease: Lease, synced_at: datetime) -> SyncSummary:
        """Delete records the source no longer has (unless dirty), stamp, unlock."""
        table_id, job_id = lease.table_id, lease.job_id
        with self._tx() as conn, conn.cursor() as cur:
            row = cur.execute(
                "SELECT locked_by, last_synced_by FROM workbook_tables WHERE id = %s FOR UPDATE",
                (table_id,),
            ).fetchone()
            if row is not None and row[0] is None and row[1] == job_id:
                # Committed before (the caller lost the answer): the same counts again.
                return SyncSummary(deleted=0, kept_dirty=0, records=_count_seen(cur, lease))
            _check_lease(cur, lease)
            kept = cur.execute(
                "SELECT count(*) FROM records WHERE table_id = %s AND dirty "
                "AND seen_by IS DISTINCT FROM %s",
                (table_id, job_id),
            ).fetchone()
            cur.execute(
                "DELETE FROM records WHERE table_id = %s AND NOT dirty "
                "AND seen_by IS DISTINCT FROM %s",
                (table_id, job_id),
            )
            deleted = cur.rowcount
            cur.execute(
                "UPDATE workbook_tables SET last_synced_at = %s, last_synced_by = %s, "
                "locked_by = NULL, locked_at = NULL WHERE id = %s",
                (synced_at, job_id, table_id),
            )
            cur.execute(
                "DELETE FROM checkpoints WHERE table_id = %s AND job_id = %s", (table_id, job_id)
            )
            records = _count_seen(cur, lease)
        return SyncSummary(deleted=deleted, kept_dirty=int(kept[0]) if kept else 0, records=records)

    # --- reading and local edits -----------------------------------------------------

    @_translated
    def count_records(self, table_id: str) -> int:
        """Number of records stored for the table."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT count(*) FROM records WHERE table_id = %s", (table_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    @_translated
    def record_ids(self, table_id: str) -> list[str]:
        """Remote ids of the table's records, sorted."""
        with self._tx() as conn:
            rows = conn.execute(
                # Byte order, as SQLite sorts, whatever the database's collation.
                'SELECT remote_id FROM records WHERE table_id = %s ORDER BY remote_id COLLATE "C"',
                (table_id,),
            ).fetchall()
        return [r[0] for r in rows]

    @_translated
    def get_record(self, table_id: str, remote_id: str) -> Mapping[str, Any] | None:
        """A record's fields, or None."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT fields FROM records WHERE table_id = %s AND remote_id = %s",
                (table_id, remote_id),
            ).fetchone()
        return None if row is None else dict(row[0])

    @_translated
    def edit_record(self, table_id: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Edit a record locally and flag it dirty."""
        encoded = _dumps(dict(fields))
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO records (table_id, remote_id, fields, dirty) "
                "VALUES (%s, %s, %s::jsonb, true) "
                "ON CONFLICT (table_id, remote_id) DO UPDATE SET fields = excluded.fields, "
                "dirty = true",
                (table_id, remote_id, encoded),
            )

    # --- HTTP API keys (spinner_jobs.api) ---------------------------------------------

    _API_KEY_COLUMNS = "id, organization_id, name, key_hash, created_at, revoked_at"

    @staticmethod
    def _api_key(row: Sequence[Any]) -> ApiKey:
        return ApiKey(
            id=row[0],
            organization_id=row[1],
            name=row[2],
            key_hash=row[3],
            created_at=row[4],
            revoked_at=row[5],
        )

    @_translated
    def put_api_key(self, key: ApiKey) -> bool:
        """Store a new API key; False (nothing written) when its id exists."""
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO api_keys ({self._API_KEY_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (
                    key.id,
                    key.organization_id,
                    key.name,
                    key.key_hash,
                    key.created_at,
                    key.revoked_at,
                ),
            ).fetchone()
        return row is not None

    @_translated
    def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, or None."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {self._API_KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)
            ).fetchone()
        return None if row is None else self._api_key(row)

    @_translated
    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]:
        """Keys of one organization (or all), oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {self._API_KEY_COLUMNS} FROM api_keys "
                "WHERE %(org)s::text IS NULL OR organization_id = %(org)s "
                'ORDER BY created_at, id COLLATE "C"',
                {"org": organization_id},
            ).fetchall()
        return [self._api_key(r) for r in rows]

    @_translated
    def revoke_api_key(self, key_id: str, revoked_at: datetime) -> ApiKey | None:
        """Revoke the key (the first revocation time stays); None if unknown."""
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s "
                f"RETURNING {self._API_KEY_COLUMNS}",
                (revoked_at, key_id),
            ).fetchone()
        return None if row is None else self._api_key(row)

    # --- export reads ----------------------------------------------------------------

    @_translated
    def read_records(self, table_id: str, after: str | None, limit: int) -> list[RecordRow]:
        """One keyset page of the table's records by remote id, strictly after ``after``.

        One transaction. ``remote_id`` is a ``COLLATE "C"`` column, so comparison and
        order are byte order, as in SQLite, whatever the database's collation.
        """
        if limit < 1:
            raise InvalidJobError("limit", f"must be at least 1, got {limit}")
        with self._tx() as conn:
            if after is None:
                rows = conn.execute(
                    "SELECT remote_id, fields FROM records WHERE table_id = %s "
                    'ORDER BY remote_id COLLATE "C" LIMIT %s',
                    (table_id, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT remote_id, fields FROM records WHERE table_id = %s "
                    'AND remote_id COLLATE "C" > %s ORDER BY remote_id COLLATE "C" LIMIT %s',
                    (table_id, after, limit),
                ).fetchall()
        return [(remote_id, fields) for remote_id, fields in rows]


def _check_lease(cur: psycopg.Cursor[TupleRow], lease: Lease) -> None:
    """Raise LockLostError unless the lease's job still holds the lock it was given."""
    row = cur.execute(
        "SELECT 1 FROM workbook_tables WHERE id = %s AND locked_by = %s AND lock_gen = %s "
        "FOR SHARE",
        (lease.table_id, lease.job_id, lease.generation),
    ).fetchone()
    if row is None:
        raise LockLostError(lease.table_id, lease.job_id)


def _count_seen(cur: psycopg.Cursor[TupleRow], lease: Lease) -> int:
    """Records of the table written by the lease's job (distinct remote ids)."""
    row = cur.execute(
        "SELECT count(*) FROM records WHERE table_id = %s AND seen_by = %s",
        (lease.table_id, lease.job_id),
    ).fetchone()
    return int(row[0]) if row else 0


def redact_url(url: str) -> str:
    """``url`` without its password (URL or libpq ``key=value`` form), for logs."""
    if "://" not in url:
        params = conninfo_to_dict(url)
        params.pop("password", None)
        return make_conninfo("", **params)
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        netloc = f"{userinfo.partition(':')[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))
