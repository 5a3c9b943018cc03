"""Normalisation: each fold, the fast path against the positional one, and positions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zguard.policy.normalise import Normaliser, default_normaliser


@pytest.fixture(scope="module")
def norm() -> Normaliser:
    return default_normaliser()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("机 密", "机密"),  # whitespace
        ("机\u3000密", "机密"),  # ideographic space
        ("机.密，文-件", "机密文件"),  # punctuation, ASCII and full-width
        ("机♥密$¥", "机密"),  # symbols
        ("机\u200b密\u200c\u200d\u2060\ufeff\u00ad", "机密"),  # zero-width, word joiner, BOM, soft hyphen
        ("机\u202e密", "机密"),  # bidi override
        ("机\U000e0041密", "机密"),  # tag character
        ("机\u0301密", "机密"),  # combining mark
        ("机\ue000密", "机密"),  # private use
        ("机\u3164密", "机密"),  # Hangul filler: a letter that renders as nothing
        ("ｊｉｍｉ", "jimi"),  # full-width
        ("𝐣𝐢𝐦𝐢", "jimi"),  # mathematical bold
        ("jī mì", "jimi"),  # tone marks
        ("CONFIDENTIAL", "confidential"),  # case
        ("Straße", "strasse"),  # case folding, not lower()
        ("сonfidential", "confidential"),  # Cyrillic с
        ("CОNFIDЕNTIAL", "confidential"),  # Cyrillic О and Е
        ("ϲustοmer", "customer"),  # Greek lunate sigma and omicron
        ("ΗΕLLΟ", "hello"),  # Greek capitals: eta reads H
        ("ᴄᴏɴꜰɪᴅᴇɴᴛɪᴀʟ", "confidential"),  # small capitals
        ("機密", "机密"),  # traditional
        ("客戶名單", "客户名单"),
        ("內部代號", "内部代号"),
        ("㊙", "秘"),  # circled ideograph
        ("ﬁnance", "finance"),  # ligature
        ("2024年", "2024年"),  # digits stay
        ("한국어", "한국어"),  # Hangul syllables stay composed
    ],
)
def test_folds(norm: Normaliser, text: str, expected: str) -> None:
    assert norm.normalise(text) == expected
    assert norm.with_positions(text)[0] == expected


def test_positions_point_at_the_original_characters(norm: Normaliser) -> None:
    text = "a 機\u200b密 ﬁ"
    folded, positions = norm.with_positions(text)
    assert folded == "a机密fi"
    assert positions == [0, 2, 4, 6, 6]
    assert [text[i] for i in positions] == ["a", "機", "密", "ﬁ", "ﬁ"]


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=60))
def test_fast_path_agrees_with_positional_path(text: str) -> None:
    norm = default_normaliser()
    folded, positions = norm.with_positions(text)
    assert norm.normalise(text) == folded
    assert len(positions) == len(folded)
    assert positions == sorted(positions)
    assert all(0 <= i < len(text) for i in positions)


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=30))
def test_normalising_twice_changes_nothing(text: str) -> None:
    norm = default_normaliser()
    once = norm.normalise(text)
    assert norm.normalise(once) == once


def test_astral_characters_take_the_table_path(norm: Normaliser) -> None:
    assert norm.normalise("客户🙂名单𠀀") == "客户名单𠀀"  # emoji dropped, an Extension B ideograph kept
    assert norm.normalise("𝐂𝐎𝐃𝐄") == "code"


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=60) | st.text(" .,机密ﬁß🙂Ab\u200b", max_size=40))
def test_position_map_agrees_with_the_reference(text: str) -> None:
    norm = default_normaliser()
    folded, positions = norm.with_positions(text)
    where = norm.positions(text)
    assert [where.original(i) for i in range(len(folded))] == positions


@given(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=300) | st.text(" .,机密機ﬁß🙂Ab\u200b", max_size=300),
    st.data(),
)
def test_originals_agree_with_the_position_map(text: str, data: st.DataObject) -> None:
    norm = default_normaliser()
    folded = norm.normalise(text)
    indices = data.draw(st.lists(st.integers(0, len(folded) - 1), max_size=6)) if folded else []
    where = norm.positions(text)
    assert norm.originals(text, indices) == {i: where.original(i) for i in indices}
    assert norm.originals(text, range(len(folded))) == {i: where.original(i) for i in range(len(folded))}


def test_originals_refuse_an_index_past_the_text(norm: Normaliser) -> None:
    with pytest.raises(IndexError):
        norm.originals("机 密", [2])
    with pytest.raises(IndexError):
        norm.originals("机 密" * 100, [200])
