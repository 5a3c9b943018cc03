"""Chinese word segmentation for the term matcher: is a match a word, or the seam of two words?

Chinese has no spaces, so a term found in the character stream may straddle two words: 机密
("confidential") lies across 取款机 + 密码 (ATM + PIN), 飞机 + 密集 and 发电机 + 密布. A `Segmenter`
cuts the normalised text around a match into dictionary words (jieba's dictionary of about
350,000 words, through `rjieba`, the Rust port; it ships the dictionary and loads it offline, once
per process, in about 0.15 s), and `cuts_through` says whether a word crosses one edge of the
match and goes on beyond it. A match that is a word (机密), several whole words (内部 + 代号) or
lies inside one longer word (机密文件, 绝密级) stands; one that a word crosses does not.

Only the text around a match is cut (`WINDOW` characters each side), so a prompt without a
Chinese match costs nothing here. jieba decides by word frequencies, so a few phrases come out
either way (客户名单独一行 is cut 客户名单 + 独 + 一行, so it still matches): `allow_phrases` and the
per-term `[anywhere]` marker remain the two ways to say otherwise.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence

WINDOW = 8  # characters of context cut on each side of a match: longer than the words that cross an edge

Tokenize = Callable[[str], Sequence[tuple[str, int, int]]]


def is_cjk(char: str) -> bool:
    """Whether `char` is a CJK ideograph (unified or compatibility, BMP or astral): what jieba's
    dictionary is written in. Range tests: this is asked for every edge of every match."""
    return (
        "\u4e00" <= char <= "\u9fff"
        or "\u3400" <= char <= "\u4dbf"
        or "\uf900" <= char <= "\ufaff"
        or "\U00020000" <= char <= "\U000323af"
    ) and unicodedata.category(char) == "Lo"


class Segmenter:
    """Cuts text into words with `tokenize` (jieba's `tokenize`: (word, start, end) per word)."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def cuts_through(self, text: str, start: int, end: int) -> bool:
        """Whether a word of `text` crosses `start` or `end` (the edges of a match [start, end))
        and goes on outside it. Only edges between two Chinese characters are asked about: beside
        a letter, a digit or the text's edge, a Chinese match always stands."""
        check_start = start > 0 and is_cjk(text[start - 1]) and is_cjk(text[start])
        check_end = end < len(text) and is_cjk(text[end - 1]) and is_cjk(text[end])
        if not (check_start or check_end):
            return False
        low = max(0, start - WINDOW)
        for _, word_start, word_end in self.tokenize(text[low : end + WINDOW]):
            first, last = word_start + low, word_end + low
            if first <= start and end <= last:
                return False  # one word holds the whole match: 机密文件, 绝密级
            if (check_start and first < start < last) or (check_end and first < end < last):
                return True
            if first >= end:
                break
        return False


@functools.cache
def default_segmenter() -> Segmenter:
    """jieba's default dictionary through rjieba, loaded on first use (once per process)."""
    import rjieba  # noqa: PLC0415 - loads the dictionary: only when a policy is built

    return Segmenter(rjieba.tokenize)
