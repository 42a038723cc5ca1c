"""SQLite snapshot store: the embedded default (one file, WAL mode)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgspec
import structlog

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
    RecordTexts,
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
from spinner_jobs.store.secrets import KEY_FILE_NAME, AccountSecrets, Keyring, sealed_key_id

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Columns added after the first release: added to an older file by migrate().
_ADDED_COLUMNS = {
    "workbook_tables": (
        ("lock_gen", "INTEGER NOT NULL DEFAULT 0"),
        ("last_synced_by", "TEXT"),
    ),
    "checkpoints": (("config_hash", "TEXT"),),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workbooks (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workbook_tables (
    id TEXT PRIMARY KEY,
    workbook_id TEXT NOT NULL REFERENCES workbooks(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    connector TEXT NOT NULL,
    config TEXT NOT NULL,
    account_id TEXT,
    locked_by TEXT,
    locked_at TEXT,
    lock_gen INTEGER NOT NULL DEFAULT 0,
    last_synced_at TEXT,
    last_synced_by TEXT
);
CREATE INDEX IF NOT EXISTS workbook_tables_workbook ON workbook_tables(workbook_id);
CREATE INDEX IF NOT EXISTS workbook_tables_locked_by ON workbook_tables(locked_by);
CREATE TABLE IF NOT EXISTS connector_accounts (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    auth TEXT NOT NULL,
    secret TEXT NOT NULL, -- sealed by store.secrets: enc:v1:<key id>:<base64>
    header TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    table_id TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    fields TEXT NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0,
    seen_by TEXT,
    PRIMARY KEY (table_id, remote_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    table_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    cursor TEXT,
    records INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    config_hash TEXT,
    PRIMARY KEY (table_id, job_id)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id TEXT NOT NULL UNIQUE, -- also the change's idempotency key
    table_id TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    op TEXT NOT NULL,
    fields TEXT NOT NULL,
    base TEXT,
    state TEXT NOT NULL,
    error TEXT,
    job_id TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_record ON changes(table_id, remote_id, seq);
CREATE INDEX IF NOT EXISTS changes_state ON changes(table_id, state, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL, -- SHA-256 hex of the whole key (never the key itself)
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""

# A page is upserted a few hundred rows per statement, not one statement per row: the
# sqlite3 module releases and takes back the GIL around every statement it steps, and
# binds a row's parameters in its own call (both about a fifth of the write, per row).
# Chunks are powers of two, so a handful of statement texts serve pages of any size.
# The table id and the job's mark are bound once per statement (?1 and ?2) and every
# row refers to them: two texts bound per row instead of four, and the parameters are
# the page's own columns interleaved, with no tuple built per row.
_ROWS_PER_UPSERT = 256


@functools.cache
def _upsert_records(rows: int) -> str:
    """The upsert of ``rows`` records: ?1 the table id, ?2 the mark, then id, fields..."""
    values = ", ".join(f"(?1, ?{3 + 2 * i}, ?{4 + 2 * i}, 0, ?2)" for i in range(rows))
    return (
        f"INSERT INTO records (table_id, remote_id, fields, dirty, seen_by) VALUES {values} "
        "ON CONFLICT (table_id, remote_id) DO UPDATE SET "
        "fields = CASE WHEN records.dirty THEN records.fields ELSE excluded.fields END, "
        "seen_by = excluded.seen_by"
    )


def _upsert_page(
    conn: sqlite3.Connection,
    table_id: str,
    mark: str,
    ids: Sequence[str],
    texts: Sequence[str],
) -> None:
    """Upsert the records ``ids[i]: texts[i]`` in order (a repeated id: the last one wins)."""
    fits = max(1, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 2) // 2)
    most = min(_ROWS_PER_UPSERT, 1 << (fits.bit_length() - 1))
    start = 0
    while start < len(ids):
        count = min(most, 1 << ((len(ids) - start).bit_length() - 1))
        params: list[str | None] = [table_id, mark] + [None] * (2 * count)
        params[2::2] = ids[start : start + count]
        params[3::2] = texts[start : start + count]
        conn.execute(_upsert_records(count), params)
        start += count


# A record deleted locally stays deleted while its delete is on its way to the source.
_DROP_DELETED_LOCALLY = """
DELETE FROM records WHERE table_id = ? AND remote_id IN (
    SELECT remote_id FROM changes
    WHERE table_id = ? AND op = 'delete' AND state IN ('pending', 'sent')
)
"""

_CHANGE_COLUMNS = (
    "change_id, seq, table_id, remote_id, op, fields, base, state, error, job_id, updated_at"
)


def _record_fields(text: str) -> Any:
    """A stored record's fields, as fast as orjson and exact where it is not.

    A download keeps each record's text as the source sent it. msgspec reads integers
    past 64 bits exactly (orjson makes them floats). JSON also allows numbers beyond a
    double's range, such as ``1e400``, which msgspec refuses; the standard library
    reads those (as infinity), so such a record still reads back.
    """
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLite's "database is locked" and I/O failures into StoreUnavailableError."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, SqliteStore)
        with store._in_flight:
            store._calls += 1
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(store.url, str(exc)) from exc
        finally:
            with store._in_flight:
                store._calls -= 1
                store._in_flight.notify_all()

    return call


# The WAL is copied into the database file by a thread of the store's own (_Checkpointer),
# a few times a second while writes go on: the copy and its two fsyncs are a tenth of a
# download's time when the writer makes them inside its commit, as SQLite does by
# default every 1,000 pages. A writer still checkpoints itself past this many pages of
# WAL; the thread has copied nearly all of them by then, and a checkpoint that catches
# up with the last commit is what lets the next write start the WAL over.
_WRITER_CHECKPOINT_PAGES = 8192
_CHECKPOINT_EVERY = 0.25  # seconds of writes one background checkpoint takes in
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes a WAL file keeps once it starts over


def _enter_wal(conn: sqlite3.Connection, limit: float) -> None:
    """Switch the file to WAL mode (a no-op once it is), waiting out other openers.

    Connections opening a new file at once each hold a read lock and ask for the write
    lock the switch takes; SQLite tells all but one "database is locked" at once rather
    than calling the busy handler (waiting would deadlock), so they try again.
    """
    deadline = time.monotonic() + limit
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class _Checkpointer:
    """A thread that copies the WAL into the database file while writes go on.

    A PASSIVE checkpoint never waits for a writer or a reader and copies what it can:
    writers go on appending meanwhile. The thread wakes on the first commit after a
    quiet spell, gathers writes for ``_CHECKPOINT_EVERY`` seconds and checkpoints; it
    keeps its own connection, and sleeps until the next commit.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()

    def written(self) -> None:
        """Note a commit: a checkpoint follows within ``_CHECKPOINT_EVERY`` seconds."""
        self._wake.set()
        if self._pid != os.getpid():  # the first write (or the first in a forked child)
            with self._start_lock:
                if self._pid != os.getpid() and not self._stop.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="sqlite-checkpoint", daemon=True
                    )
                    self._thread.start()
                    self._pid = os.getpid()

    def stop(self) -> None:
        """End the thread after the checkpoint it may be making (writes have ended)."""
        with self._start_lock:
            self._stop.set()
            self._wake.set()
            thread, self._thread = self._thread, None
            mine = self._pid == os.getpid()
        if thread is not None and mine:
            thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=1000")
        except sqlite3.Error as exc:  # writers checkpoint themselves instead
            log.warning("sqlite_checkpointer_not_started", path=str(self._path), error=str(exc))
            return
        try:
            while True:
                self._wake.wait()
                self._stop.wait(_CHECKPOINT_EVERY)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    # The next commit wakes the thread again; a writer checkpoints
                    # itself if the WAL keeps growing.
                    log.warning("sqlite_checkpoint_failed", path=str(self._path), error=str(exc))
        finally:
            conn.close()


class SqliteStore:
    """Store in one SQLite file; one connection per thread, writes serialized by SQLite."""

    quick_calls = True

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 30.0,
        secrets: Keyring | None = None,
    ) -> None:
        """Prepare the store; the file and its connections open lazily.

        Args:
            path: the database file.
            busy_timeout: seconds a write waits for another writer (in this process or
                another) before failing with ``StoreUnavailableError``.
            secrets: keys of account secrets (``SPINNER_SECRET_KEY``); None keeps a
                generated key in ``secret.key`` beside the database file.

        """
        self.path = Path(path)
        self._secrets = AccountSecrets(secrets, self.path.parent / KEY_FILE_NAME)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # One writer at a time inside this process: SQLite's own busy handler backs off
        # with sleeps of up to 100 ms, which ruins latency under concurrent writers.
        self._write_lock = threading.Lock()
        # And across processes (several workers on one file): see _writers_lock.
        self._lock_path = self.path.with_name(self.path.name + "-writer.lock")
        self._lock_fd: tuple[int, int] | None = None  # (pid, fd): a forked child reopens
        # Calls running in other threads: close() waits for them, because closing a
        # connection another thread is using crashes the interpreter.
        self._in_flight = threading.Condition()
        self._calls = 0
        self._checkpointer = _Checkpointer(self.path)

    # --- connections -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # The wait first: switching a new file to WAL takes a lock that another
            # process opening it at the same moment may hold.
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            # A new file only (an existing one keeps its size): a stored record is a few
            # hundred bytes, and 16 KiB pages hold about sixty of them, so a page of
            # records splits fewer B-tree pages and writes fewer WAL frames than at the
            # 4 KiB default (about 10% less worker CPU per downloaded record).
            conn.execute("PRAGMA page_size=16384")
            _enter_wal(conn, self._busy_timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        limit = self._wait_limit()
        if getattr(self._local, "busy", None) != limit:
            conn.execute(f"PRAGMA busy_timeout={int(limit * 1000)}")
            self._local.busy = limit
        if not self._write_lock.acquire(timeout=limit):
            raise sqlite3.OperationalError(
                f"another writer in this process held the store for {limit:g}s"
            )
        try:
            with self._writers_lock(limit):
                # IMMEDIATE takes the write lock up front, so two writers never deadlock
                # upgrading read locks.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        finally:
            self._write_lock.release()
        self._checkpointer.written()

    @contextmanager
    def _writers_lock(self, limit: float) -> Iterator[None]:
        """Hold the lock that writers in every process take before SQLite's own.

        Two worker processes on one file write pages in turn. SQLite's busy handler
        would have the second one sleep 1, 2, 5, 10... up to 100 ms between tries, far
        longer than a page takes to write; an advisory lock on a file beside the
        database is polled every fraction of a millisecond instead. A process that does
        not take it (the sqlite3 shell) is still waited for by SQLite's busy timeout.
        """
        fd = self._writers_lock_fd()
        deadline = time.monotonic() + limit
        pause = 0.0002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"another process held the store for {limit:g}s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _writers_lock_fd(self) -> int:
        # flock belongs to the open file, which a forked child shares with its parent:
        # each process opens its own.
        pid = os.getpid()
        if self._lock_fd is None or self._lock_fd[0] != pid:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = (pid, os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600))
        return self._lock_fd[1]

    @contextmanager
    def waiting_at_most(self, seconds: float) -> Iterator[None]:
        """Within the block, this thread's calls wait at most ``seconds`` for the file."""
        before = getattr(self._local, "limit", None)
        self._local.limit = seconds
        try:
            yield
        finally:
            self._local.limit = before

    def _wait_limit(self) -> float:
        limit: float | None = getattr(self._local, "limit", None)
        return self._busy_timeout if limit is None else limit

    @_translated
    def migrate(self) -> None:
        """Create the schema if missing; add the columns newer versions use.

        One write transaction: concurrent callers (several processes opening a new
        file at once) take turns, so none adds a column another has just added.
        """
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns:
                    if name not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self, wait: float = 30.0) -> None:
        """Close every thread's connection, once calls in flight have returned.

        A caller may give up on a store call running in a thread (an async task
        cancelled around ``asyncio.to_thread``) while the call goes on; its connection
        is closed only after it returns, or after ``wait`` seconds.
        """
        with self._in_flight:
            self._in_flight.wait_for(lambda: self._calls == 0, timeout=wait)
        self._checkpointer.stop()
        self._checkpointer = _Checkpointer(self.path)  # for writes after the close
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None and lock_fd[0] == os.getpid():
            os.close(lock_fd[1])
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
        with self._write() as conn:
            owner = conn.execute(
                "SELECT organization_id FROM workbooks WHERE id = ?", (workbook.id,)
            ).fetchone()
            if owner is not None and owner[0] != workbook.organization_id:
                raise WorkbookConflictError(workbook.id)
            ids = [t.id for t in workbook.tables]
            taken = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM workbook_tables WHERE id IN ({','.join('?' * len(ids))}) "
                    "AND workbook_id != ? ORDER BY id",
                    (*ids, workbook.id),
                )
            ]
            if taken:
                raise TableConflictError(taken)
            for account_id in sorted({t.account_id for t in workbook.tables if t.account_id}):
                owner = conn.execute(
                    "SELECT organization_id FROM connector_accounts WHERE id = ?", (account_id,)
                ).fetchone()
                if owner is None or owner[0] != workbook.organization_id:
                    raise AccountNotFoundError(account_id)
            conn.execute(
                "INSERT INTO workbooks (id, organization_id, name) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                (workbook.id, workbook.organization_id, workbook.name),
            )
            keep = [t.id for t in workbook.tables]
            marks = ",".join("?" * len(keep)) or "NULL"
            gone = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM workbook_tables WHERE workbook_id = ? AND id NOT IN ({marks})",
                    (workbook.id, *keep),
                )
            ]
            for table_id in gone:
                conn.execute("DELETE FROM records WHERE table_id = ?", (table_id,))
                conn.execute("DELETE FROM changes WHERE table_id = ?", (table_id,))
                conn.execute("DELETE FROM checkpoints WHERE table_id = ?", (table_id,))
                conn.execute("DELETE FROM workbook_tables WHERE id = ?", (table_id,))
            for position, table in enumerate(workbook.tables):
                conn.execute(
                    "INSERT INTO workbook_tables (id, workbook_id, position, name, connector, "
                    "config, account_id) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET workbook_id = excluded.workbook_id, "
                    "position = excluded.position, name = excluded.name, "
                    "connector = excluded.connector, config = excluded.config, "
                    "account_id = excluded.account_id",
                    (
                        table.id,
                        workbook.id,
                        position,
                        table.name,
                        table.connector,
                        json_text(table.config),
                        table.account_id,
                    ),
                )

    @_translated
    def get_workbook(self, workbook_id: str) -> Workbook | None:
        """The workbook with its tables, or None."""
        conn = self._conn()
        row = conn.execute(
            "SELECT id, organization_id, name FROM workbooks WHERE id = ?", (workbook_id,)
        ).fetchone()
        if row is None:
            return None
        tables = [
            Table(
                id=t[0],
                workbook_id=workbook_id,
                name=t[1],
                connector=t[2],
                config=json.loads(t[3]),
                account_id=t[4],
                locked_by=t[5],
                last_synced_at=datetime.fromisoformat(t[6]) if t[6] else None,
            )
            for t in conn.execute(
                "SELECT id, name, connector, config, account_id, locked_by, last_synced_at "
                "FROM workbook_tables WHERE workbook_id = ? ORDER BY position",
                (workbook_id,),
            )
        ]
        return Workbook(id=row[0], organization_id=row[1], name=row[2], tables=tables)

    @_translated
    def put_account(self, account: ConnectorAccount) -> None:
        """Create or replace a connector account; its secret is stored encrypted.

        Raises:
            AccountConflictError: the id belongs to an account of another organization.
            SecretKeyError: no key to encrypt with.

        """
        sealed = self._secrets.seal(account.id, account.organization_id, account.secret)
        with self._write() as conn:
            changed = conn.execute(
                "INSERT INTO connector_accounts (id, organization_id, auth, secret, header) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET auth = excluded.auth, "
                "secret = excluded.secret, header = excluded.header "
                "WHERE connector_accounts.organization_id = excluded.organization_id",
                (account.id, account.organization_id, account.auth, sealed, account.header),
            ).rowcount
            if changed == 0:
                raise AccountConflictError(account.id)

    @_translated
    def get_account(self, account_id: str) -> ConnectorAccount | None:
        """A connector account with its secret decrypted, or None.

        Raises:
            SecretKeyError: the key its secret was encrypted under is not configured,
                or the stored ciphertext does not belong to this account.

        """
        row = (
            self._conn()
            .execute(
                "SELECT id, organization_id, auth, secret, header FROM connector_accounts "
                "WHERE id = ?",
                (account_id,),
            )
            .fetchone()
        )
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
        rows = self._conn().execute(
            "SELECT id, organization_id, auth, header, secret FROM connector_accounts "
            "WHERE ? IS NULL OR organization_id = ? ORDER BY id",
            (organization_id, organization_id),
        )
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
        marks = ",".join("?" * len(table_ids))
        now = datetime.now(UTC)
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, locked_by, locked_at FROM workbook_tables WHERE id IN ({marks}) "
                "AND locked_by IS NOT NULL AND locked_by != ?",
                (*table_ids, job_id),
            ).fetchall()
            held = {
                tid: HeldLock(holder, _age(now, locked_at))
                for tid, holder, locked_at in rows
                if stale.get(tid) != holder
            }
            if held:
                return held
            for tid, holder, _ in rows:  # taken over: the stale holder's progress goes
                conn.execute(
                    "DELETE FROM checkpoints WHERE table_id = ? AND job_id = ?", (tid, holder)
                )
            conn.execute(
                "UPDATE workbook_tables SET locked_by = ?, locked_at = ?, "
                "lock_gen = lock_gen + 1 "
                f"WHERE id IN ({marks}) AND (locked_by IS NULL OR locked_by != ?)",
                (job_id, now.isoformat(), *table_ids, job_id),
            )
            return {}

    @_translated
    def unlock_tables(self, table_ids: Sequence[str], job_id: str) -> dict[str, int]:
        """Release the tables' locks held by ``job_id``; count what it wrote."""
        marks = ",".join("?" * len(table_ids))
        with self._write() as conn:
            conn.execute(
                "UPDATE workbook_tables SET locked_by = NULL, locked_at = NULL "
                f"WHERE locked_by = ? AND id IN ({marks})",
                (job_id, *table_ids),
            )
            conn.execute(
                f"DELETE FROM checkpoints WHERE job_id = ? AND table_id IN ({marks})",
                (job_id, *table_ids),
            )
            return {tid: _count_seen(conn, tid, job_id) for tid in table_ids}

    @_translated
    def restart_table(self, lease: Lease) -> None:
        """Forget what the lease's job read of the table so far (fenced on the lease)."""
        with self._write() as conn:
            _check_lease(conn, lease)
            conn.execute(
                "UPDATE records SET seen_by = NULL WHERE table_id = ? AND seen_by IN (?, ?)",
                (lease.table_id, seen_mark(lease.job_id), lease.job_id),
            )
            conn.execute(
                "DELETE FROM checkpoints WHERE table_id = ? AND job_id = ?",
                (lease.table_id, lease.job_id),
            )

    @_translated
    def touch_locks(self, job_id: str) -> None:
        """Restart the age of ``job_id``'s locks."""
        with self._write() as conn:
            conn.execute(
                "UPDATE workbook_tables SET locked_at = ? WHERE locked_by = ?",
                (datetime.now(UTC).isoformat(), job_id),
            )

    @_translated
    def lease(self, table_id: str, job_id: str) -> Lease:
        """A fresh lease of ``job_id`` on the table it holds locked (LockLostError if not).

        Each call bumps the lock's generation, so an earlier attempt of the same job
        (a worker that lost contact but still runs) can no longer write.
        """
        with self._write() as conn:
            row = conn.execute(
                "UPDATE workbook_tables SET lock_gen = lock_gen + 1 "
                "WHERE id = ? AND locked_by = ? RETURNING lock_gen",
                (table_id, job_id),
            ).fetchone()
        if row is None:
            raise LockLostError(table_id, job_id)
        return Lease(table_id, job_id, int(row[0]))

    @_translated
    def locks_held_by(self, job_id: str) -> list[str]:
        """Table ids locked by ``job_id``."""
        rows = self._conn().execute(
            "SELECT id FROM workbook_tables WHERE locked_by = ? ORDER BY id", (job_id,)
        )
        return [r[0] for r in rows]

    # --- records ---------------------------------------------------------------------

    @_translated
    def write_page(
        self, lease: Lease, records: Sequence[PageRecord], checkpoint: TableCheckpoint
    ) -> None:
        """Upsert a page and save the checkpoint in one transaction, fenced on the lease."""
        table_id, mark = lease.table_id, seen_mark(lease.job_id)
        if isinstance(records, RecordTexts):
            ids, texts = records.ids, records.texts  # straight from the columns
        else:
            ids = [rid for rid, _ in records]
            texts = [fields_text(fields) for _, fields in records]
        with self._write() as conn:
            _check_lease(conn, lease)
            _upsert_page(conn, table_id, mark, ids, texts)
            conn.execute(_DROP_DELETED_LOCALLY, (table_id, table_id))
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints "
                "(table_id, job_id, cursor, records, pages, config_hash) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    table_id,
                    lease.job_id,
                    checkpoint.cursor,
                    checkpoint.records,
                    checkpoint.pages,
                    checkpoint.config,
                ),
            )

    @_translated
    def get_checkpoint(self, table_id: str, job_id: str) -> TableCheckpoint | None:
        """The last committed checkpoint of ``job_id`` on the table."""
        row = (
            self._conn()
            .execute(
                "SELECT cursor, records, pages, config_hash FROM checkpoints "
                "WHERE table_id = ? AND job_id = ?",
                (table_id, job_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        return TableCheckpoint(cursor=row[0], records=row[1], pages=row[2], config=row[3])

    @_translated
    def finish_sync(self, lease: Lease, synced_at: datetime) -> SyncSummary:
        """Delete records the source no longer has (unless dirty), stamp, unlock."""
        table_id, job_id = lease.table_id, lease.job_id
        with self._write() as conn:
            row = conn.execute(
                "SELECT locked_by, lock_gen, last_synced_by FROM workbook_tables WHERE id = ?",
                (table_id,),
            ).fetchone()
            if row is not None and row[0] is None and row[2] == job_id:
                # Committed before (the caller lost the answer): the same counts again.
                return SyncSummary(
                    deleted=0, kept_dirty=0, records=_count_seen(conn, table_id, job_id)
                )
            _check_lease(conn, lease)
            # One pass counts the table; the delete makes a second only when some record
            # is gone from the source (a table's first download has none). Counting with
            # FILTER reads each row in half the time sum() over the same tests takes.
            seen, kept, total = conn.execute(
                "SELECT count(*) FILTER (WHERE seen_by = ?1 OR seen_by = ?2), "
                "count(*) FILTER (WHERE dirty AND NOT coalesce(seen_by = ?1 OR seen_by = ?2, 0)), "
                "count(*) FROM records WHERE table_id = ?3",
                (seen_mark(job_id), job_id, table_id),
            ).fetchone()
            deleted = 0
            if total > seen + kept:
                deleted = conn.execute(
                    "DELETE FROM records WHERE table_id = ? AND dirty = 0 "
                    "AND (seen_by IS NULL OR seen_by NOT IN (?, ?))",
                    (table_id, seen_mark(job_id), job_id),
                ).rowcount
            conn.execute(
                "UPDATE workbook_tables SET last_synced_at = ?, last_synced_by = ?, "
                "locked_by = NULL, locked_at = NULL WHERE id = ?",
                (synced_at.isoformat(), job_id, table_id),
            )
            conn.execute(
                "DELETE FROM checkpoints WHERE table_id = ? AND job_id = ?", (table_id, job_id)
            )
        # The delete spared every record the job wrote: they are the table's records.
        return SyncSummary(deleted=deleted, kept_dirty=kept, records=seen)

    # --- local edits and their publishing ----------------------------------------------

    @_translated
    def update_record(self, table_id: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into a record locally and record the change (see ``Store``)."""
        edit, _ = edit_fields(table_id, fields)
        with self._write() as conn:
            self._edit(conn, ChangeOp.UPDATE, table_id, remote_id, edit)

    @_translated
    def create_record(self, table_id: str, fields: Mapping[str, Any]) -> str:
        """Create a record locally; return its local id (see ``Store``)."""
        edit, _ = edit_fields(table_id, fields)
        local_id = f"{LOCAL_ID_PREFIX}{uuid.uuid4().hex}"
        with self._write() as conn:
            self._edit(conn, ChangeOp.CREATE, table_id, local_id, edit)
        return local_id

    @_translated
    def delete_record(self, table_id: str, remote_id: str) -> None:
        """Delete a record locally and record the change (see ``Store``)."""
        with self._write() as conn:
            self._edit(conn, ChangeOp.DELETE, table_id, remote_id, {})

    def _edit(
        self,
        conn: sqlite3.Connection,
        op: ChangeOp,
        table_id: str,
        remote_id: str,
        edit: dict[str, Any],
    ) -> None:
        known = conn.execute("SELECT 1 FROM workbook_tables WHERE id = ?", (table_id,))
        if known.fetchone() is None:
            raise UnknownTableError(table_id)
        record: dict[str, Any] | None = None
        dirty = False
        latest: Change | None = None
        if op is not ChangeOp.CREATE:
            row = conn.execute(
                "SELECT fields, dirty FROM records WHERE table_id = ? AND remote_id = ?",
                (table_id, remote_id),
            ).fetchone()
            if row is None:
                raise RecordNotFoundError(table_id, remote_id)
            record, dirty = dict(json.loads(row[0])), bool(row[1])
            found = conn.execute(
                f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = ? AND remote_id = ? "
                "AND state != 'confirmed' ORDER BY seq DESC LIMIT 1",
                (table_id, remote_id),
            ).fetchone()
            latest = None if found is None else _change(found)
        plan = plan_edit(op, edit, remote_id, record, dirty, latest)
        now = datetime.now(UTC).isoformat()
        if plan.record is None:
            conn.execute(
                "DELETE FROM records WHERE table_id = ? AND remote_id = ?", (table_id, remote_id)
            )
        else:
            conn.execute(
                "INSERT INTO records (table_id, remote_id, fields, dirty) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (table_id, remote_id) DO UPDATE SET fields = excluded.fields, "
                "dirty = 1",
                (table_id, remote_id, json_text(plan.record)),
            )
        for change_id in plan.drop:
            conn.execute("DELETE FROM changes WHERE change_id = ?", (change_id,))
        if plan.change is None:
            return
        op_, fields_, base = plan.change
        base_text = None if base is None else json_text(base)
        if plan.in_place is not None:
            conn.execute(
                "UPDATE changes SET op = ?, fields = ?, base = ?, updated_at = ? "
                "WHERE change_id = ?",
                (op_.value, json_text(fields_), base_text, now, plan.in_place),
            )
        else:
            conn.execute(
                "INSERT INTO changes (change_id, table_id, remote_id, op, fields, base, state, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    uuid.uuid4().hex,
                    table_id,
                    remote_id,
                    op_.value,
                    json_text(fields_),
                    base_text,
                    now,
                ),
            )

    @_translated
    def list_changes(
        self,
        table_id: str,
        states: Sequence[ChangeState] | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[Change]:
        """The table's changes in ``states`` (None: all) after ``seq`` ``after``, by seq."""
        wanted = [ChangeState(s).value for s in states] if states is not None else []
        marks = ",".join("?" * len(wanted))
        where = f"AND state IN ({marks})" if states is not None else ""
        rows = self._conn().execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = ? AND seq > ? {where} "
            "ORDER BY seq LIMIT ?",
            (table_id, after, *wanted, limit),
        )
        return [_change(row) for row in rows]

    @_translated
    def change_counts(self, table_id: str, job_id: str | None = None) -> dict[ChangeState, int]:
        """Changes of the table per state (settled ones of ``job_id`` only, when given)."""
        rows = self._conn().execute(
            "SELECT state, count(*) FROM changes WHERE table_id = ? AND (? IS NULL "
            "OR state IN ('pending', 'sent') OR job_id = ?) GROUP BY state",
            (table_id, job_id, job_id),
        )
        counts = dict.fromkeys(ChangeState, 0)
        for state, count in rows:
            counts[ChangeState(state)] = int(count)
        return counts

    @_translated
    def mark_change_sent(self, lease: Lease, change_id: str) -> Change | None:
        """Mark a pending or sent change sent, fenced on the lease; None if neither."""
        with self._write() as conn:
            _check_lease(conn, lease)
            row = conn.execute(
                "UPDATE changes SET state = 'sent', job_id = ?, updated_at = ? "
                "WHERE change_id = ? AND table_id = ? AND state IN ('pending', 'sent') "
                f"RETURNING {_CHANGE_COLUMNS}",
                (lease.job_id, datetime.now(UTC).isoformat(), change_id, lease.table_id),
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
        with self._write() as conn:
            _check_lease(conn, lease)
            change = self._change_for(conn, table_id, change_id)
            if change.state is ChangeState.CONFIRMED:
                return
            if change.state is not ChangeState.SENT:
                raise ChangeStateError(change_id, change.state.value, "confirmed")
            old_id = change.remote_id
            new_id = confirmed_id(change, remote_id)
            if new_id != old_id:
                # The record takes the id its source assigned (replacing a copy of it a
                # download may have brought meanwhile); so do its later changes.
                conn.execute(
                    "DELETE FROM records WHERE table_id = ? AND remote_id = ?", (table_id, new_id)
                )
                conn.execute(
                    "UPDATE records SET remote_id = ? WHERE table_id = ? AND remote_id = ?",
                    (new_id, table_id, old_id),
                )
                conn.execute(
                    "UPDATE changes SET remote_id = ? WHERE table_id = ? AND remote_id = ?",
                    (new_id, table_id, old_id),
                )
            later = [
                _change(row)
                for row in conn.execute(
                    f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE table_id = ? AND remote_id = ? "
                    "AND seq > ? AND state != 'confirmed' ORDER BY seq",
                    (table_id, new_id, change.seq),
                )
            ]
            if change.op is ChangeOp.DELETE:
                conn.execute(
                    "DELETE FROM records WHERE table_id = ? AND remote_id = ?", (table_id, new_id)
                )
            else:
                row = conn.execute(
                    "SELECT fields FROM records WHERE table_id = ? AND remote_id = ?",
                    (table_id, new_id),
                ).fetchone()
                if row is not None:
                    merged = confirmed_fields(json.loads(row[0]), returned, later)
                    conn.execute(
                        "UPDATE records SET fields = ?, dirty = ? WHERE table_id = ? "
                        "AND remote_id = ?",
                        (json_text(merged), 1 if later else 0, table_id, new_id),
                    )
                rebased = json_text({**(change.base or {}), **change.fields, **returned})
                conn.execute(
                    "UPDATE changes SET base = ? WHERE table_id = ? AND remote_id = ? "
                    "AND seq > ? AND state = 'pending' AND op != 'create'",
                    (rebased, table_id, new_id, change.seq),
                )
            conn.execute(
                "UPDATE changes SET state = 'confirmed', error = NULL, job_id = ?, "
                "updated_at = ? WHERE change_id = ?",
                (lease.job_id, datetime.now(UTC).isoformat(), change_id),
            )

    @_translated
    def settle_change(
        self, lease: Lease, change_id: str, state: ChangeState, error: str | None
    ) -> None:
        """Settle a change as conflict or failed, fenced on the lease (see ``Store``)."""
        state = settled_state(state)
        with self._write() as conn:
            _check_lease(conn, lease)
            change = self._change_for(conn, lease.table_id, change_id)
            if change.state not in UNSETTLED:
                raise ChangeStateError(change_id, change.state.value, f"settled as {state}")
            conn.execute(
                "UPDATE changes SET state = ?, error = ?, job_id = ?, updated_at = ? "
                "WHERE change_id = ?",
                (state.value, error, lease.job_id, datetime.now(UTC).isoformat(), change_id),
            )

    def _change_for(self, conn: sqlite3.Connection, table_id: str, change_id: str) -> Change:
        row = conn.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE change_id = ? AND table_id = ?",
            (change_id, table_id),
        ).fetchone()
        if row is None:
            raise ChangeStateError(change_id, "unknown", "settled")
        return _change(row)

    # --- reading ---------------------------------------------------------------------

    @_translated
    def count_records(self, table_id: str) -> int:
        """Number of records stored for the table."""
        row = (
            self._conn()
            .execute("SELECT count(*) FROM records WHERE table_id = ?", (table_id,))
            .fetchone()
        )
        return int(row[0])

    @_translated
    def record_ids(self, table_id: str) -> list[str]:
        """Remote ids of the table's records, sorted."""
        rows = self._conn().execute(
            "SELECT remote_id FROM records WHERE table_id = ? ORDER BY remote_id", (table_id,)
        )
        return [r[0] for r in rows]

    @_translated
    def get_record(self, table_id: str, remote_id: str) -> Mapping[str, Any] | None:
        """A record's fields, or None."""
        row = (
            self._conn()
            .execute(
                "SELECT fields FROM records WHERE table_id = ? AND remote_id = ?",
                (table_id, remote_id),
            )
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    # --- HTTP API keys (spinner_jobs.api) ---------------------------------------------

    _API_KEY_COLUMNS = "id, organization_id, name, key_hash, created_at, revoked_at"

    @staticmethod
    def _api_key(row: Sequence[Any]) -> ApiKey:
        return ApiKey(
            id=row[0],
            organization_id=row[1],
            name=row[2],
            key_hash=row[3],
            created_at=datetime.fromisoformat(row[4]),
            revoked_at=datetime.fromisoformat(row[5]) if row[5] else None,
        )

    @_translated
    def put_api_key(self, key: ApiKey) -> bool:
        """Store a new API key; False (nothing written) when its id exists."""
        with self._write() as conn:
            return (
                conn.execute(
                    f"INSERT INTO api_keys ({self._API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (
                        key.id,
                        key.organization_id,
                        key.name,
                        key.key_hash,
                        key.created_at.isoformat(),
                        key.revoked_at.isoformat() if key.revoked_at else None,
                    ),
                ).rowcount
                == 1
            )

    @_translated
    def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, or None."""
        row = (
            self._conn()
            .execute(f"SELECT {self._API_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
            .fetchone()
        )
        return None if row is None else self._api_key(row)

    @_translated
    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]:
        """Keys of one organization (or all), oldest first."""
        rows = self._conn().execute(
            f"SELECT {self._API_KEY_COLUMNS} FROM api_keys "
            "WHERE ? IS NULL OR organization_id = ? ORDER BY created_at, id",
            (organization_id, organization_id),
        )
        return [self._api_key(r) for r in rows]

    @_translated
    def revoke_api_key(self, key_id: str, revoked_at: datetime) -> ApiKey | None:
        """Revoke the key (the first revocation time stays); None if unknown."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? "
                f"RETURNING {self._API_KEY_COLUMNS}",
                (revoked_at.isoformat(), key_id),
            ).fetchone()
        return None if row is None else self._api_key(row)

    # --- export reads ----------------------------------------------------------------

    @_translated
    def read_records(self, table_id: str, after: str | None, limit: int) -> list[RecordRow]:
        """One keyset page of the table's records by remote id, strictly after ``after``.

        One statement, so one transaction; ``remote_id`` compares as bytes (BINARY).
        """
        if limit < 1:
            # Imported here: the method is kept at the end of the class, self-contained.
            from spinner_jobs.core.errors import InvalidJobError

            raise InvalidJobError("limit", f"must be at least 1, got {limit}")
        conn = self._conn()
        if after is None:
            rows = conn.execute(
                "SELECT remote_id, fields FROM records WHERE table_id = ? "
                "ORDER BY remote_id LIMIT ?",
                (table_id, limit),
            )
        else:
            rows = conn.execute(
                "SELECT remote_id, fields FROM records WHERE table_id = ? AND remote_id > ? "
                "ORDER BY remote_id LIMIT ?",
                (table_id, after, limit),
            )
        return [(remote_id, _record_fields(fields)) for remote_id, fields in rows]


def _age(now: datetime, locked_at: str | None) -> float:
    """Seconds since ``locked_at`` (an ISO time; a lock with no time counts as old)."""
    if not locked_at:
        return float("inf")
    at = datetime.fromisoformat(locked_at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (now - at).total_seconds())


def _check_lease(conn: sqlite3.Connection, lease: Lease) -> None:
    """Raise LockLostError unless the lease's job still holds the lock it was given."""
    row = conn.execute(
        "SELECT 1 FROM workbook_tables WHERE id = ? AND locked_by = ? AND lock_gen = ?",
        (lease.table_id, lease.job_id, lease.generation),
    ).fetchone()
    if row is None:
        raise LockLostError(lease.table_id, lease.job_id)


def _count_seen(conn: sqlite3.Connection, table_id: str, job_id: str) -> int:
    """Records of the table written by ``job_id`` (distinct remote ids)."""
    row = conn.execute(
        "SELECT count(*) FROM records WHERE table_id = ? AND seen_by IN (?, ?)",
        (table_id, seen_mark(job_id), job_id),
    ).fetchone()
    return int(row[0])


def _change(row: Sequence[Any]) -> Change:
    """A ``changes`` row (``_CHANGE_COLUMNS``) as a Change."""
    return Change(
        change_id=row[0],
        seq=row[1],
        table_id=row[2],
        remote_id=row[3],
        op=ChangeOp(row[4]),
        fields=json.loads(row[5]),
        base=None if row[6] is None else json.loads(row[6]),
        state=ChangeState(row[7]),
        error=row[8],
        job_id=row[9],
        updated_at=datetime.fromisoformat(row[10]),
    )
