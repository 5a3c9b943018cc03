"""The look-alike table comes from Unicode's UTS #39 data (vendored, with its source) plus a few
case-aware corrections; CJK variants from OpenCC `jp2t`. Folding is for matching only."""

from __future__ import annotations

import unicodedata
from importlib import resources

import pytest

from zguard.policy.confusables import CONFUSABLES, DATA_FILE, parse_confusables
from zguard.policy.normalise import default_normaliser


def data() -> dict[str, str]:
    return parse_confusables((resources.files("zguard.policy") / DATA_FILE).read_text(encoding="utf-8"))


def test_the_data_file_names_its_source_and_version() -> None:
    header = (resources.files("zguard.policy") / DATA_FILE).read_text(encoding="utf-8").split("\n", 12)[:12]
    text = "\n".join(header)
    assert "UTS #39" in text
    assert "confusables.txt" in text
    assert "confusable-homoglyphs 3.3.1" in text


def test_the_data_keeps_letters_to_latin_and_radicals_to_ideographs_only() -> None:
    table = data()
    assert len(table) > 500
    for source, target in table.items():
        assert not source.isascii(), source
        assert unicodedata.category(source) != "Nd", source
        assert not target.isdigit(), (source, target)
        assert (target.isascii() and target.isalpha()) or "CJK" in unicodedata.name(target), (source, target)
    assert set(table) <= set(CONFUSABLES)  # the hand corrections change targets, never drop one


@pytest.mark.parametrize(
    ("char", "target"),
    [
        ("Օ", "O"),
        ("Տ", "S"),
        ("Ꭺ", "A"),
        ("Ꮯ", "C"),
        ("ꓮ", "A"),
        ("ꓲ", "I"),
        ("Ⲟ", "O"),
        ("Ⲣ", "P"),
        ("エ", "工"),
        ("戸", "戶"),
    ],
)
def test_scripts_the_hand_table_missed(char: str, target: str) -> None:
    assert CONFUSABLES[char] == target


def test_parse_refuses_a_bad_line() -> None:
    with pytest.raises(ValueError, match=r"data/confusables\.txt:2"):
        parse_confusables("0410 ; 0041\nnot hex ; x\n")
    assert parse_confusables("# comment\n\n0410 ; 0041 # CYRILLIC A -> A\n") == {"А": "A"}


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("客戸名単", "客户名单"),
        ("伝経権厳", "传经权严"),
        ("員エ工資", "员工工资"),
        ("予芸並", "予芸并"),  # Chinese 予 and 芸 stay; only characters outside GB 2312 go through jp2t
        ("ⲤⲞNFⲒDENTⲒAL", "confidential"),
        ("ꓚꓳꓠꓝꓲꓓꓰꓠꓔꓲꓮꓡ", "confidential"),
    ],
)
def test_variants_and_look_alikes_fold(text: str, folded: str) -> None:
    assert default_normaliser().normalise(text) == folded
