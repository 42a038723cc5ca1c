"""API keys: ``sj_<id>_<secret>``, stored as a SHA-256 hash, looked up by id.

The id (12 hex digits) is public: it names the key in listings and logs and finds its
row. The secret is 256 random bits (64 hex digits), so a plain SHA-256 of the whole key
is as good as a slow password hash here: there is nothing to guess from a dictionary.
The key is shown once, when it is created; the store keeps only its hash, compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from spinner_jobs.core.models import ApiKey
from spinner_jobs.store.base import Store

log = structlog.get_logger(__name__)

KEY_PREFIX = "sj"
_KEY = re.compile(r"^sj_([0-9a-f]{12})_([0-9a-f]{64})$")
_ID_BYTES = 6
_SECRET_BYTES = 32
# Compared against when the id is unknown, so both paths take the same time.
_NO_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256 of the whole key, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, or None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def create_api_key(store: Store, organization_id: str, name: str) -> tuple[ApiKey, str]:
    """Make a key for the organization and store its hash.

    Returns:
        The stored record and the key itself (shown once; the store cannot give it back).

    Raises:
        pydantic.ValidationError: the organization id or the name is empty or holds
            control characters.

    """
    for _ in range(5):  # 48-bit ids: a clash is a once-in-a-lifetime event, but be sure
        key_id = secrets.token_hex(_ID_BYTES)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_hex(_SECRET_BYTES)}"
        record = ApiKey(
            id=key_id,
            organization_id=organization_id,
            name=name,
            key_hash=hash_key(key),
            created_at=datetime.now(UTC),
        )
        if store.put_api_key(record):
            log.info(
                "api_key_created", api_key_id=key_id, organization_id=organization_id, name=name
            )
            return record, key
    raise RuntimeError("could not find a free API key id in 5 tries")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking a presented key found: the key, or why it was refused (for the log)."""

    key: ApiKey | None
    reason: str


def verify_api_key(store: Store, presented: str) -> Verdict:
    """Check a presented key against the store (one lookup by id, constant-time compare)."""
    key_id = key_id_of(presented)
    record = store.get_api_key(key_id) if key_id is not None else None
    matches = hmac.compare_digest(
        hash_key(presented), record.key_hash if record is not None else _NO_HASH
    )
    if key_id is None:
        return Verdict(None, "malformed")
    if record is None:
        return Verdict(None, "unknown")
    if not matches:
        return Verdict(None, "wrong_secret")
    if record.revoked_at is not None:
        return Verdict(None, "revoked")
    return Verdict(record, "ok")
