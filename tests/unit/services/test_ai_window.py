"""The conversation window: token counts and oldest-first truncation at the exact boundary."""

from __future__ import annotations

import pytest

from app.engine import NodeError
from app.services.ai import count_tokens, fit, message_tokens


def msg(role: str, size: int, tag: str = "") -> dict:
    return {"role": role, "content": (tag + "x" * size)[:size]}


def test_tokens_are_a_conservative_three_bytes_each_plus_four_per_message():
    assert count_tokens("") == 0 and count_tokens("abc") == 1 and count_tokens("abcd") == 2
    assert count_tokens("é") == 1  # two bytes
    assert message_tokens(msg("user", 30)) == 14


def test_the_oldest_messages_go_first_exactly_at_the_boundary():
    system, user = msg("system", 30), msg("user", 30)
    history = [msg("user", 30, "1"), msg("assistant", 30, "2"), msg("user", 30, "3"),
               msg("assistant", 30, "4")]
    # window 86 - answer 30 - system 14 - user 14 = 28 = exactly two 14-token messages
    kept = fit(system, history, user, window=86, answer=30)
    assert kept == [system, *history[2:], user]
    # one token less: only the last answer fits, and without its question it goes too
    assert fit(system, history, user, window=85, answer=30) == [system, user]
    assert fit(None, history, user, window=200, answer=30) == [*history, user]


def test_an_answer_whose_question_was_cut_goes_with_it():
    system, user = msg("system", 30), msg("user", 30)
    history = [msg("user", 30, "1"), msg("assistant", 30, "2"), msg("user", 30, "3"),
               msg("assistant", 30, "4")]
    # 42 tokens of room: three messages fit (2, 3, 4), but 2 answers a question that did not
    assert fit(system, history, user, window=100, answer=30) == [system, *history[2:], user]


def test_the_system_prompt_is_never_cut_and_a_prompt_too_big_is_an_error():
    system, user = msg("system", 300), msg("user", 30)
    kept = fit(system, [msg("user", 30)], user, window=140, answer=10)  # 12 left
    assert kept == [system, user]  # history dropped, system kept whole
    with pytest.raises(NodeError, match="needs more than the 100-token window"):
        fit(system, [], user, window=100, answer=10)
