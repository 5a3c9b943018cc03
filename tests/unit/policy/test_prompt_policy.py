"""PromptPolicy: every evasion class blocked, word boundaries, spans, per-role actions, the allow-list."""

from __future__ import annotations

import datetime

import pytest

from tests.common.evasions import CONTEXTS, EVASIONS, TERMS
from zguard.policy.prompt_policy import PolicyError, PromptPolicy, pinyin_keys
from zguard.policy.terms import parse_term_list
from zguard.policy.verdict import term_id
from zguard.security.detectors import DETECTORS

CARD = "4111 1111 1111 1111"


def make_policy(terms: str = TERMS, **options: object) -> PromptPolicy:
    return PromptPolicy(parse_term_list(terms, "guide.txt"), today=lambda: datetime.date(2025, 6, 1), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def policy() -> PromptPolicy:
    return make_policy()


CASES = [
    pytest.param(evasion, entry, context, id=f"{kind}-{index}-{number}")
    for kind, cases in EVASIONS.items()
    for index, (evasion, entry) in enumerate(cases)
    for number, context in enumerate(CONTEXTS)
]


@pytest.mark.parametrize(("evasion", "entry", "context"), CASES)
def test_every_evasion_is_blocked_with_its_span(policy: PromptPolicy, evasion: str, entry: str, context: str) -> None:
    prompt = context.format(evasion)
    verdict = policy.check(prompt)
    assert verdict.blocked, prompt
    finding = verdict.deciding
    assert finding is not None
    assert finding.term == entry
    assert finding.detector == "terms"
    # The span covers the evasion in the original text: from its first kept character to its last.
    offset = prompt.index(evasion)
    assert offset <= finding.start < finding.end <= offset + len(evasion)
    assert evasion.strip("\ufeff\u200b#").startswith(prompt[finding.start])


def test_corpus_covers_every_class_in_both_languages() -> None:
    def has_latin(text: str) -> bool:
        return any("a" <= c <= "z" for c in text.lower())

    for kind, cases in EVASIONS.items():
        if kind not in ("traditional", "pinyin"):  # these evasions exist only for Chinese terms
            assert any(has_latin(entry) for _, entry in cases), kind
        assert any(not has_latin(entry) for _, entry in cases), kind


def test_the_naive_filter_misses_the_corpus(policy: PromptPolicy) -> None:
    """The deployment guide's filter, for contrast: most of the corpus goes through it."""
    banned = ["机密", "客户名单", "内部代号", "confidential", "customer list", "internal use only"]
    caught = [text for cases in EVASIONS.values() for text, _ in cases if any(word in text for word in banned)]
    total = sum(len(cases) for cases in EVASIONS.values())
    assert len(caught) < total / 5


@pytest.mark.parametrize(
    "text",
    [
        "a calendar of branch events",  # nda inside a word
        "the secretary's desk",  # secret inside a word
        "confidentiality",  # the term followed by more word
        "nonconfidential",  # preceded by more word
        "customer listing page",
        "Jimiland theme park",  # pinyin keys are words too
        "蓝色海报",
    ],
)
def test_latin_terms_match_whole_words_only(text: str) -> None:
    policy = make_policy(TERMS + "nda\nsecret\n")
    assert policy.check(text).findings == ()


@pytest.mark.parametrize(
    "text",
    ["an NDA draft", "top-secret stamp", "customer lists", "customer-lists", "the confidential文件", "(confidential)"],
)
def test_latin_terms_at_word_edges_and_plurals_match(text: str) -> None:
    policy = make_policy(TERMS + "nda\nsecret\n")
    assert policy.check(text).blocked, text


def test_span_and_term_id_never_carry_prompt_text(policy: PromptPolicy) -> None:
    prompt = "海报：客 戶 名\u200b單 2024"
    verdict = policy.check(prompt)
    (finding,) = verdict.findings
    assert prompt[finding.start : finding.end] == "客 戶 名\u200b單"
    assert finding.term_id == term_id("客户名单")
    fields = verdict.audit_fields()
    assert fields == {
        "verdict": "blocked",
        "category": "customer-data",
        "detector": "terms",
        "term_id": term_id("客户名单"),
    }
    assert not any(isinstance(v, str) and ("客" in v or "單" in v) for v in fields.values())


def test_negative_prompt_is_checked_too(policy: PromptPolicy) -> None:
    verdict = policy.check("a lighthouse", "机 密")
    assert verdict.blocked
    assert verdict.deciding is not None
    assert verdict.deciding.field == "negative_prompt"
    assert policy.check("a lighthouse", "blurry").outcome == "allowed"


def test_pii_findings_follow_the_actions() -> None:
    policy = make_policy(actions={"bank_card": "flag", "email": "block"})
    card = policy.check(f"card {CARD}")
    assert card.outcome == "flagged"
    assert card.audit_fields() == {"verdict": "flagged", "category": "pii", "detector": "bank_card", "term_id": None}
    assert policy.check("mail ops@bank.cn").blocked
    assert make_policy().check(f"card {CARD}").blocked  # the default blocks card numbers


def test_per_role_flags_instead_of_blocking() -> None:
    policy = make_policy(per_role={"red-team": {"terms": "flag"}, "intern": {"email": "block"}})
    assert policy.check("机密", roles={"generator"}).blocked
    red = policy.check("机密", roles={"generator", "red-team"})
    assert red.outcome == "flagged"
    assert red.findings[0].action == "flag"
    assert policy.check(f"机密 {CARD}", roles={"red-team"}).blocked  # only terms are relaxed
    assert policy.check("mail ops@bank.cn", roles={"generator"}).outcome == "flagged"
    assert policy.check("mail ops@bank.cn", roles={"intern"}).blocked


def test_flag_wins_between_overriding_roles() -> None:
    policy = make_policy(per_role={"a": {"terms": "block"}, "b": {"terms": "flag"}})
    assert policy.check("机密", roles={"a", "b"}).outcome == "flagged"
    assert policy.check("机密", roles={"a"}).blocked


def test_allow_list_drops_findings_inside_the_phrase_only() -> None:
    policy = make_policy(allow_phrases=["手机密码", f"test card {CARD}"])
    assert policy.check("设置手机密码的界面").findings == ()
    assert policy.check("设置手 機 密碼的界面").findings == ()  # the phrase is normalised too
    assert policy.check("手机密码与机密文件").blocked  # a second, real match still counts
    assert policy.check(f"a mock-up with test card {CARD}").findings == ()
    assert policy.check(f"card {CARD}").blocked
    assert make_policy(word_aware=False).check("设置手机密码的界面").blocked  # without either, a match
    # The segmenter keeps 客户名单 whole in 客户名单独一行 (a name list + 单独 "on its own"): allow it.
    assert make_policy().check("客户名单独一行").blocked
    assert make_policy(allow_phrases=["客户名单独"]).check("客户名单独一行").findings == ()


def test_duplicate_terms_keep_the_first_category() -> None:
    policy = make_policy("a: 机密\nb: 機 密\n")
    assert policy.term_count == 1
    assert policy.check("机密").findings[0].category == "a"


def test_pinyin_is_per_term() -> None:
    policy = make_policy("机密\n客户名单 [pinyin]\n")
    assert policy.check("kehumingdan").blocked
    assert not policy.check("jimi").blocked


def test_pinyin_keys() -> None:
    assert pinyin_keys("机密") == {"jimi", "ji密", "机mi"}
    assert {"luka", "lvka"} <= pinyin_keys("绿卡")
    assert "neibudaihao" in pinyin_keys("内部代号")
    assert len(pinyin_keys("中华人民共和国")) == 1  # long terms: full pinyin only
    assert pinyin_keys("nda") == set()


def test_bad_policies_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"guide\.txt:1: the term '\.\.\.' has no letters or digits"):
        make_policy("...\n")
    with pytest.raises(PolicyError, match="unknown detector"):
        make_policy(actions={"phone": "block"})
    with pytest.raises(PolicyError, match=r"per_role\.x: unknown detector"):
        make_policy(per_role={"x": {"phone": "flag"}})
    with pytest.raises(PolicyError, match="allow_phrases"):
        make_policy(allow_phrases=["!!"])


def test_empty_policy_still_runs_the_detectors() -> None:
    policy = make_policy("")
    assert policy.check("机密").findings == ()
    assert policy.check(f"card {CARD}").blocked
    assert set(policy.actions_for(())) == set(DETECTORS)
