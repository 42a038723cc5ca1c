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
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from spinner_jobs.core.changes import (
    LOCAL_ID_PREFIX,
    UNSETTLED,
    Change,
    ChangeOp,
    ChangeState,
    confirmed_fields,
    confirmed_id,
    edit_fields,
    plan_edit,
    settled_state,
)
from spinner_jobs.core.errors import (
    AccountConflictError,
    AccountNotFoundError,
    ChangeStateError,
    InvalidJobError,
    LockLostError,
    RecordNotFoundError,
    StoreUnavailableError,
    TableConflictError,
    UnknownTableError,
    WorkbookConflictError,
)
from spinner_jobs.core.models import (
    AccountSummary,
    ApiKey,
    ConnectorAccount,
    PageRecord,
    RecordRow,
    Table,
    TableCheckpoint,
    Workbook,
)
from spinner_jobs.store.base import (
    HeldLock,
    Lease,
    SyncSummary,
    fields_text,
    json_text,
    seen_mark,
)
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
    # change_id is also the change's idempotency key.
    """CREATE TABLE IF NOT EXISTS changes (
        seq bigserial PRIMARY KEY,
        change_id text NOT NULL UNIQUE,
        table_id text COLLATE "C" NOT NULL,
        remote_id text COLLATE "C" NOT NULL,
        op text NOT NULL,
        fields jsonb NOT NULL,
        base jsonb,
        state text NOT NULL,
        error text,
        job_id text,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS changes_record ON changes (table_id, remote_id, seq)",
    "CREATE INDEX IF NOT EXISTS changes_state ON changes (table_id, state, seq)",
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
SELECT DISTINCT ON (remote_id) %(table_id)s, remote_id, fields, false, %(mark)s
FROM pg_temp.spinner_page
ORDER BY remote_id, ord DESC
ON CONFLICT (table_id, remote_id) DO UPDATE SET
    fields = CASE WHEN r.dirty THEN r.fields ELSE excluded.fields END,
    seen_by = excluded.seen_by
"""


# A record deleted locally stays deleted while its delete is on its way to the source.
_DROP_DELETED_LOCALLY = """
DELETE FROM records r USING changes c
WHERE r.table_id = %(table_id)s AND c.table_id = %(table_id)s AND c.op = 'delete'
AND c.state IN ('pending', 'sent') AND r.remote_id = c.remote_id
"""

_CHANGE_COLUMNS = (
    "change_id, seq, table_id, remote_id, op, fields, base, state, error, job_id, updated_at"
)


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

    quick_calls = False  # a network round trip: always in a thread

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
                conn.execute("DELETE FROM changes WHERE table_id = ANY(%s)", (gone,))
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
                                json_text(table.config),
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
                "AND seen_by IN (%s, %s) GROUP BY table_id",
                (ids, seen_mark(job_id), job_id),
            ).fetchall()
        counts = {tid: int(n) for tid, n in rows}
        return {tid: counts.get(tid, 0) for tid in ids}

    @_translated
    def restart_table(self, lease: Lease) -> None:
        """Forget what the lease's job read of the table so far (fenced on the lease)."""
        with self._tx() as conn, conn.cursor() as cur:
            _check_lease(cur, lease)
            cur.execute(
                "UPDATE records SET seen_by = NULL WHERE table_id = %s AND seen_by IN (%s, %s)",
                (lease.table_id, seen_mark(lease.job_id), lease.job_id),
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
        self, lease: Lease, records: Sequence[PageRecord], checkpoint: TableCheckpoint
    ) -> None:
        """Upsert a page and save the checkpoint in one transaction, fenced on the lease."""
        table_id, job_id = lease.table_id, lease.job_id
        # Encode before the transaction: a record that cannot be encoded fails the page
        # without a round trip.
        rows = [(i, rid, fields_text(fields)) for i, (rid, fields) in enumerate(records)]
        with self._tx() as conn, conn.cursor() as cur:
            # The row lock (FOR SHARE) holds the lease for the transaction: a takeover
            # waits until this page is committed, and then the generation moves on.
            _check_lease(cur, lease)
            if rows:
                with cur.copy(_COPY_PAGE) as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_MERGE_PAGE, {"table_id": table_id, "mark": seen_mark(job_id)})
                cur.execute(_DROP_DELETED_LOCALLY, {"table_id": table_id})
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
            # One pass counts the table; the delete makes a second only when some record
            # is gone from the source (a table's first download has none).
            counted = cur.execute(
                "SELECT count(*) FILTER (WHERE seen_by IN (%(mark)s, %(job)s)), "
                "count(*) FILTER (WHERE dirty AND (seen_by IS NULL "
                "OR seen_by NOT IN (%(mark)s, %(job)s))), "
                "count(*) FROM records WHERE table_id = %(table)s",
                {"mark": seen_mark(job_id), "job": job_id, "table": table_id},
            ).fetchone()
            seen, kept, total = (int(n) for n in counted) if counted else (0, 0, 0)
            deleted = 0
            if total > seen + kept:
                cur.execute(
                    "DELETE FROM records WHERE table_id = %s AND NOT dirty "
                    "AND (seen_by IS NULL OR seen_by NOT IN (%s, %s))",
                    (table_id, seen_mark(job_id), job_id),
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
        # The delete spared every record the job wrote: they are the table's records.
        return SyncSummary(deleted=deleted, kept_dirty=kept, records=seen)

    # --- local edits and their publishing ----------------------------------------------

    @_translated
    def update_record(self, table_id: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into a record locally and record the change (see ``Store``)."""
        edit, _ = edit_fields(table_id, fields)
        with self._tx() as conn, conn.cursor() as cur:
            _edit(cur, ChangeOp.UPDATE, table_id, remote_id, edit)

    @_translated
    def create_record(self, table_id: str, fields: Mapping[str, Any]) -> str:
        """Create a record locally; return its local id (see ``Store``)."""
        edit, _ = edit_fields(table_id, fields)
        local_id = f"{LOCAL_ID_PREFIX}{uuid.uuid4().hex}"
        with self._tx() as conn, conn.cursor() as cur:
            _edit(cur, ChangeOp.CREATE, table_id, local_id, edit)
        return local_id

    @_translated
    def delete_record(self, table_id: str, remote_id: str) -> None:
        """Delete a record locally and record the change (see ``Store``)."""
        with self._tx() as conn, conn.cursor() as cur:
            _edit(cur, ChangeOp.DELETE, table_id, remote_id, {})

    @_translated
    def list_changes(
        self,
        table_id: str,
        states: Sequence[ChangeState] | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[Change]:
        """The table's changes in ``states`` (None: all) after ``seq`` ``after``, by seq."""
        wanted = None if states is None else [ChangeState(s).value for s in states]
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = %s AND seq > %s "
                "AND (%s::text[] IS NULL OR state = ANY(%s::text[])) ORDER BY seq LIMIT %s",
                (table_id, after, wanted, wanted, limit),
            ).fetchall()
        return [_change(row) for row in rows]

    @_translated
    def change_counts(self, table_id: str, job_id: str | None = None) -> dict[ChangeState, int]:
        """Changes of the table per state (settled ones of ``job_id`` only, when given)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM changes WHERE table_id = %(table)s "
                "AND (%(job)s::text IS NULL OR state IN ('pending', 'sent') "
                "OR job_id = %(job)s) GROUP BY state",
                {"table": table_id, "job": job_id},
            ).fetchall()
        counts = dict.fromkeys(ChangeState, 0)
        for state, count in rows:
            counts[ChangeState(state)] = int(count)
        return counts

    @_translated
    def mark_change_sent(self, lease: Lease, change_id: str) -> Change | None:
        """Mark a pending or sent change sent, fenced on the lease; None if neither."""
        with self._tx() as conn, conn.cursor() as cur:
            _check_lease(cur, lease)
            # The row lock waits for an edit coalescing into this change: what is
            # returned (and sent) has every edit made before it.
            row = cur.execute(
                "UPDATE changes SET state = 'sent', job_id = %s, updated_at = now() "
                "WHERE change_id = %s AND table_id = %s AND state IN ('pending', 'sent') "
                f"RETURNING {_CHANGE_COLUMNS}",
                (lease.job_id, change_id, lease.table_id),
            ).fetchone()
        return None if row is None else _change(row)

    @_translated
    def confirm_change(
        self,
        lease: Lease,
        change_id: str,
        remote_id: str | None,
        fields: Mapping[str, Any] | None,
    ) -> None:
        """Settle a sent change confirmed and clean its record (see ``Store``)."""
        table_id = lease.table_id
        returned = dict(fields) if fields else {}
        with self._tx() as conn, conn.cursor() as cur:
            _check_lease(cur, lease)
            first = _change_for(cur, table_id, change_id, lock=False)
            if first.state is ChangeState.CONFIRMED:
                return
            # Record rows before change rows, the order edits lock them in.
            ids = sorted({first.remote_id, confirmed_id(first, remote_id)})
            cur.execute(
                "SELECT 1 FROM records WHERE table_id = %s AND remote_id = ANY(%s) "
                'ORDER BY remote_id COLLATE "C" FOR UPDATE',
                (table_id, ids),
            )
            change = _change_for(cur, table_id, change_id, lock=True)
            if change.state is ChangeState.CONFIRMED:
                return
            if change.state is not ChangeState.SENT:
                raise ChangeStateError(change_id, change.state.value, "confirmed")
            old_id = change.remote_id
            new_id = confirmed_id(change, remote_id)
            if new_id != old_id:
                # The record takes the id its source assigned (replacing a copy of it a
                # download may have brought meanwhile); so do its later changes.
                cur.execute(
                    "DELETE FROM records WHERE table_id = %s AND remote_id = %s",
                    (table_id, new_id),
                )
                cur.execute(
                    "UPDATE records SET remote_id = %s WHERE table_id = %s AND remote_id = %s",
                    (new_id, table_id, old_id),
                )
                cur.execute(
                    "UPDATE changes SET remote_id = %s WHERE table_id = %s AND remote_id = %s",
                    (new_id, table_id, old_id),
                )
            later = [
                _change(row)
                for row in cur.execute(
                    f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = %s "
                    "AND remote_id = %s AND seq > %s AND state != 'confirmed' ORDER BY seq",
                    (table_id, new_id, change.seq),
                ).fetchall()
            ]
            if change.op is ChangeOp.DELETE:
                cur.execute(
                    "DELETE FROM records WHERE table_id = %s AND remote_id = %s",
                    (table_id, new_id),
                )
            else:
                row = cur.execute(
                    "SELECT fields FROM records WHERE table_id = %s AND remote_id = %s",
                    (table_id, new_id),
                ).fetchone()
                if row is not None:
                    merged = confirmed_fields(row[0], returned, later)
                    cur.execute(
                        "UPDATE records SET fields = %s::jsonb, dirty = %s WHERE table_id = %s "
                        "AND remote_id = %s",
                        (json_text(merged), bool(later), table_id, new_id),
                    )
                rebased = json_text({**(change.base or {}), **change.fields, **returned})
                cur.execute(
                    "UPDATE changes SET base = %s::jsonb WHERE table_id = %s AND remote_id = %s "
                    "AND seq > %s AND state = 'pending' AND op != 'create'",
                    (rebased, table_id, new_id, change.seq),
                )
            cur.execute(
                "UPDATE changes SET state = 'confirmed', error = NULL, job_id = %s, "
                "updated_at = now() WHERE change_id = %s",
                (lease.job_id, change_id),
            )

    @_translated
    def settle_change(
        self, lease: Lease, change_id: str, state: ChangeState, error: str | None
    ) -> None:
        """Settle a change as conflict or failed, fenced on the lease (see ``Store``)."""
        state = settled_state(state)
        with self._tx() as conn, conn.cursor() as cur:
            _check_lease(cur, lease)
            change = _change_for(cur, lease.table_id, change_id, lock=True)
            if change.state not in UNSETTLED:
                raise ChangeStateError(change_id, change.state.value, f"settled as {state}")
            cur.execute(
                "UPDATE changes SET state = %s, error = %s, job_id = %s, updated_at = now() "
                "WHERE change_id = %s",
                (state.value, error, lease.job_id, change_id),
            )

    # --- reading ---------------------------------------------------------------------

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
        "SELECT count(*) FROM records WHERE table_id = %s AND seen_by IN (%s, %s)",
        (lease.table_id, seen_mark(lease.job_id), lease.job_id),
    ).fetchone()
    return int(row[0]) if row else 0


def _edit(
    cur: psycopg.Cursor[TupleRow],
    op: ChangeOp,
    table_id: str,
    remote_id: str,
    edit: dict[str, Any],
) -> None:
    """One local edit (see ``Store.update_record``), in the caller's transaction."""
    # KEY SHARE: the table cannot go meanwhile, and leases (updates) are not blocked.
    known = cur.execute(
        "SELECT 1 FROM workbook_tables WHERE id = %s FOR KEY SHARE", (table_id,)
    ).fetchone()
    if known is None:
        raise UnknownTableError(table_id)
    record: dict[str, Any] | None = None
    dirty = False
    latest: Change | None = None
    if op is not ChangeOp.CREATE:
        # The record's row lock serializes edits of one record, and confirmations.
        row = cur.execute(
            "SELECT fields, dirty FROM records WHERE table_id = %s AND remote_id = %s FOR UPDATE",
            (table_id, remote_id),
        ).fetchone()
        if row is None:
            raise RecordNotFoundError(table_id, remote_id)
        record, dirty = dict(row[0]), bool(row[1])
        found = cur.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = %s AND remote_id = %s "
            "AND state != 'confirmed' ORDER BY seq DESC LIMIT 1 FOR UPDATE",
            (table_id, remote_id),
        ).fetchone()
        latest = None if found is None else _change(found)
    plan = plan_edit(op, edit, remote_id, record, dirty, latest)
    if plan.record is None:
        cur.execute(
            "DELETE FROM records WHERE table_id = %s AND remote_id = %s", (table_id, remote_id)
        )
    else:
        cur.execute(
            "INSERT INTO records (table_id, remote_id, fields, dirty) "
            "VALUES (%s, %s, %s::jsonb, true) "
            "ON CONFLICT (table_id, remote_id) DO UPDATE SET fields = excluded.fields, "
            "dirty = true",
            (table_id, remote_id, json_text(plan.record)),
        )
    if plan.drop:
        cur.execute("DELETE FROM changes WHERE change_id = ANY(%s)", (list(plan.drop),))
    if plan.change is None:
        return
    new_op, fields, base = plan.change
    base_json = None if base is None else json_text(base)
    if plan.in_place is not None:
        cur.execute(
            "UPDATE changes SET op = %s, fields = %s::jsonb, base = %s::jsonb, "
            "updated_at = now() WHERE change_id = %s",
            (new_op.value, json_text(fields), base_json, plan.in_place),
        )
    else:
        cur.execute(
            "INSERT INTO changes (change_id, table_id, remote_id, op, fields, base, state) "
            "VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, 'pending')",
            (uuid.uuid4().hex, table_id, remote_id, new_op.value, json_text(fields), base_json),
        )


def _change_for(
    cur: psycopg.Cursor[TupleRow], table_id: str, change_id: str, *, lock: bool
) -> Change:
    row = cur.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE change_id = %s AND table_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (change_id, table_id),
    ).fetchone()
    if row is None:
        raise ChangeStateError(change_id, "unknown", "settled")
    return _change(row)


def _change(row: Sequence[Any]) -> Change:
    """A ``changes`` row (``_CHANGE_COLUMNS``) as a Change."""
    return Change(
        change_id=row[0],
        seq=row[1],
        table_id=row[2],
        remote_id=row[3],
        op=ChangeOp(row[4]),
        fields=row[5],
        base=row[6],
        state=ChangeState(row[7]),
        error=row[8],
        job_id=row[9],
        updated_at=row[10],
    )


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
