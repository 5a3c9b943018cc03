"""Issue 18, item 5: every string a console page shows is in the zh-CN catalog, and the catalog
holds nothing stale; placeholders survive translation."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_python
from jinja2.ext import babel_extract

from zguard.app.console import pages
from zguard.app.console.web import LANGUAGES, TEMPLATES, catalog, translate


def template_messages() -> set[str]:
    found: set[str] = set()
    for template in sorted(TEMPLATES.glob("*.html")):
        with template.open("rb") as source:
            for _line, _function, message, _comments in babel_extract(source, ("_",), [], {}):
                text = message if isinstance(message, str | None) else message[0]
                if text:
                    found.add(text)
    return found


def python_messages() -> set[str]:
    found: set[str] = set()
    for module in sorted(Path(pages.__file__).parent.glob("*.py")):
        with module.open("rb") as source:
            found |= {m for _line, _f, m, _c in extract_python(source, ["N_"], [], {}) if isinstance(m, str)}
    return found


def test_every_marked_string_has_a_chinese_translation() -> None:
    wanted = template_messages() | python_messages()
    assert len(wanted) > 30  # the extraction found the pages' strings, not nothing
    missing = sorted(m for m in wanted if m not in catalog("zh-CN"))
    assert missing == [], "add these to a catalog in src/zguard/app/console/locale/zh_CN/"


def test_the_catalog_has_no_stale_entries_and_keeps_placeholders() -> None:
    wanted = template_messages() | python_messages()
    assert sorted(set(catalog("zh-CN")) - wanted) == []
    for message, translated in catalog("zh-CN").items():
        assert re.findall(r"\{\w+\}", message) == re.findall(r"\{\w+\}", translated), message
        assert translated != message


def test_english_is_the_message_itself_and_unknown_strings_fall_back() -> None:
    assert set(LANGUAGES) == {"en", "zh-CN"}
    assert translate("en", "Sign in") == "Sign in"
    assert translate("zh-CN", "Sign in") == "登录"
    assert translate("zh-CN", "not in any catalog") == "not in any catalog"
