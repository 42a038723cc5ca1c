"""Local edits waiting to go back to their source: changes, their states and outcomes.

A local edit of a record (update fields, create, delete) is kept by the store as one
*change* per record until it is published; edits made before the change is sent
coalesce into it. Publishing moves a change through these states::

    pending ──mark sent──▶ sent ──source confirmed──▶ confirmed   (record no longer dirty)
                            │  └──source refused────▶ conflict | failed
                            └──(worker lost)── sent again, same idempotency key

``confirmed``, ``conflict`` and ``failed`` are settled: no publish sends them again. A
new local edit of a record whose change is in ``conflict`` or ``failed`` starts a fresh
pending change (with a new idempotency key) that carries the unpublished edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from spinner_jobs.core.errors import ChangeStateError, InvalidEditError

LOCAL_ID_PREFIX = "local:"
"""Prefix of the id a record created locally has until its source assigns one."""


def is_local_id(remote_id: str) -> bool:
    """Whether ``remote_id`` is a local id (a record its source has not created yet)."""
    return remote_id.startswith(LOCAL_ID_PREFIX)


class ChangeOp(StrEnum):
    """What a change does at the source."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class ChangeState(StrEnum):
    """Where a change is on its way to the source (see the module docstring)."""

    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    CONFLICT = "conflict"
    FAILED = "failed"


UNSETTLED = (ChangeState.PENDING, ChangeState.SENT)
"""States a publish still has to send (``sent``: again, with the same key)."""

UNCONFIRMED = (ChangeState.PENDING, ChangeState.SENT, ChangeState.CONFLICT, ChangeState.FAILED)
"""States of a change whose record is still dirty."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Change(_Model):
    """One record's local edits as the store keeps them for publishing."""

    change_id: str = Field(description="Unique id; also the change's idempotency key.")
    seq: int = Field(description="Order of creation within the store (publish order).")
    table_id: str
    remote_id: str = Field(description="The record's id; a local id for a create.")
    op: ChangeOp
    fields: dict[str, Any] = Field(
        description="create: the record's fields; update: the changed fields; delete: {}."
    )
    base: dict[str, Any] | None = Field(
        description="The record's fields as last downloaded (None for a create): what a "
        "conflict check compares the source's version with."
    )
    state: ChangeState
    error: str | None = Field(None, description="Why the change is in conflict or failed.")
    job_id: str | None = Field(None, description="The job that last sent or settled it.")
    updated_at: datetime

    @property
    def idempotency_key(self) -> str:
        """The ``Idempotency-Key`` sent with the change: the same on every re-send."""
        return self.change_id


class ChangeOutcome(_Model):
    """What the source made of one change.

    ``confirmed`` carries the record's id at the source (for a create, the one the
    source assigned) and the fields the source returned, if any; ``conflict`` and
    ``failed`` carry the reason. Failures of the source itself (5xx, network) are not
    outcomes: the writer raises a retryable error and the change stays ``sent``.
    """

    state: ChangeState
    remote_id: str | None = None
    fields: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def confirmed(cls, remote_id: str, fields: dict[str, Any] | None = None) -> ChangeOutcome:
        """The source applied the change."""
        return cls(state=ChangeState.CONFIRMED, remote_id=remote_id, fields=fields)

    @classmethod
    def conflict(cls, error: str) -> ChangeOutcome:
        """The record moved at the source since it was downloaded; nothing was written."""
        return cls(state=ChangeState.CONFLICT, error=error)

    @classmethod
    def failed(cls, error: str) -> ChangeOutcome:
        """The source refused this change (a 4xx); other changes are not affected."""
        return cls(state=ChangeState.FAILED, error=error)


class PublishSummary(_Model):
    """What one publish job did to one table, over all its attempts so far."""

    table_id: str
    total: int = Field(description="Changes settled by the job plus those still to send.")
    confirmed: int
    conflicts: int
    failed: int
    attempt_sent: int = Field(0, description="Requests this attempt sent (re-sends included).")


# --- coalescing: the one rule both stores apply to a local edit ----------------------------


class _Pending(NamedTuple):
    op: ChangeOp
    fields: dict[str, Any]
    base: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EditPlan:
    """What one local edit does to the store, worked out by :func:`plan_edit`.

    Attributes:
        record: the record's fields after the edit; None: its row goes.
        change: the record's pending change after the edit (op, fields, base); None:
            no pending change remains (a create deleted before it was sent).
        in_place: id of the pending change to rewrite with ``change``; None: insert
            ``change`` as a new change (when there is one).
        drop: ids of changes to delete (a pending create deleted locally, or a
            conflict/failed change the edit supersedes).
    """

    record: dict[str, Any] | None
    change: _Pending | None
    in_place: str | None
    drop: tuple[str, ...]


def plan_edit(
    op: ChangeOp,
    edit: dict[str, Any],
    remote_id: str,
    record: dict[str, Any] | None,
    dirty: bool,
    latest: Change | None,
) -> EditPlan:
    """Apply the coalescing rules to one edit of one record.

    Args:
        op: the edit: update (merge ``edit``), delete, or create (a new local record).
        edit: the fields given (empty for a delete).
        remote_id: the record's id (its new local id for a create).
        record: the record's stored fields (None for a create).
        dirty: whether the record is dirty.
        latest: the record's latest change that is not confirmed, if any.

    """
    if op is ChangeOp.CREATE:
        return EditPlan(dict(edit), _Pending(ChangeOp.CREATE, dict(edit), None), None, ())
    assert record is not None
    carry: _Pending | None = None
    in_place: str | None = None
    drop: list[str] = []
    base = record
    sent_create = False
    if latest is not None and latest.state is ChangeState.PENDING:
        carry, in_place = _Pending(latest.op, latest.fields, latest.base), latest.change_id
    elif latest is not None and latest.state in (ChangeState.CONFLICT, ChangeState.FAILED):
        drop.append(latest.change_id)  # superseded: the new change gets a new key
        if dirty and latest.op is not ChangeOp.DELETE:
            carry = _Pending(latest.op, latest.fields, latest.base)
    elif latest is not None and latest.state is ChangeState.SENT:
        # In flight: this edit goes after it, based on what it will make of the record
        # (confirming it rebases this change on what the source returned).
        sent_create = latest.op is ChangeOp.CREATE
        base = {**(latest.base or {}), **latest.fields}
    if is_local_id(remote_id) and not sent_create:
        # The source has no such record yet: whatever was edited, it is one create.
        carry = _Pending(ChangeOp.CREATE, dict(record), None)
    elif carry is None:
        # A new change: its base is the record as downloaded (a clean record's fields).
        carry = _Pending(ChangeOp.UPDATE, {}, dict(base))
    if op is ChangeOp.UPDATE:
        change = _Pending(carry.op, {**carry.fields, **edit}, carry.base)
        return EditPlan({**record, **edit}, change, in_place, tuple(drop))
    if carry.op is ChangeOp.CREATE:
        # Never sent: the source never hears of it.
        return EditPlan(None, None, None, (*drop, *([in_place] if in_place else [])))
    return EditPlan(None, _Pending(ChangeOp.DELETE, {}, carry.base), in_place, tuple(drop))


def edit_fields(table_id: str, fields: object) -> tuple[dict[str, Any], str]:
    """``fields`` as a dict and as JSON text.

    Raises:
        InvalidEditError: not a mapping with string keys of JSON values.

    """
    if not isinstance(fields, Mapping):
        kind = type(fields).__name__
        raise InvalidEditError(table_id, f"fields must be a JSON object, not {kind}")
    as_dict = dict(fields)
    try:
        text = orjson.dumps(as_dict).decode()
    except TypeError as exc:  # orjson.JSONEncodeError: non-str keys, unknown types
        raise InvalidEditError(
            table_id, f"fields must have string keys and JSON values ({exc})"
        ) from None
    return as_dict, text


def confirmed_id(change: Change, remote_id: str | None) -> str:
    """The record's id once ``change`` is confirmed: the source's new id for a create.

    Raises:
        ChangeStateError: a create confirmed without the id its source assigned.

    """
    if change.op is not ChangeOp.CREATE:
        return change.remote_id
    if not remote_id or is_local_id(remote_id):
        raise ChangeStateError(
            change.change_id, change.state.value, "confirmed without the id its source assigned"
        )
    return remote_id


def confirmed_fields(
    record: Mapping[str, Any], returned: Mapping[str, Any], later: Sequence[Change]
) -> dict[str, Any]:
    """The record once a change is confirmed: the source's returned fields merged in.

    Fields that a later, unconfirmed change of the record edits keep their local value.
    """
    edited_later = {name for change in later for name in change.fields}
    return {**record, **{k: v for k, v in returned.items() if k not in edited_later}}


def settled_state(state: ChangeState | str) -> ChangeState:
    """``state`` as a settled-with-a-reason state.

    Raises:
        ValueError: ``state`` is not conflict or failed.

    """
    value = ChangeState(state)
    if value not in (ChangeState.CONFLICT, ChangeState.FAILED):
        raise ValueError(f"a change is settled as conflict or failed, not {value}")
    return value
