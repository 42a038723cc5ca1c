"""Temporal payload encryption: the codec, the UI codec server, a real job on the dev server."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, JobStatus
from enqueuer.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecServer,
    EncryptionCodec,
    data_converter,
    payload_codec,
)
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import SecretKeyError
from spinner_jobs.core.models import Table, Workbook
from spinner_jobs.store.secrets import Keyring, new_key
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import temporal_enqueuer

KEY = new_key()
TOKEN = "codec-token-3f9a"
UI = "http://localhost:8233"


def _json_payload(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


# --- the codec ---------------------------------------------------------------------------


async def test_codec_round_trips_and_hides_data_and_metadata() -> None:
    codec = payload_codec(SecretStr(KEY))
    assert codec is not None
    plain = _json_payload({"workbook_id": "wb_hidden"})
    [sealed] = await codec.encode([plain])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA].decode() == Keyring.parse(KEY, source="t").current_id
    assert b"wb_hidden" not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [plain]
    # Payloads written before encryption was turned on still decode.
    assert await codec.decode([plain]) == [plain]


async def test_codec_rotation_and_wrong_key() -> None:
    old = payload_codec(SecretStr(KEY))
    assert old is not None
    [sealed] = await old.encode([_json_payload(1)])
    newer = new_key()
    rotated = payload_codec(SecretStr(f"{newer},{KEY}"))
    assert rotated is not None
    assert await rotated.decode([sealed]) == [_json_payload(1)]
    stranger = payload_codec(SecretStr(newer))
    assert stranger is not None
    with pytest.raises(SecretKeyError, match="SPINNER_PAYLOAD_KEY"):
        await stranger.decode([sealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(SecretKeyError, match="does not authenticate"):
        await old.decode([tampered])


def test_no_key_means_the_plain_converter() -> None:
    assert payload_codec(None) is None
    assert data_converter(None).payload_codec is None


# --- the codec server --------------------------------------------------------------------


@pytest.fixture
def codec_server() -> Iterator[CodecServer]:
    codec = payload_codec(SecretStr(KEY))
    assert codec is not None
    server = CodecServer(codec, SecretStr(TOKEN), [UI], host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


def _call(
    url: str, body: Any = None, *, method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, dict(err.headers), json.loads(raw) if raw else None


def _body(*payloads: Payload) -> dict[str, Any]:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


async def test_codec_server_decodes_for_the_ui_with_a_token(codec_server: CodecServer) -> None:
    codec = payload_codec(SecretStr(KEY))
    assert codec is not None
    plain = _json_payload({"secret_field": "visible after decode"})
    [sealed] = await codec.encode([plain])
    ui = {"Origin": UI, "Content-Type": "application/json", "X-Namespace": "default"}

    status, headers, _ = _call(
        f"{codec_server.url}/decode",
        method="OPTIONS",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == UI
    allowed = headers["Access-Control-Allow-Headers"].lower()
    assert "x-namespace" in allowed
    assert "authorization" in allowed
    assert "POST" in headers["Access-Control-Allow-Methods"]

    status, headers, answer = _call(f"{codec_server.url}/decode", _body(sealed), headers=ui)
    assert status == 401
    assert answer == {"error": "send Authorization: Bearer <SPINNER_CODEC_TOKEN>"}
    assert headers["Access-Control-Allow-Origin"] == UI  # so the UI can show the refusal
    status, _, _ = _call(
        f"{codec_server.url}/decode",
        _body(sealed),
        headers={**ui, "Authorization": "Bearer wrong"},
    )
    assert status == 401
    status, _, _ = _call(f"{codec_server.url}/wrong/decode", _body(sealed), headers=ui)
    assert status == 401

    status, headers, answer = _call(
        f"{codec_server.url}/decode",
        _body(sealed),
        headers={**ui, "Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == UI
    assert answer == _body(plain)
    # The UI without a login sends no header: the token is then the endpoint's first segment.
    status, _, answer = _call(f"{codec_server.url}/{TOKEN}/decode", _body(sealed), headers=ui)
    assert status == 200
    assert answer == _body(plain)

    status, _, encoded = _call(
        f"{codec_server.url}/encode",
        _body(plain),
        headers={**ui, "Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200
    [meta] = [p["metadata"] for p in encoded["payloads"]]
    assert base64.b64decode(meta["encoding"]) == ENCODING


def test_codec_server_refuses_other_origins_and_bad_bodies(codec_server: CodecServer) -> None:
    status, headers, _ = _call(
        f"{codec_server.url}/decode",
        method="OPTIONS",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, answer = _call(f"{codec_server.url}/decode", {"nope": 1}, headers=auth)
    assert status == 400
    assert "payloads" in answer["error"]
    status, _, _ = _call(f"{codec_server.url}/other", {"payloads": []}, headers=auth)
    assert status == 404


def test_codec_server_needs_a_token() -> None:
    codec = payload_codec(SecretStr(KEY))
    assert isinstance(codec, EncryptionCodec)
    with pytest.raises(SecretKeyError, match="SPINNER_CODEC_TOKEN"):
        CodecServer(codec, SecretStr(""), [UI])


# --- a real job on the dev server ----------------------------------------------------------


def _clear_search_attributes(history_events: list[Any]) -> list[bytes]:
    """Each event's bytes, without its search attributes (clear on purpose: ids only)."""
    out = []
    for event in history_events:
        copy = type(event)()
        copy.CopyFrom(event)
        if copy.HasField("workflow_execution_started_event_attributes"):
            copy.workflow_execution_started_event_attributes.ClearField("search_attributes")
        if copy.HasField("upsert_workflow_search_attributes_event_attributes"):
            copy.ClearField("upsert_workflow_search_attributes_event_attributes")
        out.append(copy.SerializeToString())
    return out


async def test_a_job_runs_encrypted_and_its_history_shows_nothing_in_clear(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    tmp_path: Path,
    connectors: ConnectorRegistry,
) -> None:
    codec = payload_codec(SecretStr(KEY))
    config = dev_env.client.config()
    config["data_converter"] = data_converter(codec)
    client = Client(**config)
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    workbook_id = "wb_conf1dential"
    store.put_workbook(
        Workbook(
            id=workbook_id,
            organization_id="org_1",
            name="w",
            tables=[
                Table(
                    id="t1",
                    workbook_id=workbook_id,
                    name="name_conf1dential",
                    connector="demo",
                    config={"records": 250, "page_size": 100},
                ),
                Table(
                    id="t2",
                    workbook_id=workbook_id,
                    name="failing",
                    connector="demo",
                    config={"records": 50, "fail_page": 1, "fail_kind": "permanent"},
                ),
            ],
        )
    )
    try:
        async with temporal_enqueuer(client, settings, store, connectors) as enq:
            ref = await enq.enqueue_download_records_job(
                workbook_id,
                Actor(user_id="u_1", organization_id="org_1"),
                metadata={"note": "meta_conf1dential"},
            )
            actor = Actor(user_id="u_1", organization_id="org_1")
            result = await enq.wait(ref.job_id, actor=actor)
            progress = await enq.progress(ref.job_id, actor=actor)
        assert result.status == JobStatus.FAILED
        assert store.count_records("t1") == 250
        assert progress.tables["t1"].name == "name_conf1dential"
        assert "permanent fault" in (progress.tables["t2"].error or "")

        # Fetched without the codec, the history holds no workbook id, table name,
        # metadata or error text in clear; only the search attributes carry ids.
        raw = await dev_env.client.get_workflow_handle(ref.job_id).fetch_history()
        events = _clear_search_attributes(list(raw.events))
        for marker in (b"conf1dential", b"meta_", b"fail_page"):
            assert not [e for e in events if marker in e], marker
        assert not [e for e in events if b"permanent fault" in e]
        assert any(b"binary/encrypted" in e for e in events)
        # The memo too.
        described = await dev_env.client.get_workflow_handle(ref.job_id).describe()
        assert b"meta_conf1dential" not in described.raw_description.SerializeToString()
        assert ENCODING in b"".join(
            p.metadata["encoding"]
            for p in described.raw_description.workflow_execution_info.memo.fields.values()
        )
    finally:
        store.close()
