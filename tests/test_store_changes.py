"""Local edits and their change state, on SQLite and a real PostgreSQL.

What a publish relies on: one change per record with the coalescing rules, the base
captured at the first edit, the dirty flag cleared only when the source confirms, every
change-state write fenced on the job's lease, and downloads that neither overwrite
local edits nor bring back a record deleted locally.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from spinner_jobs.connectors.base import Record
from spinner_jobs.core.changes import Change, ChangeOp, ChangeState, is_local_id
from spinner_jobs.core.errors import (
    ChangeStateError,
    InvalidEditError,
    LockLostError,
    RecordNotFoundError,
    UnknownTableError,
)
from spinner_jobs.core.models import Table, TableCheckpoint, Workbook
from spinner_jobs.store import Lease, Store

T = "tbl_1"


@pytest.fixture
def store(any_store: Store) -> Store:
    """A store of each kind with one table holding records a, b, c (version 1)."""
    any_store.put_workbook(
        Workbook(
            id="wb_1",
            organization_id="org_1",
            name="wb",
            tables=[Table(id=T, workbook_id="wb_1", name="t", connector="http", config={})],
        )
    )
    download(any_store, "dl_0", rec("a"), rec("b"), rec("c"))
    return any_store


def rec(rid: str, version: int = 1, **extra: Any) -> Record:
    return Record(rid, {"id": rid, "version": version, "name": f"n{rid}", **extra})


def download(store: Store, job_id: str, *records: Record) -> None:
    """A whole download of the table by ``job_id``: one page, then finish."""
    assert store.lock_tables([T], job_id) == {}
    lease = store.lease(T, job_id)
    store.write_page(lease, list(records), TableCheckpoint(cursor=None, records=1, pages=1))
    store.finish_sync(lease, datetime.now(UTC))


def publish_lease(store: Store, job_id: str = "pub_1") -> Lease:
    assert store.lock_tables([T], job_id) == {}
    return store.lease(T, job_id)


def changes(store: Store, *states: ChangeState) -> list[Change]:
    return store.list_changes(T, states or None)


def only_change(store: Store) -> Change:
    found = changes(store)
    assert len(found) == 1, found
    return found[0]


# --- coalescing ------------------------------------------------------------------------------


def test_updates_merge_into_one_change_whose_base_is_the_download(store: Store) -> None:
    store.update_record(T, "a", {"name": "first"})
    store.update_record(T, "a", {"name": "second", "extra": 1})

    change = only_change(store)
    assert (change.op, change.state, change.remote_id) == (ChangeOp.UPDATE, "pending", "a")
    assert change.fields == {"name": "second", "extra": 1}
    assert change.base == {"id": "a", "version": 1, "name": "na"}
    assert change.idempotency_key == change.change_id
    assert store.get_record(T, "a") == {"id": "a", "version": 1, "name": "second", "extra": 1}


def test_create_then_update_stays_one_create(store: Store) -> None:
    local = store.create_record(T, {"name": "new"})
    store.update_record(T, local, {"qty": 2})

    assert is_local_id(local)
    change = only_change(store)
    assert (change.op, change.remote_id, change.base) == (ChangeOp.CREATE, local, None)
    assert change.fields == {"name": "new", "qty": 2}
    assert store.get_record(T, local) == {"name": "new", "qty": 2}


def test_create_then_delete_leaves_nothing(store: Store) -> None:
    local = store.create_record(T, {"name": "new"})
    store.delete_record(T, local)

    assert changes(store) == []
    assert store.get_record(T, local) is None
    assert store.record_ids(T) == ["a", "b", "c"]


def test_update_then_delete_becomes_a_delete_with_the_first_base(store: Store) -> None:
    store.update_record(T, "b", {"name": "edited"})
    store.delete_record(T, "b")

    change = only_change(store)
    assert (change.op, change.remote_id, change.fields) == (ChangeOp.DELETE, "b", {})
    assert change.base == {"id": "b", "version": 1, "name": "nb"}
    assert store.get_record(T, "b") is None
    with pytest.raises(RecordNotFoundError, match="has no record 'b'"):
        store.update_record(T, "b", {"name": "again"})


def test_bad_edits_are_typed_errors_and_write_nothing(store: Store) -> None:
    with pytest.raises(UnknownTableError, match="'nope' is not in the catalog"):
        store.update_record("nope", "a", {"x": 1})
    with pytest.raises(UnknownTableError):
        store.create_record("nope", {"x": 1})
    with pytest.raises(RecordNotFoundError):
        store.update_record(T, "zz", {"x": 1})
    with pytest.raises(RecordNotFoundError):
        store.delete_record(T, "zz")
    with pytest.raises(InvalidEditError, match="string keys"):
        store.update_record(T, "a", {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidEditError, match="JSON object"):
        store.create_record(T, ["x"])  # type: ignore[arg-type]

    assert changes(store) == []
    assert store.record_ids(T) == ["a", "b", "c"]
    assert store.get_record(T, "a") == {"id": "a", "version": 1, "name": "na"}


# --- downloads keep local edits --------------------------------------------------------------


def test_a_download_keeps_edits_and_does_not_bring_back_a_local_delete(store: Store) -> None:
    store.update_record(T, "a", {"name": "mine"})
    store.delete_record(T, "b")
    lease = publish_lease(store)
    delete = next(c for c in changes(store) if c.op is ChangeOp.DELETE)
    assert store.mark_change_sent(lease, delete.change_id) is not None
    store.unlock_tables([T], "pub_1")

    download(store, "dl_1", rec("a", 2), rec("b", 2), rec("c", 2))

    assert store.record_ids(T) == ["a", "c"]  # b: its delete is sent, not confirmed
    assert store.get_record(T, "a") == {"id": "a", "version": 1, "name": "mine"}
    assert store.get_record(T, "c") == {"id": "c", "version": 2, "name": "nc"}


def test_a_settled_delete_no_longer_holds_the_record_back(store: Store) -> None:
    store.delete_record(T, "b")
    lease = publish_lease(store)
    change = only_change(store)
    store.mark_change_sent(lease, change.change_id)
    store.settle_change(lease, change.change_id, ChangeState.CONFLICT, "moved at the source")
    store.unlock_tables([T], "pub_1")

    download(store, "dl_1", rec("a"), rec("b", 3), rec("c"))

    assert store.get_record(T, "b") == {"id": "b", "version": 3, "name": "nb"}
    # Deleting it again starts over from what was downloaded now.
    store.delete_record(T, "b")
    again = only_change(store)
    assert again.change_id != change.change_id
    assert (again.op, again.state) == (ChangeOp.DELETE, ChangeState.PENDING)
    assert again.base == {"id": "b", "version": 3, "name": "nb"}


# --- publishing steps ------------------------------------------------------------------------


def test_dirty_is_cleared_only_when_the_source_confirms(store: Store) -> None:
    store.update_record(T, "a", {"name": "mine"})
    lease = publish_lease(store)
    change = only_change(store)

    sent = store.mark_change_sent(lease, change.change_id)
    assert sent is not None
    assert (sent.state, sent.job_id, sent.fields) == ("sent", "pub_1", {"name": "mine"})
    store.unlock_tables([T], "pub_1")
    download(store, "dl_1", rec("a", 2), rec("b"), rec("c"))
    assert store.get_record(T, "a") == {"id": "a", "version": 1, "name": "mine"}  # still dirty

    lease = publish_lease(store, "pub_2")
    store.confirm_change(lease, change.change_id, "a", {"id": "a", "version": 3, "name": "mine"})
    store.confirm_change(lease, change.change_id, "a", None)  # again: nothing changes
    store.unlock_tables([T], "pub_2")
    assert store.get_record(T, "a") == {"id": "a", "version": 3, "name": "mine"}
    assert changes(store, ChangeState.CONFIRMED)[0].job_id == "pub_2"

    download(store, "dl_2", rec("a", 4), rec("b"), rec("c"))
    assert store.get_record(T, "a") == {"id": "a", "version": 4, "name": "na"}  # clean now


def test_a_confirmed_create_takes_the_id_its_source_assigned(store: Store) -> None:
    local = store.create_record(T, {"name": "new"})
    lease = publish_lease(store)
    change = only_change(store)
    store.mark_change_sent(lease, change.change_id)
    with pytest.raises(ChangeStateError, match="without the id its source assigned"):
        store.confirm_change(lease, change.change_id, None, None)

    store.confirm_change(lease, change.change_id, "r9", {"id": "r9", "version": 1})

    assert store.get_record(T, local) is None
    assert store.get_record(T, "r9") == {"id": "r9", "version": 1, "name": "new"}
    assert only_change(store).remote_id == "r9"
    store.unlock_tables([T], "pub_1")
    download(store, "dl_1", rec("a"), rec("b"), rec("c"), rec("r9", 2))
    assert store.get_record(T, "r9") == {"id": "r9", "version": 2, "name": "nr9"}


def test_a_create_confirmed_after_a_download_brought_it_is_not_doubled(store: Store) -> None:
    # The source created it, the job was lost before confirming and gave up; a download
    # brought the record under its real id; a later publish sends the create again
    # (same key: the source answers the same id) and confirms it.
    local = store.create_record(T, {"name": "new"})
    lease = publish_lease(store)
    change = only_change(store)
    store.mark_change_sent(lease, change.change_id)
    store.unlock_tables([T], "pub_1")
    download(store, "dl_1", rec("a"), rec("b"), rec("c"), rec("r9"))
    assert store.record_ids(T) == ["a", "b", "c", local, "r9"]

    lease = publish_lease(store, "pub_2")
    store.confirm_change(lease, change.change_id, "r9", {"id": "r9", "version": 1})

    assert store.record_ids(T) == ["a", "b", "c", "r9"]
    assert store.get_record(T, "r9") == {"id": "r9", "version": 1, "name": "new"}


def test_a_confirmed_delete_removes_the_record_for_good(store: Store) -> None:
    store.delete_record(T, "c")
    lease = publish_lease(store)
    change = only_change(store)
    store.mark_change_sent(lease, change.change_id)
    store.confirm_change(lease, change.change_id, "c", None)
    store.unlock_tables([T], "pub_1")

    download(store, "dl_1", rec("a"), rec("b"))
    assert store.record_ids(T) == ["a", "b"]
    assert only_change(store).state is ChangeState.CONFIRMED


def test_an_edit_while_a_change_is_in_flight_goes_after_it(store: Store) -> None:
    local = store.create_record(T, {"name": "new"})
    lease = publish_lease(store)
    create = only_change(store)
    store.mark_change_sent(lease, create.change_id)

    store.update_record(T, local, {"qty": 5})  # the sent create cannot take it any more

    later = changes(store, ChangeState.PENDING)
    assert len(later) == 1
    assert (later[0].op, later[0].fields) == (ChangeOp.UPDATE, {"qty": 5})
    store.confirm_change(lease, create.change_id, "r7", {"id": "r7", "version": 1, "qty": 0})
    update = changes(store, ChangeState.PENDING)[0]
    assert update.remote_id == "r7"
    assert update.base == {"id": "r7", "version": 1, "name": "new", "qty": 0}
    assert store.get_record(T, "r7") == {"id": "r7", "version": 1, "name": "new", "qty": 5}
    store.unlock_tables([T], "pub_1")
    download(store, "dl_1", rec("a"), rec("b"), rec("c"), rec("r7", 2))
    assert (store.get_record(T, "r7") or {})["qty"] == 5  # still dirty: its update waits


def test_an_edit_after_a_conflict_starts_a_fresh_change_carrying_the_edits(store: Store) -> None:
    store.update_record(T, "a", {"name": "mine"})
    lease = publish_lease(store)
    first = only_change(store)
    store.mark_change_sent(lease, first.change_id)
    store.settle_change(lease, first.change_id, ChangeState.CONFLICT, "version moved")
    assert only_change(store).error == "version moved"

    store.update_record(T, "a", {"qty": 1})

    fresh = only_change(store)
    assert fresh.change_id != first.change_id  # a new idempotency key
    assert (fresh.state, fresh.op) == (ChangeState.PENDING, ChangeOp.UPDATE)
    assert fresh.fields == {"name": "mine", "qty": 1}
    assert fresh.base == first.base


def test_an_edit_after_a_failed_create_is_a_create_again(store: Store) -> None:
    local = store.create_record(T, {"name": "bad"})
    lease = publish_lease(store)
    first = only_change(store)
    store.mark_change_sent(lease, first.change_id)
    store.settle_change(lease, first.change_id, ChangeState.FAILED, "422: name invalid")

    store.update_record(T, local, {"name": "good"})

    fresh = only_change(store)
    assert (fresh.op, fresh.remote_id, fresh.fields) == (ChangeOp.CREATE, local, {"name": "good"})


def test_settled_changes_are_not_sent_again(store: Store) -> None:
    store.update_record(T, "a", {"name": "x"})
    lease = publish_lease(store)
    change = only_change(store)
    store.mark_change_sent(lease, change.change_id)
    store.settle_change(lease, change.change_id, ChangeState.FAILED, "400")

    assert store.mark_change_sent(lease, change.change_id) is None
    with pytest.raises(ChangeStateError, match="is failed"):
        store.confirm_change(lease, change.change_id, "a", None)
    with pytest.raises(ChangeStateError, match="is failed"):
        store.settle_change(lease, change.change_id, ChangeState.CONFLICT, "again")
    with pytest.raises(ValueError, match="conflict or failed"):
        store.settle_change(lease, change.change_id, ChangeState.CONFIRMED, None)


@pytest.mark.parametrize("step", ["mark", "confirm", "settle"])
def test_change_state_writes_are_fenced_on_the_lease(store: Store, step: str) -> None:
    store.update_record(T, "a", {"name": "mine"})
    stale = publish_lease(store)
    change = only_change(store)
    if step != "mark":
        store.mark_change_sent(stale, change.change_id)
    store.lease(T, "pub_1")  # a newer attempt of the job: the stale one is fenced out
    before = (changes(store), store.get_record(T, "a"))

    calls: dict[str, Callable[[], object]] = {
        "mark": lambda: store.mark_change_sent(stale, change.change_id),
        "confirm": lambda: store.confirm_change(stale, change.change_id, "a", {"version": 2}),
        "settle": lambda: store.settle_change(stale, change.change_id, ChangeState.FAILED, "x"),
    }
    with pytest.raises(LockLostError):
        calls[step]()

    assert (changes(store), store.get_record(T, "a")) == before


def test_counts_per_state_and_per_job(store: Store) -> None:
    for rid in ("a", "b", "c"):
        store.update_record(T, rid, {"name": "x"})
    lease = publish_lease(store)
    listed = changes(store)
    store.mark_change_sent(lease, listed[0].change_id)
    store.confirm_change(lease, listed[0].change_id, "a", None)
    store.mark_change_sent(lease, listed[1].change_id)

    counts = store.change_counts(T)
    assert counts == {"pending": 1, "sent": 1, "confirmed": 1, "conflict": 0, "failed": 0}
    assert store.change_counts(T, "another_job")[ChangeState.CONFIRMED] == 0
    assert store.change_counts(T, "pub_1")[ChangeState.CONFIRMED] == 1
    assert [c.seq for c in listed] == sorted(c.seq for c in listed)
    page = store.list_changes(T, [ChangeState.PENDING, ChangeState.SENT], after=listed[0].seq)
    assert [c.remote_id for c in page] == ["b", "c"]
    assert [c.remote_id for c in store.list_changes(T, None, limit=1)] == ["a"]


def test_migrating_again_keeps_changes(store: Store) -> None:
    store.update_record(T, "a", {"name": "x"})
    store.migrate()
    store.migrate()
    assert only_change(store).fields == {"name": "x"}
