"""Benchmark: the prompt policy against the deployment guide's naive filter.

Run it with ``.venv/bin/python bench/bench_policy.py [--terms N] [--prompts N] [--rounds N]``. It
prints ONE JSON object on stdout; progress goes to stderr. It is a measurement, not a test:
figures over target only set the ``*_ok`` booleans to false.

``per_prompt``
    ``--terms`` banned terms (default 10,000: Chinese words of 3 to 6 characters and English
    phrases, drawn with a fixed seed, plus the shipped lists) against ``--prompts`` prompts of
    exactly 1,000 characters, each built from the benign designer prompts of
    ``tests/common/benign_prompts.py`` (Chinese, English and mixed). ``zguard`` is one
    ``PromptPolicy.check(prompt)`` - normalisation, the Aho-Corasick pass, the personal-data
    detectors and the word-boundary and allow-list work - and ``naive`` is the guide's
    ``any(word in prompt for word in banned_words)`` over the same raw terms, both timed in this
    run, alternating round by round. Median and p95 in microseconds over all prompts and rounds;
    ``speedup`` is the naive median over zguard's. ``matched`` counts the prompts each flagged, to
    show they did comparable work. ``evasive`` times prompts whose term is hidden by spacing,
    zero-width characters and traditional forms, which the naive filter lets through.
``build``
    Seconds to build a ``PromptPolicy`` (normalise every term, fill and compile the automaton) for
    10,000 and 100,000 terms, without pinyin, and for the 10,000 with pinyin on for every Chinese
    term. The process-wide normaliser (every BMP character folded once, OpenCC loaded) is built
    before and reported on its own as ``normaliser_s``; ``segmenter_s`` is the time to load jieba's
    dictionary (rjieba), once per process.
``segmenter``
    The word segmenter's share of a check (issue 16): the same prompts checked by a policy with
    ``word_aware=False`` (Chinese terms match anywhere), the time spent inside the segmenter
    (``tokenize`` calls, counted and timed) and ``share`` = that time over zguard's total. The
    designer prompts rarely hold a Chinese match, so ``hard_prompts`` repeats the measurement on
    prompts built from the hard benign phrases too (取款机密码, 杜绝密码, ...: a dozen matches across
    words in every prompt), where the segmenter has the most work.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.common.benign_prompts import CHINESE, ENGLISH, HARD_CHINESE, HARD_ENGLISH

from zguard.config import PolicySettings
from zguard.policy.normalise import default_normaliser
from zguard.policy.prompt_policy import PromptPolicy
from zguard.policy.segment import Segmenter, Tokenize, default_segmenter
from zguard.policy.terms import Term
from zguard.services.prompt_policy import load_terms

PROMPT_CHARS = 1000
TARGET_US = 200.0
TARGET_P95_US = 400.0
TARGET_SPEEDUP = 20.0
# Common characters of bank and business Chinese, from which the synthetic Chinese terms are drawn.
HANZI = (
    "银行金融客户账户资产负债利率存款贷款理财基金保险信用卡借记交易结算支付转账汇款票据证券投资"
    "风险合规审计内部外部项目系统平台数据信息报告分析管理部门分行支行网点员工经理总监董事会股东"
    "战略计划预算成本收入利润市场营销产品服务渠道科技安全密码权限机构监管政策法律合同协议机密"
)
SYLLABLES = ["ka", "lo", "ri", "ven", "ta", "mi", "sor", "pel", "dan", "qu", "zen", "bra", "tol", "ix", "nor", "ush"]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def synthetic_terms(count: int, rng: random.Random) -> list[str]:
    terms: set[str] = set()
    while len(terms) < count:
        if rng.random() < 0.6:
            terms.add("".join(rng.choice(HANZI) for _ in range(rng.randint(3, 6))))
        else:
            words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 3))]
            terms.add(" ".join(words))
    return sorted(terms)


def prompts(count: int, rng: random.Random, *, hard: bool = False) -> list[str]:
    """Prompts of PROMPT_CHARS from the designer prompts (Chinese, English, mixed); `hard`: from the
    hard benign phrases too, where many Chinese matches straddle words and the segmenter works."""
    pools = [CHINESE, ENGLISH, CHINESE + ENGLISH]
    if hard:
        pools = [CHINESE + HARD_CHINESE, ENGLISH + HARD_ENGLISH, CHINESE + ENGLISH + HARD_CHINESE + HARD_ENGLISH]
    made = []
    for index in range(count):
        pool = pools[index % len(pools)]
        text = ""
        while len(text) < PROMPT_CHARS:
            text += rng.choice(pool) + ("。" if pool is pools[0] else ". ")
        made.append(text[:PROMPT_CHARS])
    return made


def timed_us(check: Callable[[str], object], texts: list[str]) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for text in texts:
        start = clock()
        check(text)
        samples.append((clock() - start) / 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": round(statistics.median(ordered), 1),
        "p95_us": round(ordered[int(len(ordered) * 0.95) - 1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


def build_s(terms: list[Term], **options: object) -> tuple[float, PromptPolicy]:
    start = time.perf_counter()
    policy = PromptPolicy(terms, **options)  # type: ignore[arg-type]
    return time.perf_counter() - start, policy


def load_s(load: Callable[[], object]) -> float:
    start = time.perf_counter()
    load()
    return time.perf_counter() - start


class TimedTokenize:
    """jieba's tokenize, counting calls and the nanoseconds spent in them."""

    def __init__(self, tokenize: Tokenize) -> None:
        self._tokenize = tokenize
        self.calls = 0
        self.ns = 0

    def __call__(self, text: str) -> Sequence[tuple[str, int, int]]:
        start = time.perf_counter_ns()
        try:
            return self._tokenize(text)
        finally:
            self.ns += time.perf_counter_ns() - start
            self.calls += 1


def hard_prompts(
    texts: list[str],
    rounds: int,
    zguard: Callable[[str], bool],
    without_segmenter: Callable[[str], bool],
    timed_tokenize: TimedTokenize,
) -> dict[str, object]:
    """The per-prompt figures on prompts full of Chinese matches across words."""
    timed_us(zguard, texts[:20])
    timed_tokenize.calls = timed_tokenize.ns = 0
    ours: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        ours += timed_us(zguard, texts)
        off += timed_us(without_segmenter, texts)
    calls, segment_us = timed_tokenize.calls, timed_tokenize.ns / 1000
    figures = summary(ours)
    return {
        "prompts": len(texts),
        "zguard": figures,
        "word_aware_off": summary(off),
        "blocked": sum(map(zguard, texts)),
        "blocked_word_aware_off": sum(map(without_segmenter, texts)),
        "tokenize_calls": calls,
        "tokenize_us_per_prompt": round(segment_us / len(ours), 2),
        "share": round(segment_us / sum(ours), 4),
        "median_ok": figures["median_us"] <= TARGET_US,
        "p95_ok": figures["p95_us"] <= TARGET_P95_US,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terms", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(20250601)  # noqa: S311 - a fixed seed for repeatable terms and prompts, not a secret

    start = time.perf_counter()
    default_normaliser()
    normaliser_s = time.perf_counter() - start
    log(f"normaliser built in {normaliser_s:.2f} s")
    segmenter_s = load_s(default_segmenter)
    log(f"segmenter dictionary loaded in {segmenter_s:.2f} s")

    shipped, _ = load_terms(PolicySettings().banned_terms_files)
    raw = synthetic_terms(args.terms - len(shipped), rng) + [t.text for t in shipped]
    terms = [Term(text, "bench", False, f"bench:{i}") for i, text in enumerate(raw)]
    many = [Term(text, "bench", False, f"bench:{i}") for i, text in enumerate(synthetic_terms(100_000, rng))]

    timed_tokenize = TimedTokenize(default_segmenter().tokenize)  # the real tokenizer, timed
    build_10k, policy = build_s(terms, segmenter=Segmenter(timed_tokenize))
    _, anywhere = build_s(terms, word_aware=False)
    log(f"{len(terms)} terms: automaton built in {build_10k:.2f} s")
    build_100k, _ = build_s(many)
    log(f"{len(many)} terms: automaton built in {build_100k:.2f} s")
    del many
    start = time.perf_counter()
    PromptPolicy([Term(t.text, t.category, True, t.source) for t in terms])
    build_pinyin = time.perf_counter() - start
    log(f"{len(terms)} terms with pinyin: built in {build_pinyin:.2f} s")
    gc.collect()  # what the builds left behind is not the checks' to pay for

    texts = prompts(args.prompts, rng)
    banned_words = raw

    def naive(prompt: str) -> bool:
        return any(word in prompt for word in banned_words)

    def zguard(prompt: str) -> bool:
        return policy.check(prompt).blocked

    def without_segmenter(prompt: str) -> bool:
        return anywhere.check(prompt).blocked

    for check in (naive, zguard, without_segmenter):  # warm-up: fold tables, caches
        timed_us(check, texts[:20])
    ours: list[float] = []
    theirs: list[float] = []
    unsegmented: list[float] = []
    timed_tokenize.calls = timed_tokenize.ns = 0
    for round_ in range(args.rounds):
        theirs += timed_us(naive, texts)
        ours += timed_us(zguard, texts)
        unsegmented += timed_us(without_segmenter, texts)
        log(
            f"round {round_ + 1}/{args.rounds}: zguard {statistics.median(ours):.1f} us, naive {statistics.median(theirs):.1f} us"
        )
    segment_calls, segment_us = timed_tokenize.calls, timed_tokenize.ns / 1000
    hard = hard_prompts(prompts(args.prompts, rng, hard=True), args.rounds, zguard, without_segmenter, timed_tokenize)
    evasive = [text[:400] + "機\u200b 密" + text[403:] for text in texts[: args.prompts // 3]]
    evasive_us = timed_us(zguard, evasive)

    zguard_summary, naive_summary = summary(ours), summary(theirs)
    speedup = naive_summary["median_us"] / zguard_summary["median_us"]
    result = {
        "per_prompt": {
            "terms": len(terms),
            "prompt_chars": PROMPT_CHARS,
            "prompts": len(texts),
            "rounds": args.rounds,
            "zguard": zguard_summary,
            "naive": naive_summary,
            "speedup": round(speedup, 1),
            "matched": {"zguard": sum(map(zguard, texts)), "naive": sum(map(naive, texts))},
            "evasive": {
                **summary(evasive_us),
                "blocked_by_zguard": sum(map(zguard, evasive)),
                "blocked_by_naive": sum(map(naive, evasive)),
                "prompts": len(evasive),
            },
            "target_us": TARGET_US,
            "target_p95_us": TARGET_P95_US,
            "target_speedup": TARGET_SPEEDUP,
            "median_ok": zguard_summary["median_us"] <= TARGET_US,
            "p95_ok": zguard_summary["p95_us"] <= TARGET_P95_US,
            "speedup_ok": speedup >= TARGET_SPEEDUP,
        },
        "segmenter": {
            "word_aware_off": summary(unsegmented),
            "matched_word_aware_off": sum(map(without_segmenter, texts)),
            "tokenize_calls": segment_calls,
            "tokenize_us_per_prompt": round(segment_us / len(ours), 2),
            "share": round(segment_us / sum(ours), 4),
        },
        "hard_prompts": hard,
        "build": {
            "normaliser_s": round(normaliser_s, 3),
            "segmenter_s": round(segmenter_s, 3),
            "terms_10000_s": round(build_10k, 3),
            "terms_100000_s": round(build_100k, 3),
            "terms_10000_with_pinyin_s": round(build_pinyin, 3),
        },
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
