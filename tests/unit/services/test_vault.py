"""The vault: envelope encryption whose ciphertexts only open in the row, owner and field they
were sealed for, under any configured key-encryption key."""

from __future__ import annotations

import uuid

import pytest

from app.config import KeyEncryptionKey
from app.services.vault import Vault, VaultError

OLD = KeyEncryptionKey("old", b"o" * 32)
NEW = KeyEncryptionKey("new", b"n" * 32)
SECRET = b"sk_live_the-secret-value"


@pytest.fixture
def ids():
    return {"record_id": uuid.uuid4(), "owner_id": uuid.uuid4()}


def test_seal_then_open_round_trips(ids):
    vault = Vault([NEW])
    sealed = vault.seal(SECRET, **ids)
    assert sealed.kek_id == "new"
    assert SECRET not in sealed.ciphertext and SECRET not in sealed.wrapped_key
    assert vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids) == SECRET


def test_every_seal_uses_a_fresh_data_key_and_nonce(ids):
    vault = Vault([NEW])
    one, two = vault.seal(SECRET, **ids), vault.seal(SECRET, **ids)
    assert one.wrapped_key != two.wrapped_key and one.ciphertext != two.ciphertext


def test_the_repr_shows_no_key_material(ids):
    sealed = Vault([NEW]).seal(SECRET, **ids)
    assert "wrapped_key" not in repr(sealed) and "ciphertext" not in repr(sealed)
    assert repr(NEW).count("nnnn") == 0


@pytest.mark.parametrize("moved", ["record_id", "owner_id"])
def test_a_ciphertext_moved_to_another_row_or_owner_fails(ids, moved):
    vault = Vault([NEW])
    sealed = vault.seal(SECRET, **ids)
    elsewhere = {**ids, moved: uuid.uuid4()}
    with pytest.raises(VaultError, match="wrapped data key failed authentication"):
        vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **elsewhere)


def test_a_ciphertext_moved_to_another_field_fails(ids):
    vault = Vault([NEW])
    sealed = vault.seal(SECRET, **ids, label="secret")
    with pytest.raises(VaultError, match="ciphertext failed authentication"):
        vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids,
                   label="previous_secret")


def test_a_ciphertext_paired_with_another_seals_data_key_fails(ids):
    vault = Vault([NEW])
    mine, theirs = vault.seal(SECRET, **ids), vault.seal(b"other", **ids)
    with pytest.raises(VaultError, match="ciphertext failed authentication"):
        vault.open(mine.kek_id, mine.wrapped_key, theirs.ciphertext, **ids)


@pytest.mark.parametrize("part", ["wrapped_key", "ciphertext"])
def test_one_flipped_bit_is_detected(ids, part):
    vault = Vault([NEW])
    sealed = vault.seal(SECRET, **ids)
    blobs = {"wrapped_key": sealed.wrapped_key, "ciphertext": sealed.ciphertext}
    blob = bytearray(blobs[part])
    blob[20] ^= 0x01
    blobs[part] = bytes(blob)
    with pytest.raises(VaultError, match="failed authentication") as caught:
        vault.open(sealed.kek_id, **blobs, **ids)
    assert SECRET.decode() not in str(caught.value)


def test_truncated_or_unknown_formats_are_named(ids):
    vault = Vault([NEW])
    sealed = vault.seal(SECRET, **ids)
    with pytest.raises(VaultError, match="ciphertext is malformed"):
        vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext[:10], **ids)
    with pytest.raises(VaultError, match="wrapped data key is malformed"):
        vault.open(sealed.kek_id, b"\x09" + sealed.wrapped_key[1:], sealed.ciphertext, **ids)
    with pytest.raises(VaultError, match="ciphertext is missing"):
        vault.open(sealed.kek_id, sealed.wrapped_key, None, **ids)


def test_an_unknown_kek_is_named(ids):
    sealed = Vault([OLD]).seal(SECRET, **ids)
    with pytest.raises(VaultError, match="'old' is not configured"):
        Vault([NEW]).open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids)


def test_the_wrong_key_under_the_right_id_fails(ids):
    sealed = Vault([OLD]).seal(SECRET, **ids)
    impostor = KeyEncryptionKey("old", b"x" * 32)
    with pytest.raises(VaultError, match="wrapped data key failed authentication"):
        Vault([impostor]).open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids)


def test_kek_rotation_old_records_open_new_ones_use_the_new_key_and_rewrap(ids):
    sealed = Vault([OLD]).seal(SECRET, **ids)
    rotated = Vault([NEW, OLD])
    assert rotated.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids) == SECRET
    assert rotated.seal(SECRET, **ids).kek_id == "new"
    assert rotated.needs_rewrap("old") and not rotated.needs_rewrap("new")
    kek_id, wrapped = rotated.rewrap(sealed.kek_id, sealed.wrapped_key, **ids)
    assert kek_id == "new"
    assert Vault([NEW]).open(kek_id, wrapped, sealed.ciphertext, **ids) == SECRET


def test_seal_more_adds_a_field_under_the_same_data_key(ids):
    vault = Vault([NEW])
    sealed = vault.seal(b"current", **ids, label="secret")
    previous = vault.seal_more(sealed.kek_id, sealed.wrapped_key, b"previous", **ids,
                               label="previous_secret")
    assert vault.open(sealed.kek_id, sealed.wrapped_key, previous, **ids,
                      label="previous_secret") == b"previous"
    assert vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids,
                      label="secret") == b"current"


def test_a_vault_needs_well_formed_keys():
    with pytest.raises(VaultError, match="no key-encryption key"):
        Vault([])
    with pytest.raises(VaultError, match="'short' is not 32 bytes"):
        Vault([KeyEncryptionKey("short", b"k" * 16)])


def test_empty_and_large_values_round_trip(ids):
    vault = Vault([NEW])
    for value in (b"", bytes(range(256)) * 4096):
        sealed = vault.seal(value, **ids)
        assert vault.open(sealed.kek_id, sealed.wrapped_key, sealed.ciphertext, **ids) == value
