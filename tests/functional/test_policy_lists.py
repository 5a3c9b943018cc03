"""The false-positive rate of the shipped lists on prompts a bank's designers write: at most 1%."""

from __future__ import annotations

import functools

from tests.common.benign_prompts import ALL, CHINESE, ENGLISH, HARD, HARD_CHINESE, HARD_ENGLISH
from tests.common.evasions import CONTEXTS, EVASIONS
from zguard.config import PolicySettings
from zguard.policy.prompt_policy import PromptPolicy
from zguard.services.prompt_policy import build_policy, builtin_names, load_terms

MAX_RATE = 0.01
MAX_HARD_RATE = 0.02  # issue 16: word-boundary phrases a bank writes every day
MIN_EVASIONS_BLOCKED = 0.99


@functools.cache
def shipped_policy(allow: tuple[str, ...] | None = None) -> PromptPolicy:
    settings = PolicySettings() if allow is None else PolicySettings(allow_phrases=list(allow))
    return build_policy(settings)[0]


def test_corpus_is_large_and_in_both_languages() -> None:
    assert len(ALL) >= 200
    assert len(CHINESE) >= 100
    assert len(ENGLISH) >= 100
    assert len(set(ALL)) == len(ALL)


def test_false_positive_rate_of_the_shipped_lists_is_at_most_one_percent() -> None:
    policy = shipped_policy()
    flagged = [prompt for prompt in ALL if policy.check(prompt).findings]
    rate = len(flagged) / len(ALL)
    print(f"\nprompt policy false positives: {len(flagged)} of {len(ALL)} benign prompts ({rate:.2%})")
    for prompt in flagged:
        print(f"  {policy.check(prompt).audit_fields()}: {prompt}")
    assert rate <= MAX_RATE, flagged


def test_a_known_false_positive_goes_on_the_allow_list() -> None:
    prompt = next(p for p in ENGLISH if "confidential advice" in p)
    assert shipped_policy().check(prompt).blocked
    allowing = shipped_policy((*PolicySettings().allow_phrases, "confidential advice"))
    assert allowing.check(prompt).findings == ()
    assert allowing.check("a slide stamped CONFIDENTIAL").blocked


def test_builtin_lists_hold_the_guides_examples_and_a_bank_starter_set() -> None:
    assert builtin_names() == ["builtin:bank", "builtin:guide"]
    policy = shipped_policy()
    for text, category in [
        ("机密", "confidential"),
        ("客户名单", "customer-data"),
        ("内部代号", "code-name"),
        ("jimi", "confidential"),  # the guide's terms carry their pinyin
        ("Strictly Confidential", "confidential"),
        ("客户明细", "customer-data"),
        ("project codename", "code-name"),
        ("内幕信息", "insider"),
        ("MNPI", "insider"),
        ("员工工资", "hr-data"),
        ("数据库密码", "credentials"),
    ]:
        verdict = policy.check(f"海报 {text} 设计")
        assert verdict.blocked, text
        assert verdict.audit_fields()["category"] == category, text
    assert policy.term_count > 80


def test_shipped_lists_parse_without_duplicates() -> None:
    terms, hashes = load_terms(builtin_names())
    assert set(hashes) == set(builtin_names())
    assert len({t.text.lower() for t in terms}) == len(terms)


def test_hard_benign_phrases_are_served_at_least_98_percent() -> None:
    """Terms across word boundaries (取款机密码, 杜绝密码, 员工工资卡) and phrases cut by sentence
    punctuation (`promo code, name`): the shipped lists block at most 2%."""
    assert len(HARD) >= 300
    assert len(HARD_CHINESE) >= 250
    assert len(HARD_ENGLISH) >= 25
    assert len(set(HARD)) == len(HARD)
    policy = shipped_policy()
    blocked = [prompt for prompt in HARD if policy.check(prompt).blocked]
    rate = len(blocked) / len(HARD)
    print(f"\nhard benign blocked: {len(blocked)} of {len(HARD)} ({rate:.2%})")
    for prompt in blocked:
        print(f"  {policy.check(prompt).audit_fields()}: {prompt}")
    assert rate <= MAX_HARD_RATE, blocked


def test_the_shipped_lists_block_at_least_99_percent_of_the_evasions() -> None:
    """The evasion corpus against the shipped lists (which hold its terms), in every context."""
    policy = shipped_policy()
    prompts = [context.format(text) for cases in EVASIONS.values() for text, _ in cases for context in CONTEXTS]
    missed = [prompt for prompt in prompts if not policy.check(prompt).blocked]
    rate = 1 - len(missed) / len(prompts)
    print(f"\nevasions blocked: {len(prompts) - len(missed)} of {len(prompts)} ({rate:.2%})")
    assert rate >= MIN_EVASIONS_BLOCKED, missed
