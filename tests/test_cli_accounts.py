"""The CLI's account commands and validated workbook files, run as a user runs them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from spinner_jobs.store import open_store
from spinner_jobs.store.secrets import Keyring

SECRET = "tok-cli-91c2-very-secret"
CLI = str(Path(sys.executable).parent / "spinner-jobs")


def run(
    data: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    environ.update({"SPINNER_DATA_DIR": str(data), "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, text=True, env=environ, timeout=60
    )


def stored_secrets(data: Path) -> list[str]:
    with sqlite3.connect(data / "spinner.db") as conn:
        return [r[0] for r in conn.execute("SELECT secret FROM connector_accounts")]


def test_account_create_reads_stdin_and_list_never_shows_the_secret(tmp_path: Path) -> None:
    created = run(
        tmp_path, "account", "create", "acct_1", "--org", "org_1", "--auth", "bearer", stdin=SECRET
    )
    assert created.returncode == 0, created.stdout + created.stderr
    assert SECRET not in created.stdout + created.stderr
    [raw] = stored_secrets(tmp_path)
    assert raw.startswith("enc:v1:")
    assert SECRET not in raw

    other = run(
        tmp_path,
        "account",
        "create",
        "acct_2",
        "--org",
        "org_2",
        "--auth",
        "api_key",
        "--header",
        "X-Token",
        "--secret-env",
        "MY_TOKEN",
        env={"MY_TOKEN": "env-secret-value"},
    )
    assert other.returncode == 0, other.stdout + other.stderr

    listed = run(tmp_path, "account", "list")
    assert listed.returncode == 0, listed.stderr
    assert "acct_1" in listed.stdout
    assert "org_1" in listed.stdout
    assert "bearer" in listed.stdout
    assert "X-Token" in listed.stdout
    assert SECRET not in listed.stdout
    assert "env-secret-value" not in listed.stdout
    only = run(tmp_path, "account", "list", "--org", "org_2")
    assert "acct_2" in only.stdout
    assert "acct_1" not in only.stdout


def test_account_create_refuses_an_empty_secret_and_a_secret_option(tmp_path: Path) -> None:
    empty = run(tmp_path, "account", "create", "a", "--org", "o", "--auth", "bearer", stdin="")
    assert empty.returncode != 0
    assert "no secret on stdin" in empty.stdout + empty.stderr
    argv = run(
        tmp_path, "account", "create", "a", "--org", "o", "--auth", "bearer", "--secret", "x"
    )
    assert argv.returncode != 0
    assert not (tmp_path / "spinner.db").exists() or stored_secrets(tmp_path) == []


def test_account_rekey_moves_every_secret_to_the_current_key(tmp_path: Path) -> None:
    run(tmp_path, "account", "create", "a", "--org", "o", "--auth", "bearer", stdin=SECRET)
    old = (tmp_path / "secret.key").read_text().strip()
    new = run(tmp_path, "new-key").stdout.strip()
    rotated = {"SPINNER_SECRET_KEY": f"{new},{old}"}
    result = run(tmp_path, "account", "rekey", env=rotated)
    assert result.returncode == 0, result.stdout + result.stderr
    [raw] = stored_secrets(tmp_path)
    assert raw.split(":")[2] == Keyring.parse(new, source="test").current_id
    store = open_store(f"sqlite:///{tmp_path / 'spinner.db'}", secret_key=SecretStr(new))
    account = store.get_account("a")
    store.close()
    assert account is not None
    assert account.secret.get_secret_value() == SECRET


def _workbook_file(tmp_path: Path, **table: Any) -> Path:
    config = {
        "base_url": "https://api.example.com",
        "path": "items",
        "paginator": {"type": "cursor", "cursor_path": "next"},
    }
    body = {
        "id": "wb_file",
        "organization_id": "org_1",
        "name": "From a file",
        "tables": [
            {
                "id": "tbl_items",
                "workbook_id": "wb_file",
                "name": "items",
                "connector": "http",
                "config": config,
                **table,
            }
        ],
    }
    path = tmp_path / "wb.json"
    path.write_text(json.dumps(body))
    return path


def _workbook_ids(data: Path) -> list[str]:
    if not (data / "spinner.db").exists():
        return []
    with sqlite3.connect(data / "spinner.db") as conn:
        return [r[0] for r in conn.execute("SELECT id FROM workbooks")]


def test_create_workbook_from_file_validates_every_table(tmp_path: Path) -> None:
    bad = _workbook_file(
        tmp_path, config={"base_url": "https://api.example.com", "paginator": "nonsense"}
    )
    result = run(tmp_path, "create-workbook", "--from-file", str(bad))
    assert result.returncode == 1
    assert "tbl_items" in result.stdout
    assert "paginator" in result.stdout
    assert _workbook_ids(tmp_path) == []

    unknown = _workbook_file(tmp_path, connector="ftp")
    result = run(tmp_path, "create-workbook", "--from-file", str(unknown))
    assert result.returncode == 1
    assert "unknown connector 'ftp'" in result.stdout
    assert _workbook_ids(tmp_path) == []

    good = _workbook_file(tmp_path)
    result = run(tmp_path, "create-workbook", "--from-file", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _workbook_ids(tmp_path) == ["wb_file"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wb_other"], "WORKBOOK_ID 'wb_other' disagrees"),
        (["--org", "org_2"], "--org 'org_2' disagrees"),
    ],
)
def test_create_workbook_from_file_refuses_disagreeing_id_or_org(
    tmp_path: Path, args: list[str], message: str
) -> None:
    path = _workbook_file(tmp_path)
    result = run(tmp_path, "create-workbook", *args, "--from-file", str(path))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert _workbook_ids(tmp_path) == []
    agreeing = run(
        tmp_path, "create-workbook", "wb_file", "--org", "org_1", "--from-file", str(path)
    )
    assert agreeing.returncode == 0, agreeing.stdout + agreeing.stderr


def test_create_workbook_from_file_refuses_another_orgs_account(tmp_path: Path) -> None:
    run(tmp_path, "account", "create", "acct_b", "--org", "org_2", "--auth", "bearer", stdin=SECRET)
    path = _workbook_file(tmp_path, account_id="acct_b")
    result = run(tmp_path, "create-workbook", "--from-file", str(path))
    assert result.returncode == 1
    assert "connector account 'acct_b' not found for this organization" in result.stdout
    assert _workbook_ids(tmp_path) == []
