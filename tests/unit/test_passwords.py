from __future__ import annotations

from app.services import passwords


def test_hash_uses_bcrypt_cost_10_and_checks():
    hashed = passwords.hash_password("correct horse", rounds=10)
    assert hashed.startswith("$2b$10$")
    assert passwords.check_password("correct horse", hashed)
    assert not passwords.check_password("correct horsE", hashed)


def test_bytes_past_72_still_count():
    base = "a" * 72
    hashed = passwords.hash_password(base + "b", rounds=4)
    assert passwords.check_password(base + "b", hashed)
    assert not passwords.check_password(base, hashed)
    assert not passwords.check_password(base + "c", hashed)


def test_length_rules():
    assert passwords.password_problem("1234567") == "must be at least 8 characters"
    assert passwords.password_problem("12345678") is None
    assert passwords.password_problem("x" * 1024) is None
    assert passwords.password_problem("x" * 1025) == "must be at most 1024 characters"
    assert not passwords.check_password("x" * 5000, passwords.hash_password("x" * 8, rounds=4))


def test_unknown_account_still_runs_bcrypt_and_fails():
    assert passwords.check_password("anything at all", None) is False
