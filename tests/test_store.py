"""One behavioural suite for every snapshot store: SQLite and a real PostgreSQL.

Each test gets a fresh store: a new SQLite file, or a new schema on the session's
PostgreSQL server (see ``tests/pg.py``).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from pydantic import SecretStr

from spinner_jobs.connectors.base import Record
from spinner_jobs.core.errors import LockLostError
from spinner_jobs.core.models import ConnectorAccount, Table, TableCheckpoint, Workbook
from spinner_jobs.store import HeldLock, Lease, Store, open_store
from spinner_jobs.store.postgres import PostgresStore, redact_url
from spinner_jobs.store.secrets import new_key
from spinner_jobs.store.sqlite import SqliteStore
from tests.pg import fresh_schema

SYNCED_AT = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty, not yet migrated store of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    # Requested lazily so `-k sqlite` runs need no PostgreSQL server.
    base = request.getfixturevalue("postgres_url")
    with fresh_schema(base) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url, secret_key=SecretStr(new_key()))
    try:
        yield opened
    finally:
        opened.close()


def _holders(held: dict[str, HeldLock]) -> dict[str, str]:
    return {table_id: lock.job_id for table_id, lock in held.items()}


def _lease(store: Store, table_id: str, job_id: str) -> Lease:
    """A fresh lease of ``job_id`` on the table, locking it first if it is free."""
    store.lock_tables([table_id], job_id)
    return store.lease(table_id, job_id)


def _write(store: Store, table_id: str, job_id: str, records: Any, checkpoint: Any) -> None:
    store.write_page(_lease(store, table_id, job_id), records, checkpoint)


def _finish(store: Store, table_id: str, job_id: str, synced_at: datetime) -> Any:
    return store.finish_sync(_lease(store, table_id, job_id), synced_at)


def _workbook(*table_ids: str, workbook_id: str = "wb1", account: str | None = None) -> Workbook:
    return Workbook(
        id=workbook_id,
        organization_id="org1",
        name="Sales",
        tables=[
            Table(
                id=tid,
                workbook_id=workbook_id,
                name=f"Table {tid}",
                connector="http",
                config={"url": f"https://example.test/{tid}", "paginator": {"type": "cursor"}},
                account_id=account if i == 0 else None,
            )
            for i, tid in enumerate(table_ids)
        ],
    )


def _records(*ids: str, version: int = 1) -> list[Record]:
    return [Record(rid, {"id": rid, "version": version, "name": f"n{rid}"}) for rid in ids]


def _fields(store: Store, table_id: str) -> dict[str, dict[str, Any]]:
    return {rid: dict(store.get_record(table_id, rid) or {}) for rid in store.record_ids(table_id)}


# --- catalog -----------------------------------------------------------------------------


def test_workbook_and_account_round_trip(store: Store) -> None:
    workbook = _workbook("t1", "t2", "t3", account="acc1")
    account = ConnectorAccount(
        id="acc1", organization_id="org1", auth="api_key", secret="s3cret", header="X-Key"
    )

    store.put_account(account)
    store.put_workbook(workbook)

    assert store.get_workbook("wb1") == workbook
    assert store.get_account("acc1") == account
    assert store.get_workbook("nope") is None
    assert store.get_account("nope") is None

    replaced = account.model_copy(update={"auth": "bearer", "secret": SecretStr("other")})
    store.put_account(replaced)
    assert store.get_account("acc1") == replaced


def test_workbook_without_tables_round_trips(store: Store) -> None:
    store.put_workbook(_workbook())
    assert store.get_workbook("wb1") == _workbook()


def test_put_workbook_keeps_locks_and_sync_times_and_drops_gone_tables(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2", "t3"))
    _write(store, "t1", "job1", _records("a", "b"), TableCheckpoint(cursor="c1", pages=1))
    _write(store, "t3", "job0", _records("x", "y"), TableCheckpoint(cursor="c1", pages=1))
    assert store.lock_tables(["t2"], "job0") == {}
    _finish(store, "t2", "job0", SYNCED_AT)

    renamed = _workbook("t2", "t1", "t4").model_copy(update={"name": "Sales 2"})
    store.put_workbook(renamed)

    got = store.get_workbook("wb1")
    assert got is not None
    assert got.name == "Sales 2"
    assert [t.id for t in got.tables] == ["t2", "t1", "t4"]
    by_id = {t.id: t for t in got.tables}
    assert by_id["t1"].locked_by == "job1"
    assert by_id["t2"].last_synced_at == SYNCED_AT
    assert by_id["t4"].locked_by is None
    assert by_id["t4"].last_synced_at is None
    # The dropped table's records and checkpoint are gone; the kept table's stay.
    assert store.count_records("t3") == 0
    assert store.get_checkpoint("t3", "job0") is None
    assert store.record_ids("t1") == ["a", "b"]
    assert store.get_checkpoint("t1", "job1") == TableCheckpoint(cursor="c1", pages=1)


def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        open_store("mysql://localhost/db")


def test_migrate_is_idempotent_under_concurrent_callers(store_url: str) -> None:
    def open_and_close(_: int) -> None:
        opened = open_store(store_url)
        try:
            opened.migrate()
        finally:
            opened.close()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(open_and_close, range(6)))

    opened = open_store(store_url)
    try:
        opened.put_workbook(_workbook("t1"))
        assert opened.get_workbook("wb1") == _workbook("t1")
    finally:
        opened.close()


# --- locks -------------------------------------------------------------------------------


def test_lock_tables_is_all_or_none_and_reports_holders(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2", "t3"))
    assert store.lock_tables([], "job0") == {}

    assert store.lock_tables(["t1", "t2"], "job1") == {}
    assert _holders(store.lock_tables(["t2", "t3"], "job2")) == {"t2": "job1"}
    # job2 got nothing, not even the free t3.
    assert store.locks_held_by("job2") == []
    assert store.lock_tables(["t3"], "job3") == {}
    assert _holders(store.lock_tables(["t1", "t2", "t3"], "job4")) == {
        "t1": "job1",
        "t2": "job1",
        "t3": "job3",
    }
    # Locking again what one already holds succeeds (a retried activity does this).
    assert store.lock_tables(["t1", "t2"], "job1") == {}
    assert store.locks_held_by("job1") == ["t1", "t2"]
    got = store.get_workbook("wb1")
    assert got is not None
    assert [t.locked_by for t in got.tables] == ["job1", "job1", "job3"]


def test_unlock_releases_only_the_holders_locks(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2"))
    assert store.lock_tables(["t1"], "job1") == {}
    assert store.lock_tables(["t2"], "job2") == {}

    store.unlock_tables(["t1", "t2"], "job2")

    assert store.locks_held_by("job1") == ["t1"]
    assert store.locks_held_by("job2") == []
    assert store.lock_tables(["t2"], "job3") == {}
    store.unlock_tables(["t1"], "job1")
    assert _holders(store.lock_tables(["t1", "t2"], "job4")) == {"t2": "job3"}


def test_concurrent_lock_tables_has_exactly_one_winner(store: Store) -> None:
    tables = ["t1", "t2", "t3", "t4"]
    store.put_workbook(_workbook(*tables))
    callers = 12
    start = threading.Barrier(callers)

    def lock(i: int) -> tuple[str, dict[str, HeldLock]]:
        # Each caller names the tables in its own order: no order may deadlock.
        ids = random.Random(i).sample(tables, len(tables))
        start.wait()
        return f"job{i}", store.lock_tables(ids, f"job{i}")

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(lock, range(callers)))

    winners = [job for job, held in results if not held]
    assert len(winners) == 1
    winner = winners[0]
    for job, held in results:
        if job != winner:
            assert _holders(held) == dict.fromkeys(tables, winner)
            assert store.locks_held_by(job) == []
    assert store.locks_held_by(winner) == tables


def test_concurrent_overlapping_locks_never_share_a_table(store: Store) -> None:
    tables = [f"t{i}" for i in range(6)]
    store.put_workbook(_workbook(*tables))
    callers = 12
    start = threading.Barrier(callers)

    def lock(i: int) -> tuple[str, list[str], dict[str, HeldLock]]:
        ids = [tables[i % 6], tables[(i + 2) % 6], tables[(i + 3) % 6]]
        start.wait()
        return f"job{i}", ids, store.lock_tables(ids, f"job{i}")

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(lock, range(callers)))

    got = store.get_workbook("wb1")
    assert got is not None
    holder = {t.id: t.locked_by for t in got.tables}
    for job, ids, held in results:
        if held:
            # A loser locked nothing, and was told about real holders only.
            assert store.locks_held_by(job) == []
            assert all(holder[t] == h.job_id for t, h in held.items())
        else:
            assert sorted(store.locks_held_by(job)) == sorted(ids)


# --- records -----------------------------------------------------------------------------


def test_write_page_twice_writes_no_duplicates(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    ids = ["b", "B", "a", "_x", "10", "9", "é"]
    page = _records(*ids)
    checkpoint = TableCheckpoint(cursor="next", records=len(ids), pages=1)

    _write(store, "t1", "job1", page, checkpoint)
    _write(store, "t1", "job1", page, checkpoint)

    assert store.count_records("t1") == len(ids)
    # Byte order, whatever the database collation.
    assert store.record_ids("t1") == sorted(ids)
    assert store.get_record("t1", "a") == {"id": "a", "version": 1, "name": "na"}
    assert store.get_checkpoint("t1", "job1") == checkpoint


def test_write_page_updates_fields_and_keeps_other_tables_apart(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2"))
    fields = {"text": "déjà vu ✓", "n": 1.5, "ok": True, "none": None, "list": [1, {"a": 2}]}

    _write(store, "t1", "job1", [Record("a", fields)], TableCheckpoint(pages=1))
    _write(store, "t2", "job1", _records("a"), TableCheckpoint(pages=1))
    _write(store, "t1", "job1", [Record("a", {**fields, "n": 2})], TableCheckpoint(pages=2))

    assert store.get_record("t1", "a") == {**fields, "n": 2}
    assert store.get_record("t2", "a") == {"id": "a", "version": 1, "name": "na"}
    assert store.get_record("t1", "missing") is None


def test_a_remote_id_repeated_within_a_page_keeps_its_last_fields(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    page = [Record("a", {"v": 1}), Record("b", {"v": 1}), Record("a", {"v": 2})]

    _write(store, "t1", "job1", page, TableCheckpoint(pages=1))

    assert _fields(store, "t1") == {"a": {"v": 2}, "b": {"v": 1}}


def test_checkpoint_is_saved_with_its_page_per_job(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    assert store.get_checkpoint("t1", "job1") is None

    _write(store, "t1", "job1", _records("a"), TableCheckpoint(cursor="p2", records=1, pages=1))
    _write(store, "t1", "job1", _records("b"), TableCheckpoint(cursor=None, records=2, pages=2))

    last = store.get_checkpoint("t1", "job1")
    assert last == TableCheckpoint(cursor=None, records=2, pages=2)
    assert last.finished
    # A takeover drops the stale holder's checkpoint; the new holder keeps its own.
    assert store.lock_tables(["t1"], "job2", take_over={"t1": "job1"}) == {}
    _write(store, "t1", "job2", [], TableCheckpoint(cursor="q", records=0, pages=1))
    assert store.get_checkpoint("t1", "job1") is None
    assert store.get_checkpoint("t1", "job2") == TableCheckpoint(cursor="q", records=0, pages=1)
    assert store.record_ids("t1") == ["a", "b"]


def test_dirty_record_keeps_local_fields_when_the_source_sends_it_again(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    _write(store, "t1", "job1", _records("a", "b"), TableCheckpoint(pages=1))

    store.update_record("t1", "a", {"name": "edited here"})
    store.unlock_tables(["t1"], "job1")
    _write(store, "t1", "job2", _records("a", "b", version=2), TableCheckpoint(pages=1))

    assert store.get_record("t1", "a") == {"id": "a", "version": 1, "name": "edited here"}
    assert store.get_record("t1", "b") == {"id": "b", "version": 2, "name": "nb"}


def test_finish_sync_prunes_stamps_unlocks_and_drops_checkpoint(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2"))
    _write(store, "t1", "job1", _records("a", "b", "c", "d"), TableCheckpoint(pages=1))
    _finish(store, "t1", "job1", SYNCED_AT - timedelta(days=1))
    store.update_record("t1", "c", {"name": "edited, then gone at the source"})
    store.update_record("t1", "a", {"name": "edited, still at the source"})
    local = store.create_record("t1", {"name": "created here"})
    assert store.lock_tables(["t1", "t2"], "job2") == {}
    _write(store, "t1", "job2", _records("a", "b"), TableCheckpoint(cursor=None, pages=1))

    summary = _finish(store, "t1", "job2", SYNCED_AT)

    assert (summary.deleted, summary.kept_dirty) == (1, 2)  # d deleted; c and local kept
    assert summary.records == 2  # what job2 wrote
    assert store.record_ids("t1") == ["a", "b", "c", local]
    assert store.get_record("t1", "a") == {
        "id": "a",
        "version": 1,
        "name": "edited, still at the source",
    }
    got = store.get_workbook("wb1")
    assert got is not None
    assert got.tables[0].last_synced_at == SYNCED_AT
    assert got.tables[0].locked_by is None
    assert got.tables[1].locked_by == "job2"  # only the finished table is released
    assert got.tables[1].last_synced_at is None
    assert store.locks_held_by("job2") == ["t2"]
    assert store.get_checkpoint("t1", "job2") is None


def test_finish_sync_of_a_job_without_the_lock_changes_nothing(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    _write(store, "t1", "job1", _records("a", "b"), TableCheckpoint(pages=1))

    with pytest.raises(LockLostError):
        store.finish_sync(Lease("t1", "job2", 1), SYNCED_AT)

    assert store.locks_held_by("job1") == ["t1"]
    assert store.record_ids("t1") == ["a", "b"]
    got = store.get_workbook("wb1")
    assert got is not None
    assert got.tables[0].last_synced_at is None


def test_a_taken_over_holder_can_no_longer_write_or_finish(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    old = _lease(store, "t1", "job1")
    store.write_page(old, _records("a"), TableCheckpoint(cursor="p2", records=1, pages=1))
    assert store.lock_tables(["t1"], "job2", take_over={"t1": "job1"}) == {}
    new = store.lease("t1", "job2")

    with pytest.raises(LockLostError):
        store.write_page(old, _records("zombie"), TableCheckpoint(cursor="p3", pages=2))
    with pytest.raises(LockLostError):
        store.finish_sync(old, SYNCED_AT)
    with pytest.raises(LockLostError):
        store.lease("t1", "job1")
    store.write_page(new, _records("a", "b"), TableCheckpoint(cursor=None, records=2, pages=1))

    assert store.record_ids("t1") == ["a", "b"]
    assert store.finish_sync(new, SYNCED_AT).records == 2


def test_a_new_lease_fences_the_same_jobs_earlier_attempt(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    first = _lease(store, "t1", "job1")
    second = store.lease("t1", "job1")  # a retry while the first attempt still runs
    assert second.generation > first.generation

    with pytest.raises(LockLostError):
        store.write_page(first, _records("x"), TableCheckpoint(pages=1))
    store.write_page(second, _records("a"), TableCheckpoint(pages=1))
    assert store.record_ids("t1") == ["a"]


def test_takeover_only_replaces_the_named_stale_holder(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2"))
    assert store.lock_tables(["t1"], "job1") == {}
    assert store.lock_tables(["t2"], "job2") == {}

    held = store.lock_tables(["t1", "t2"], "job3", take_over={"t1": "job1"})

    assert _holders(held) == {"t2": "job2"}
    assert held["t2"].age >= 0
    assert store.locks_held_by("job1") == ["t1"]  # all or nothing: job1 keeps t1
    assert store.locks_held_by("job3") == []


def test_finish_sync_answers_the_same_when_called_again(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    lease = _lease(store, "t1", "job1")
    store.write_page(lease, _records("a", "b", "b"), TableCheckpoint(cursor=None, pages=1))

    first = store.finish_sync(lease, SYNCED_AT)
    again = store.finish_sync(lease, SYNCED_AT)  # a retry after a lost answer

    assert first.records == again.records == 2
    assert store.record_ids("t1") == ["a", "b"]


def test_unlock_counts_what_the_job_wrote_and_drops_its_checkpoint(store: Store) -> None:
    store.put_workbook(_workbook("t1", "t2"))
    _write(store, "t1", "job1", _records("a", "b", "c"), TableCheckpoint(cursor="p2", pages=1))
    assert store.lock_tables(["t2"], "job1") == {}

    assert store.unlock_tables(["t1", "t2"], "job1") == {"t1": 3, "t2": 0}
    assert store.get_checkpoint("t1", "job1") is None
    assert store.locks_held_by("job1") == []


def _unencodable(rid: str) -> Record:
    return Record(rid, {"when": object()})


def _null_id(rid: str) -> Record:
    return Record(cast(str, None), {"id": rid})


@pytest.mark.parametrize(
    ("bad_record", "error"),
    [
        pytest.param(_unencodable, TypeError, id="fields-not-json"),
        pytest.param(
            _null_id, (sqlite3.IntegrityError, psycopg.errors.NotNullViolation), id="null-id"
        ),
    ],
)
def test_a_page_failing_mid_write_changes_nothing(
    store: Store, bad_record: Any, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    store.put_workbook(_workbook("t1"))
    first = TableCheckpoint(cursor="p2", records=3, pages=1)
    _write(store, "t1", "job1", _records("a", "b", "c"), first)
    before = _fields(store, "t1")
    page = [
        *_records("a", "d", version=2),
        bad_record("e"),
        *_records("f", version=2),
    ]

    with pytest.raises(error):
        _write(store, "t1", "job1", page, TableCheckpoint(cursor="p3", records=6, pages=2))

    assert _fields(store, "t1") == before
    assert store.get_checkpoint("t1", "job1") == first
    # The store is still usable on the same thread after the rollback.
    _write(store, "t1", "job1", _records("d"), TableCheckpoint(cursor="p3", pages=2))
    assert store.record_ids("t1") == ["a", "b", "c", "d"]


def test_a_checkpoint_that_cannot_be_saved_leaves_the_page_unwritten(store: Store) -> None:
    store.put_workbook(_workbook("t1"))
    first = TableCheckpoint(cursor="p2", records=1, pages=1)
    _write(store, "t1", "job1", _records("a"), first)
    # Beyond a 64-bit integer: both stores refuse it after the page's records are sent.
    unsavable = TableCheckpoint(cursor="p3", records=2**63, pages=2)

    with pytest.raises((OverflowError, psycopg.errors.NumericValueOutOfRange)):
        _write(store, "t1", "job1", _records("a", "b", version=2), unsavable)

    assert _fields(store, "t1") == {"a": {"id": "a", "version": 1, "name": "na"}}
    assert store.get_checkpoint("t1", "job1") == first


def test_pages_written_from_many_threads(store: Store) -> None:
    tables = [f"t{i}" for i in range(4)]
    store.put_workbook(_workbook(*tables))

    def download(table_id: str) -> None:
        for page in range(5):
            ids = [f"{page:02d}-{i:04d}" for i in range(200)]
            _write(store, table_id, "job1", _records(*ids), TableCheckpoint(pages=page + 1))

    with ThreadPoolExecutor(len(tables)) as pool:
        list(pool.map(download, tables))

    assert [store.count_records(t) for t in tables] == [1000] * 4
    assert store.get_checkpoint("t3", "job1") == TableCheckpoint(pages=5)


# --- store-specific ----------------------------------------------------------------------


def test_store_url_never_shows_a_password(tmp_path: Path) -> None:
    url = "postgresql://spinner:s3cret@db.internal:5433/spinner?sslmode=require&password=x2"
    assert PostgresStore(url).url == "postgresql://spinner@db.internal:5433/spinner?sslmode=require"
    assert "s3cret" not in redact_url("host=db user=spinner password=s3cret dbname=spinner")
    assert redact_url("postgresql://db/spinner") == "postgresql://db/spinner"
    assert SqliteStore(tmp_path / "x.db").url == f"sqlite:///{tmp_path / 'x.db'}"


def test_postgres_timestamps_come_back_aware_utc(request: pytest.FixtureRequest) -> None:
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        opened = open_store(url)
        try:
            opened.put_workbook(_workbook("t1"))
            _finish(opened, "t1", "job1", SYNCED_AT)
            got = opened.get_workbook("wb1")
            assert got is not None
            assert got.tables[0].last_synced_at == SYNCED_AT
            assert got.tables[0].last_synced_at.utcoffset() == timedelta(0)
            assert got.tables[0].last_synced_at.tzinfo is not None
            assert SYNCED_AT.astimezone(UTC) == got.tables[0].last_synced_at
        finally:
            opened.close()
