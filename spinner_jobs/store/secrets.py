"""Authenticated encryption (AES-256-GCM) of account secrets and Temporal payloads.

A :class:`Keyring` is one or more 32-byte keys, written as a comma-separated list of
base64 strings (``SPINNER_SECRET_KEY``, ``SPINNER_PAYLOAD_KEY``). The first key
encrypts; every key decrypts. A key's id is a fingerprint of the key (8 hex digits of
a SHA-256), stored beside each ciphertext, so keys rotate without naming them: put
the new key first, keep the old one after it until everything is re-encrypted
(``spinner-jobs account rekey``), then drop it.

Each ciphertext is bound to *associated data* saying what it is: for an account
secret, the account id and organization id, so a ciphertext copied onto another
account (or another organization's) fails to decrypt.

Account secrets are stored in one text column as ``enc:v1:<key id>:<base64(nonce ‖
ciphertext ‖ tag)>`` with a random 96-bit nonce. Rows written before encryption
existed (plain text) are still read, with a warning, and are encrypted on the next
write of the account (``account rekey`` rewrites them all).

Without ``SPINNER_SECRET_KEY`` the SQLite store (development, demo, tests) generates a
key on first use and keeps it in ``secret.key`` beside its database file (mode 0600);
the PostgreSQL store refuses to store or read account secrets until the variable is
set, since a key file on one host is no use to workers on others.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import threading
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from spinner_jobs.core.errors import SecretKeyError

log = structlog.get_logger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "secret.key"
_SEALED_PREFIX = "enc:v1:"
_ACCOUNT_PURPOSE = b"spinner-jobs account secret v1\x00"


def new_key() -> str:
    """A fresh random key, base64-encoded (the format of the key settings)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    """The id stored beside ciphertexts: a fingerprint that reveals nothing of the key."""
    return hashlib.sha256(b"spinner-jobs key id\x00" + key).hexdigest()[:8]


class Keyring:
    """AES-GCM keys by id; the first encrypts, all decrypt."""

    def __init__(self, keys: list[bytes], *, source: str) -> None:
        """Hold ``keys`` (32 bytes each, current first).

        Args:
            keys: raw keys, the one that encrypts first.
            source: where the keys came from (a setting or a file), named in errors.

        """
        if not keys:
            raise SecretKeyError(f"{source} holds no key; generate one with `spinner-jobs new-key`")
        self.source = source
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}
        self.current_id = key_id(keys[0])

    @classmethod
    def parse(cls, text: str, *, source: str) -> Keyring:
        """Parse a comma-separated list of base64 keys.

        Raises:
            SecretKeyError: a key is not base64 of exactly 32 bytes.

        """
        keys: list[bytes] = []
        for position, part in enumerate(p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                # Standard or URL-safe alphabet, padding optional.
                normal = part.replace("-", "+").replace("_", "/")
                raw = base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != KEY_BYTES:
                raise SecretKeyError(
                    f"key {position + 1} of {source} is not base64 of {KEY_BYTES} bytes; "
                    "generate one with `spinner-jobs new-key`"
                )
            keys.append(raw)
        return cls(keys, source=source)

    @classmethod
    def from_key_file(cls, path: Path) -> Keyring:
        """The key kept in ``path``, generated there (mode 0600) when the file is missing."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(new_key() + "\n")
            try:
                # A hard link never replaces: when two processes race, the first key wins
                # and both read it back.
                os.link(temp, path)
                log.info("secret_key_file_created", path=str(path))
            except FileExistsError:
                pass
            finally:
                temp.unlink()
        return cls.parse(path.read_text(), source=str(path))

    def has(self, kid: str) -> bool:
        """Whether the key with id ``kid`` is in the ring."""
        return kid in self._ciphers

    def encrypt(self, plaintext: bytes, associated: bytes) -> tuple[str, bytes]:
        """Encrypt under the current key: ``(key id, nonce ‖ ciphertext ‖ tag)``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self.current_id].encrypt(nonce, plaintext, associated)
        return self.current_id, nonce + sealed

    def decrypt(self, kid: str, blob: bytes, associated: bytes) -> bytes:
        """Decrypt ``blob`` sealed under key ``kid``.

        Raises:
            KeyError: no key with that id.
            cryptography.exceptions.InvalidTag: wrong associated data, or altered.

        """
        cipher = self._ciphers[kid]
        return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)


def keyring_from_setting(value: SecretStr | None, *, setting: str) -> Keyring | None:
    """The keyring of a key setting, or None when it is unset or empty."""
    if value is None or not value.get_secret_value().strip():
        return None
    return Keyring.parse(value.get_secret_value(), source=setting)


class AccountSecrets:
    """Seals account secrets for a store, and opens them again.

    Args:
        keyring: keys from ``SPINNER_SECRET_KEY``; None when it is unset.
        key_file: where to keep a generated key when ``keyring`` is None (the SQLite
            store's folder); None refuses to handle secrets without a key.

    """

    def __init__(self, keyring: Keyring | None, key_file: Path | None = None) -> None:
        self._keyring = keyring
        self._key_file = key_file
        self._lock = threading.Lock()

    def _ring(self) -> Keyring:
        if self._keyring is None:
            with self._lock:
                if self._keyring is None:
                    if self._key_file is None:
                        raise SecretKeyError(
                            "SPINNER_SECRET_KEY is not set and this store keeps no key file; "
                            "set it to a key from `spinner-jobs new-key` (the same on every "
                            "worker) to store or read account secrets"
                        )
                    self._keyring = Keyring.from_key_file(self._key_file)
        return self._keyring

    def seal(self, account_id: str, organization_id: str, secret: SecretStr) -> str:
        """The stored form of an account's secret (an empty secret stays empty)."""
        plain = secret.get_secret_value()
        if not plain:
            return ""
        ring = self._ring()
        kid, blob = ring.encrypt(plain.encode(), _associated(account_id, organization_id))
        return f"{_SEALED_PREFIX}{kid}:{base64.b64encode(blob).decode()}"

    def open(self, account_id: str, organization_id: str, stored: str) -> SecretStr:
        """The secret of a stored account row.

        Raises:
            SecretKeyError: the key that sealed it is not configured, or the ciphertext
                does not authenticate for this account.

        """
        if not stored.startswith(_SEALED_PREFIX):
            if stored:
                log.warning(
                    "account_secret_not_encrypted",
                    account_id=account_id,
                    advice="run `spinner-jobs account rekey` to encrypt it",
                )
            return SecretStr(stored)
        kid, _, encoded = stored.removeprefix(_SEALED_PREFIX).partition(":")
        ring = self._ring()
        if not ring.has(kid):
            raise SecretKeyError(
                f"the secret of account {account_id!r} was encrypted under key {kid}, which "
                f"{ring.source} does not hold; add that key to SPINNER_SECRET_KEY "
                "(comma-separated, the current key first) or create the account again"
            )
        try:
            blob = base64.b64decode(encoded, validate=True)
            plain = ring.decrypt(kid, blob, _associated(account_id, organization_id))
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretKeyError(
                f"the stored secret of account {account_id!r} does not authenticate (altered, "
                "or copied from another account); create the account again with "
                "`spinner-jobs account create`"
            ) from None
        return SecretStr(plain.decode())


def sealed_key_id(stored: str) -> str | None:
    """The key id of a stored secret; None for a plain (legacy) or empty one."""
    if not stored.startswith(_SEALED_PREFIX):
        return None
    return stored.removeprefix(_SEALED_PREFIX).partition(":")[0]


def _associated(account_id: str, organization_id: str) -> bytes:
    # JSON keeps the two ids apart whatever characters they hold.
    return _ACCOUNT_PURPOSE + json.dumps([account_id, organization_id]).encode()
