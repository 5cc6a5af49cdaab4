"""Envelope encryption for secrets at rest (webhook secrets, credentials, OAuth tokens).

Each record gets a fresh 256-bit data key; its values are encrypted with AES-256-GCM under that
key, and the data key is wrapped (AES-256-GCM again) by the current key-encryption key
(``Settings.keks[0]``). Any configured KEK still unwraps, so KEKs rotate by adding a new one
first and re-wrapping (``rewrap``) at leisure; the values themselves are never re-encrypted.

The associated data binds every ciphertext to its record id, its owner and a label naming the
field, and every wrapped key to the same record and to the KEK id: a ciphertext copied into
another row, another user's row or another column fails to open. Errors name what failed and
never the secret.

Stored layout: ``wrapped_key`` and each ciphertext are ``version (1 byte) | nonce (12) | AES-GCM
output``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.config import KeyEncryptionKey

VERSION = b"\x01"
NONCE_BYTES = 12


class VaultError(Exception):
    """A sealed value could not be opened (or sealed); the message says which step failed."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


def _aad(kind: str, record_id: uuid.UUID | str, owner_id: uuid.UUID | str, label: str) -> bytes:
    return "|".join(("jobsprint-vault", VERSION.hex(), kind, str(record_id), str(owner_id),
                     label)).encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise VaultError(f"the {what} is missing")
    blob = bytes(blob)
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != VERSION:
        raise VaultError(f"the {what} is malformed (unknown format or truncated)")
    try:
        return AESGCM(key).decrypt(blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:], aad)
    except InvalidTag:
        raise VaultError(f"the {what} failed authentication: it was altered, or it belongs "
                         "to another record, owner or field") from None


class Vault:
    """Seals and opens values with the given KEKs: the first encrypts, every one decrypts."""

    def __init__(self, keks: Sequence[KeyEncryptionKey]) -> None:
        if not keks:
            raise VaultError("no key-encryption key is configured")
        for kek in keks:
            if len(kek.key) != 32:
                raise VaultError(f"key-encryption key {kek.id!r} is not 32 bytes")
        self.keks = tuple(keks)
        self._by_id = {kek.id: kek for kek in self.keks}

    @property
    def current(self) -> KeyEncryptionKey:
        return self.keks[0]

    def _kek(self, kek_id: str) -> KeyEncryptionKey:
        kek = self._by_id.get(kek_id)
        if kek is None:
            raise VaultError(f"key-encryption key {kek_id!r} is not configured "
                             "(JOBSPRINT_KEK must still list every key in use)")
        return kek

    # --- data keys ----------------------------------------------------------------------

    def _wrap(self, data_key: bytes, *, record_id, owner_id) -> tuple[str, bytes]:
        kek = self.current
        return kek.id, _encrypt(kek.key, data_key, _aad("key:" + kek.id, record_id, owner_id, ""))

    def _unwrap(self, kek_id: str, wrapped_key: bytes, *, record_id, owner_id) -> bytes:
        kek = self._kek(kek_id)
        return _decrypt(kek.key, wrapped_key, _aad("key:" + kek.id, record_id, owner_id, ""),
                        "wrapped data key")

    def rewrap(self, kek_id: str, wrapped_key: bytes, *, record_id, owner_id) -> tuple[str, bytes]:
        """The same data key wrapped by the current KEK (after a KEK rotation)."""
        data_key = self._unwrap(kek_id, wrapped_key, record_id=record_id, owner_id=owner_id)
        return self._wrap(data_key, record_id=record_id, owner_id=owner_id)

    def needs_rewrap(self, kek_id: str) -> bool:
        return kek_id != self.current.id

    # --- values -------------------------------------------------------------------------

    def seal(self, plaintext: bytes, *, record_id, owner_id, label: str = "") -> Sealed:
        """Encrypt ``plaintext`` under a fresh data key wrapped by the current KEK."""
        data_key = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = self._wrap(data_key, record_id=record_id, owner_id=owner_id)
        ciphertext = _encrypt(data_key, bytes(plaintext),
                              _aad("value", record_id, owner_id, label))
        return Sealed(kek_id, wrapped, ciphertext)

    def seal_more(self, kek_id: str, wrapped_key: bytes, plaintext: bytes, *, record_id,
                  owner_id, label: str) -> bytes:
        """Another value of the same record under its existing data key (another field)."""
        data_key = self._unwrap(kek_id, wrapped_key, record_id=record_id, owner_id=owner_id)
        return _encrypt(data_key, bytes(plaintext), _aad("value", record_id, owner_id, label))

    def open(self, kek_id: str, wrapped_key: bytes, ciphertext: bytes, *, record_id, owner_id,
             label: str = "") -> bytes:
        data_key = self._unwrap(kek_id, wrapped_key, record_id=record_id, owner_id=owner_id)
        return _decrypt(data_key, ciphertext, _aad("value", record_id, owner_id, label),
                        "ciphertext")


def current() -> Vault:
    """The vault of the running app (its configured KEKs)."""
    from flask import current_app

    vault = current_app.extensions.get("jobsprint.vault")
    if vault is None:
        vault = current_app.extensions.setdefault(
            "jobsprint.vault", Vault(current_app.config["SETTINGS"].keks))
    return vault
