"""The term-list format: comments, categories per file, per section and per line, pinyin marks."""

from __future__ import annotations

import pytest

from zguard.policy.terms import Term, TermListError, default_category, parse_term_list


def test_categories_from_file_name_directive_and_prefix() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "机密",
            "@category code-name",
            "内部代号",
            "customer-data: 客户名单",
            "  project atlas  ",
            "Note: this is a term",
        ]
    )
    assert parse_term_list(text, "/etc/zguard/bank.txt") == [
        Term("机密", "bank", False, "/etc/zguard/bank.txt:3"),
        Term("内部代号", "code-name", False, "/etc/zguard/bank.txt:5"),
        Term("客户名单", "customer-data", False, "/etc/zguard/bank.txt:6"),
        Term("project atlas", "code-name", False, "/etc/zguard/bank.txt:7"),
        Term("Note: this is a term", "code-name", False, "/etc/zguard/bank.txt:8"),
    ]


def test_pinyin_per_term_and_per_section() -> None:
    text = "机密 [pinyin]\n客户名单\n@pinyin on\n内部代号\nsecret: 绝密 [pinyin]\n@pinyin off\n商业秘密\n"
    terms = parse_term_list(text, "x.txt")
    assert [(t.text, t.category, t.pinyin) for t in terms] == [
        ("机密", "x", True),
        ("客户名单", "x", False),
        ("内部代号", "x", True),
        ("绝密", "secret", True),
        ("商业秘密", "x", False),
    ]


def test_hash_inside_a_term_is_part_of_it() -> None:
    assert [t.text for t in parse_term_list("C# project\n", "x")] == ["C# project"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("@categroy x\n", "x.txt:1: unknown directive"),
        ("ok\n@category Bad Name\n", "x.txt:2: unknown directive"),
        ("@pinyin maybe\n", "x.txt:1: unknown directive"),
        ("secret:\n", "x.txt:1: a category or marker without a term"),
        ("[pinyin]\n", "x.txt:1: a category or marker without a term"),
        ("a" * 201 + "\n", "x.txt:1: a term longer than 200 characters"),
    ],
)
def test_bad_lines_are_named(text: str, problem: str) -> None:
    with pytest.raises(TermListError, match=problem.replace(".", r"\.")):
        parse_term_list(text, "x.txt")


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("bank.txt", "bank"),
        ("/a/b/Customer-Data.zh.txt", "customer-data"),
        ("builtin:guide", "guide"),
        ("列表.txt", "banned"),
    ],
)
def test_default_category(name: str, category: str) -> None:
    assert default_category(name) == category
