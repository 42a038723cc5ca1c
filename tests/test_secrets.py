"""Account secrets at rest: encrypted, bound to their account, rotatable; kept in their org."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from spinner_jobs.core.errors import AccountConflictError, AccountNotFoundError, SecretKeyError
from spinner_jobs.core.models import ConnectorAccount, Table, Workbook
from spinner_jobs.store import Store, open_store
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.secrets import Keyring, new_key
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import run_sql
from tests.pg import fresh_schema

SECRET = "tok-4b1d-very-secret-value"
KEY_A = new_key()
KEY_B = new_key()

StoreFactory = Callable[[str | None], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def open_with(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the same store (one SQLite file, or one Postgres schema) under a given key."""
    opened: list[Store] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"

        def make(key: str | None) -> Store:
            store = open_store(url, secret_key=SecretStr(key) if key else None)
            opened.append(store)
            return store

        yield make
    else:
        with fresh_schema(request.getfixturevalue("postgres_url")) as pg_url:

            def make(key: str | None) -> Store:
                store = open_store(pg_url, secret_key=SecretStr(key) if key else None)
                opened.append(store)
                return store

            yield make
    for store in opened:
        store.close()


def _raw_secret(store: Store, account_id: str) -> str:
    """The secret column as stored, read with the database's own client."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            return str(
                conn.execute(
                    "SELECT secret FROM connector_accounts WHERE id = ?", (account_id,)
                ).fetchone()[0]
            )
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._conninfo) as conn:
        row = conn.execute(
            "SELECT secret FROM connector_accounts WHERE id = %s", (account_id,)
        ).fetchone()
        assert row is not None
        return str(row[0])


def _account(
    account_id: str = "acct_1", org: str = "org_1", secret: str = SECRET
) -> ConnectorAccount:
    return ConnectorAccount(
        id=account_id, organization_id=org, auth="bearer", secret=SecretStr(secret)
    )


def _workbook(org: str, account_id: str | None, workbook_id: str = "wb_1") -> Workbook:
    return Workbook(
        id=workbook_id,
        organization_id=org,
        name="w",
        tables=[
            Table(
                id=f"{workbook_id}_t",
                workbook_id=workbook_id,
                name="t",
                connector="demo",
                account_id=account_id,
            )
        ],
    )


# --- never printed -----------------------------------------------------------------------


def test_account_secret_is_never_printed() -> None:
    account = _account()
    assert SECRET not in repr(account)
    assert SECRET not in str(account)
    assert SECRET not in account.model_dump_json()
    assert account.secret.get_secret_value() == SECRET


# --- encrypted at rest -------------------------------------------------------------------


def test_secret_is_encrypted_at_rest_and_read_back(open_with: StoreFactory) -> None:
    store = open_with(KEY_A)
    store.put_account(_account())

    raw = _raw_secret(store, "acct_1")
    assert SECRET not in raw
    assert raw.startswith(f"enc:v1:{Keyring.parse(KEY_A, source='t').current_id}:")
    got = store.get_account("acct_1")
    assert got is not None
    assert got.secret.get_secret_value() == SECRET
    # Two writes of the same secret differ (a fresh nonce each time).
    store.put_account(_account())
    assert _raw_secret(store, "acct_1") != raw
    [summary] = store.list_accounts("org_1")
    assert (summary.id, summary.auth) == ("acct_1", "bearer")
    assert summary.key_id == Keyring.parse(KEY_A, source="t").current_id
    assert SECRET not in summary.model_dump_json()


def test_a_secret_moved_to_another_account_does_not_decrypt(open_with: StoreFactory) -> None:
    store = open_with(KEY_A)
    store.put_account(_account("acct_a", "org_a", "secret-of-a"))
    store.put_account(_account("acct_b", "org_b", "secret-of-b"))
    run_sql(
        store,
        "UPDATE connector_accounts SET secret = ? WHERE id = ?",
        _raw_secret(store, "acct_a"),
        "acct_b",
    )
    with pytest.raises(SecretKeyError, match="'acct_b' does not authenticate"):
        store.get_account("acct_b")


def test_reading_under_another_key_names_the_missing_key(open_with: StoreFactory) -> None:
    open_with(KEY_A).put_account(_account())
    other = open_with(KEY_B)
    with pytest.raises(SecretKeyError, match=r"key [0-9a-f]{8}.*SPINNER_SECRET_KEY") as err:
        other.get_account("acct_1")
    assert Keyring.parse(KEY_A, source="t").current_id in str(err.value)


def test_keys_rotate_old_first_then_rekeyed(open_with: StoreFactory) -> None:
    open_with(KEY_A).put_account(_account())
    rotated = open_with(f"{KEY_B},{KEY_A}")
    account = rotated.get_account("acct_1")
    assert account is not None
    assert account.secret.get_secret_value() == SECRET
    rotated.put_account(account)  # what `spinner-jobs account rekey` does
    new_id = Keyring.parse(KEY_B, source="t").current_id
    assert _raw_secret(rotated, "acct_1").startswith(f"enc:v1:{new_id}:")
    only_new = open_with(KEY_B).get_account("acct_1")
    assert only_new is not None
    assert only_new.secret.get_secret_value() == SECRET


def test_plain_rows_of_older_versions_are_read_and_encrypted_on_next_write(
    open_with: StoreFactory,
) -> None:
    store = open_with(KEY_A)
    run_sql(
        store,
        "INSERT INTO connector_accounts VALUES (?, ?, ?, ?, ?)",
        "acct_old",
        "org_1",
        "bearer",
        SECRET,
        "X-API-Key",
    )
    [summary] = store.list_accounts()
    assert summary.key_id is None
    old = store.get_account("acct_old")
    assert old is not None
    assert old.secret.get_secret_value() == SECRET
    store.put_account(old)
    assert SECRET not in _raw_secret(store, "acct_old")
    again = store.get_account("acct_old")
    assert again is not None
    assert again.secret.get_secret_value() == SECRET


def test_malformed_key_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError, match="not base64 of 32 bytes"):
        open_store(f"sqlite:///{tmp_path / 's.db'}", secret_key=SecretStr("short"))


def test_sqlite_without_a_key_keeps_a_generated_key_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'spinner.db'}"
    first = open_store(url)
    first.put_account(_account())
    key_file = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SECRET not in _raw_secret(first, "acct_1")
    first.close()
    # Another process (here: another store) reads it with the same file.
    second = open_store(url)
    account = second.get_account("acct_1")
    second.close()
    assert account is not None
    assert account.secret.get_secret_value() == SECRET
    # The file holds the key that SPINNER_SECRET_KEY would take.
    third = open_store(url, secret_key=SecretStr(key_file.read_text()))
    assert third.get_account("acct_1") == account
    third.close()


def test_postgres_without_a_key_refuses_secrets_but_not_workbooks(postgres_url: str) -> None:
    with fresh_schema(postgres_url) as url:
        store = open_store(url)
        keyed = open_store(url, secret_key=SecretStr(KEY_A))
        try:
            with pytest.raises(SecretKeyError, match="SPINNER_SECRET_KEY is not set"):
                store.put_account(_account())
            # An account without a secret, and workbooks, need no key.
            store.put_account(ConnectorAccount(id="acct_open", organization_id="org_1"))
            store.put_workbook(_workbook("org_1", "acct_open"))
            keyed.put_account(_account("acct_2"))
            with pytest.raises(SecretKeyError, match="SPINNER_SECRET_KEY is not set"):
                store.get_account("acct_2")
        finally:
            store.close()
            keyed.close()


# --- accounts stay in their organization ---------------------------------------------------


def test_put_workbook_refuses_an_account_of_another_org_like_an_unknown_one(
    open_with: StoreFactory,
) -> None:
    store = open_with(KEY_A)
    store.put_account(_account("acct_a", "org_a"))

    with pytest.raises(AccountNotFoundError) as other_org:
        store.put_workbook(_workbook("org_b", "acct_a"))
    assert store.get_workbook("wb_1") is None
    with pytest.raises(AccountNotFoundError) as unknown:
        store.put_workbook(_workbook("org_b", "acct_nope", workbook_id="wb_2"))
    assert str(other_org.value) == str(unknown.value).replace("acct_nope", "acct_a")
    assert store.get_workbook("wb_2") is None

    # Replacing an existing workbook with a foreign account leaves it as it was.
    store.put_account(_account("acct_b", "org_b"))
    store.put_workbook(_workbook("org_b", "acct_b"))
    with pytest.raises(AccountNotFoundError):
        store.put_workbook(_workbook("org_b", "acct_a"))
    kept = store.get_workbook("wb_1")
    assert kept is not None
    assert kept.tables[0].account_id == "acct_b"


def test_an_account_id_of_another_org_cannot_be_taken_over(open_with: StoreFactory) -> None:
    store = open_with(KEY_A)
    store.put_account(_account("acct_a", "org_a", "secret-of-a"))
    with pytest.raises(AccountConflictError, match="'acct_a' is taken"):
        store.put_account(_account("acct_a", "org_b", "secret-of-b"))
    kept = store.get_account("acct_a")
    assert kept is not None
    assert (kept.organization_id, kept.secret.get_secret_value()) == ("org_a", "secret-of-a")
    assert [a.id for a in store.list_accounts("org_b")] == []
