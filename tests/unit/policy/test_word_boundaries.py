"""Word-aware matching (issue 16): Chinese terms decided by the word segmenter, phrase boundaries
and identifiers for Latin terms, pinyin with tones, names, and the `[anywhere]` marker."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import pytest

from zguard.policy.prompt_policy import PromptPolicy, tone_keys
from zguard.policy.segment import Segmenter, default_segmenter
from zguard.policy.terms import parse_term_list

TERMS = """
@category confidential
机密
绝密
内部使用
top secret
confidential
@category customer-data
客户名单
customer list
client list
@category code-name
code name
内部代号 [pinyin]
@category hr-data
员工工资
"""


def make_policy(terms: str = TERMS, **options: object) -> PromptPolicy:
    return PromptPolicy(parse_term_list(terms, "test.txt"), today=lambda: datetime.date(2025, 6, 1), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def policy() -> PromptPolicy:
    return make_policy()


@pytest.mark.parametrize(
    "text",
    [
        "取款机密码键盘特写",
        "自动柜员机密码键盘",
        "POS机密码键盘插画",
        "开机密码设置界面",
        "计算机密码学讲座",
        "飞机密集排列的停机坪",
        "司机密切配合交警",
        "风力发电机密布的草原",
        "杜绝密码泄露",
        "员工工资卡办理流程",
        "取款机 密码",  # spacing does not make a word either
    ],
)
def test_a_chinese_term_a_word_cuts_through_is_served(policy: PromptPolicy, text: str) -> None:
    assert policy.check(text).findings == (), text


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("这是机密", "机密"),
        ("机密文件请勿外传", "机密"),  # inside a longer word: 机密文件
        ("严格保密的机密资料", "机密"),
        ("绝密档案", "绝密"),
        ("这份客户名单很重要", "客户名单"),
        ("内部代号曝光", "内部代号"),  # two whole words: 内部 + 代号
        ("员工工资明细表", "员工工资"),
        ("機 密", "机密"),
        ("机\u200b密文件", "机密"),
    ],
)
def test_a_chinese_term_that_is_a_word_or_lies_inside_one_matches(policy: PromptPolicy, text: str, term: str) -> None:
    verdict = policy.check(text)
    assert verdict.blocked, text
    assert verdict.deciding is not None
    assert verdict.deciding.term == term


@pytest.mark.parametrize("text", ["取款机\u200b密码", "飞机\u2060密集", "取款機\u200d密碼"])
def test_an_invisible_character_inside_the_term_is_no_word_boundary(policy: PromptPolicy, text: str) -> None:
    assert policy.check(text).blocked, text


def test_anywhere_marker_and_word_aware_off_match_inside_words() -> None:
    assert make_policy("机密 [anywhere]\n").check("取款机密码").blocked
    assert make_policy(word_aware=False).check("取款机密码").blocked
    assert not make_policy().check("取款机密码").blocked


def test_the_segmenter_is_asked_only_about_chinese_edges() -> None:
    asked: list[str] = []

    def tokenize(text: str) -> Sequence[tuple[str, int, int]]:
        asked.append(text)
        return default_segmenter().tokenize(text)  # the real one, observed

    policy = make_policy(segmenter=Segmenter(tokenize))
    assert policy.check("机密 poster").blocked
    assert policy.check("a confidential poster").blocked
    assert policy.check("a lighthouse at dusk").findings == ()
    assert asked == []  # no Chinese neighbour on either side: nothing to ask
    assert policy.check("这是机密").blocked
    assert len(asked) == 1
    assert len(asked[0]) <= 4 + 2 * 8


def test_allow_phrases_still_cover_what_the_segmenter_keeps() -> None:
    assert make_policy().check("客户名单独一行").blocked  # jieba: 客户名单 + 独 + 一行
    assert make_policy(allow_phrases=["名单独一行"]).check("客户名单独一行").blocked  # must cover the whole term
    assert make_policy(allow_phrases=["客户名单独一行"]).check("客户名单独一行").findings == ()


@pytest.mark.parametrize(
    "text",
    [
        "promo code, name and logo",
        "Thank our client. List of benefits",
        "top; secret garden theme",
        "our customer: list of reasons",
        "the code\nname tag",
        "top!Secret",
        "client。List",
    ],
)
def test_sentence_punctuation_between_words_ends_a_phrase(policy: PromptPolicy, text: str) -> None:
    assert policy.check(text).findings == (), text


@pytest.mark.parametrize(
    "text",
    [
        "c.u.s.t.o.m.e.r l.i.s.t",
        "c, o, d, e, n, a, m, e",
        "t.o.p s.e.c.r.e.t",
        "customer-list",
        "top - secret",
        "code name",
        "con.fidential",  # punctuation inside a word, no space: an evasion
        "TOP-SECRET",
    ],
)
def test_separators_between_single_letters_or_inside_words_still_join(policy: PromptPolicy, text: str) -> None:
    assert policy.check(text).blocked, text


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("#TopSecretProject", "top secret"),
        ("ConfidentialReport.pdf", "confidential"),
        ("TOPSECRETFILES", "top secret"),
        ("CustomerListExport", "customer list"),
        ("CustomerListsExport", "customer list"),
        ("customer_list_2024.xlsx", "customer list"),
        ("Confidential2024", "confidential"),
        ("myConfidentialNotes", "confidential"),
        ("CONFIDENTIALREPORT", "confidential"),
    ],
)
def test_terms_inside_identifiers_match(policy: PromptPolicy, text: str, term: str) -> None:
    verdict = policy.check(text)
    assert verdict.blocked, text
    assert verdict.deciding is not None
    assert verdict.deciding.term == term


@pytest.mark.parametrize(
    "text",
    [
        "CONFIDENTIALITY AGREEMENT",
        "NONCONFIDENTIAL",
        "Confidentiality",
        "topsecretary",
        "TopSecretary",
        "clientlisting",
    ],
)
def test_identifiers_keep_real_words_whole(policy: PromptPolicy, text: str) -> None:
    assert policy.check(text).findings == (), text


def test_tone_keys() -> None:
    assert {"ji1mi4", "ji1mi", "jimi4"} <= tone_keys("机密")
    assert "jimi" not in tone_keys("机密")  # the plain reading is pinyin_keys'
    assert "lv4ka3" in tone_keys("绿卡")
    assert "lu4ka3" in tone_keys("绿卡")
    assert tone_keys("nda") == set()
    assert len(tone_keys("中华人民共和国")) <= 2  # long terms: the fully numbered reading only


@pytest.mark.parametrize(
    "text", ["ji1 mi4", "ji1mi4", "JI1 MI4", "ji1-mi4", "jī mì", "jī-mì", "ji-mi", "ji mi", "机mi"]
)
def test_pinyin_with_tone_numbers_and_marks(text: str) -> None:
    assert make_policy("机密 [pinyin]\n").check(f"海报 {text} 设计").blocked, text


@pytest.mark.parametrize("text", ["mascot Jimi the panda", "portrait of Ji Mi", "JIMI", "jimi"])
def test_a_name_marked_term_does_not_match_its_plain_reading(text: str) -> None:
    assert make_policy("机密 [name]\n").check(text).findings == (), text


@pytest.mark.parametrize("text", ["jī mì", "Jī Mì", "ji1 mi4", "ji1mi4", "机mi", "ji密", "机密"])
def test_a_name_marked_term_matches_its_toned_readings_and_characters(text: str) -> None:
    assert make_policy("机密 [name]\n").check(text).blocked, text


def test_markers_parse_and_combine() -> None:
    (term,) = parse_term_list("内部代号 [pinyin] [anywhere]\n", "x.txt")
    assert (term.text, term.pinyin, term.anywhere, term.name) == ("内部代号", True, True, False)
    (term,) = parse_term_list("机密 [name]\n", "x.txt")
    assert (term.text, term.pinyin, term.anywhere, term.name) == ("机密", True, False, True)
    (term,) = parse_term_list("@pinyin on\n机密\n", "x.txt")
    assert (term.pinyin, term.name, term.anywhere) == (True, False, False)


def test_symbols_nfkc_spells_in_letters_are_dropped(policy: PromptPolicy) -> None:
    assert policy.check("内部™代号").blocked
    assert policy.check("top℠secret").blocked
    assert policy.check("confi™dential").blocked
