"""Encryption of every payload the engine sends to Temporal, and the UI's codec server.

With ``SPINNER_PAYLOAD_KEY`` set, clients and workers use :func:`data_converter`:
the pydantic JSON converter, then :class:`EncryptionCodec` (AES-256-GCM over the whole
serialized payload, its key id in the metadata, encoding ``binary/encrypted``). That
covers workflow and activity inputs and results, heartbeat details, queries, memos,
user metadata (summaries, current details) and failure details; failure messages and
stack traces are moved into the encrypted attributes as well. Search attributes stay
in clear (the server indexes them): they hold ids only (workbook, user, organization,
job type), never configs, metadata or credentials.

The Web UI cannot decrypt on its own. ``spinner-jobs codec-server`` (:class:`CodecServer`)
serves the remote codec endpoint it calls: ``POST /decode`` and ``POST /encode`` with
``{"payloads": [{"metadata": {name: base64}, "data": base64}]}``, CORS for the UI's
origin, and a bearer token — in an ``Authorization: Bearer <token>`` header or, for
a UI without a login (which sends no header), as the first path segment of the
endpoint: ``--ui-codec-endpoint http://host:8234/<token>``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from spinner_jobs.core.errors import SecretKeyError
from spinner_jobs.store.secrets import Keyring, keyring_from_setting

log = structlog.get_logger(__name__)

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
_ASSOCIATED = b"spinner-jobs temporal payload v1"
_MAX_BODY = 64 * 1024 * 1024


class EncryptionCodec(PayloadCodec):
    """AES-GCM over whole payloads; a payload not encrypted by it passes through decode."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def encode_sync(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload (metadata and data) into a ``binary/encrypted`` one."""
        out = []
        for payload in payloads:
            kid, blob = self.keyring.encrypt(payload.SerializeToString(), _ASSOCIATED)
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: kid.encode()},
                    data=blob,
                )
            )
        return out

    def decode_sync(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt each ``binary/encrypted`` payload; others are returned as they are.

        Raises:
            SecretKeyError: the key a payload was encrypted under is not configured, or
                the payload does not authenticate.

        """
        out = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                out.append(payload)
                continue
            kid = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
            if not self.keyring.has(kid):
                raise SecretKeyError(
                    f"a Temporal payload is encrypted under key {kid!r}, which "
                    f"{self.keyring.source} does not hold; add that key to SPINNER_PAYLOAD_KEY "
                    "(comma-separated, the current key first)"
                )
            try:
                plain = self.keyring.decrypt(kid, payload.data, _ASSOCIATED)
            except InvalidTag:
                raise SecretKeyError(
                    "a Temporal payload does not authenticate (altered in transit or at "
                    "rest); check that workers and clients share SPINNER_PAYLOAD_KEY"
                ) from None
            out.append(Payload.FromString(plain))
        return out

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt (see :meth:`encode_sync`)."""
        return self.encode_sync(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt (see :meth:`decode_sync`)."""
        return self.decode_sync(payloads)


def payload_codec(payload_key: SecretStr | None) -> EncryptionCodec | None:
    """The codec of ``SPINNER_PAYLOAD_KEY``; None when it is unset.

    Raises:
        SecretKeyError: the key setting is malformed.

    """
    keyring = keyring_from_setting(payload_key, setting="SPINNER_PAYLOAD_KEY")
    return EncryptionCodec(keyring) if keyring else None


def data_converter(codec: PayloadCodec | None = None) -> DataConverter:
    """The engine's data converter: pydantic JSON, encrypted by ``codec`` when given."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# --- the Web UI's remote codec endpoint --------------------------------------------------


def payloads_from_json(body: Any) -> list[Payload]:
    """Payloads from the codec endpoint's JSON shape.

    Raises:
        ValueError: the body is not ``{"payloads": [{"metadata": {...}, "data": ...}]}``
            with base64 strings.

    """
    if not isinstance(body, dict) or not isinstance(body.get("payloads"), list):
        raise ValueError('expected {"payloads": [...]}')
    out = []
    for item in body["payloads"]:
        if not isinstance(item, dict):
            raise ValueError("each payload must be an object")
        metadata = item.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("payload metadata must be an object")
        try:
            out.append(
                Payload(
                    metadata={
                        str(k): base64.b64decode(v, validate=True) for k, v in metadata.items()
                    },
                    data=base64.b64decode(item.get("data") or "", validate=True),
                )
            )
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"payload fields must be base64 strings ({exc})") from None
    return out


def payloads_to_json(payloads: Sequence[Payload]) -> dict[str, Any]:
    """The codec endpoint's JSON shape of ``payloads``."""
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


class CodecServer:
    """HTTP server of the Web UI's remote codec endpoint (standard library, threaded).

    Args:
        codec: the payload codec.
        token: bearer token a request must carry (header, or first path segment).
        origins: browser origins allowed by CORS.
        host: listening address.
        port: listening port; 0 picks a free one (see :attr:`port`).

    """

    def __init__(
        self,
        codec: EncryptionCodec,
        token: SecretStr,
        origins: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not token.get_secret_value():
            raise SecretKeyError(
                "the codec server needs a token: set SPINNER_CODEC_TOKEN to a long random string"
            )
        handler = type(
            "Handler",
            (_CodecHandler,),
            {"codec": codec, "token": token.get_secret_value(), "origins": frozenset(origins)},
        )
        self._host = host
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the endpoint (without the token)."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> str:
        """Serve in a background thread; return :attr:`url`."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` is called from another."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class _CodecHandler(BaseHTTPRequestHandler):
    codec: EncryptionCodec
    token: str
    origins: frozenset[str]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # The path may carry the token: log the operation only.
        pass

    def _cors(self) -> dict[str, str]:
        origin = self.headers.get("Origin")
        if origin is None or origin not in self.origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def _send(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**self._cors(), **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _operation(self) -> tuple[str | None, bool]:
        """The operation named by the path (decode/encode) and whether the path holds the token."""
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if not parts or parts[-1] not in ("decode", "encode"):
            return None, False
        prefix = parts[:-1]
        in_path = len(prefix) == 1 and hmac.compare_digest(prefix[0], self.token)
        return parts[-1], in_path if prefix else False

    def do_OPTIONS(self) -> None:
        cors = self._cors()
        self.send_response(204 if cors else 403)
        if cors:
            for name, value in cors.items():
                self.send_header(name, value)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header(
                "Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization"
            )
            self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        operation, token_in_path = self._operation()
        if operation is None:
            self._send(404, {"error": "POST to /decode or /encode"})
            return
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        authorized = token_in_path or (
            scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), self.token)
        )
        if not authorized:
            log.warning("codec_request_refused", operation=operation, reason="no valid token")
            self._send(
                401,
                {"error": "send Authorization: Bearer <SPINNER_CODEC_TOKEN>"},
                {"WWW-Authenticate": "Bearer"},
            )
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(413, {"error": f"body over {_MAX_BODY} bytes"})
            return
        try:
            payloads = payloads_from_json(json.loads(self.rfile.read(length) or b"null"))
            if operation == "decode":
                result = self.codec.decode_sync(payloads)
            else:
                result = self.codec.encode_sync(payloads)
        except (ValueError, json.JSONDecodeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        except SecretKeyError as exc:
            self._send(422, {"error": str(exc)})
            return
        log.info(
            "codec_request",
            operation=operation,
            payloads=len(payloads),
            namespace=self.headers.get("X-Namespace"),
        )
        self._send(200, payloads_to_json(result))
