"""What every console page is made with: templates, languages, cookies, the error page.

- Templates are Jinja2 with autoescape on for everything (not only `.html`): nothing a user typed
  reaches a page unescaped. They load from this package, are compiled once, and call `_()` for
  every string a person reads.
- Languages: `en` and `zh-CN`, from the catalogs in `locale/` (gettext .po, read with Babel at
  import; the English strings are the msgids). The language is the `zguard-lang` cookie when it
  names one (the switch sets it), else the best match of `Accept-Language`, else English. Dates
  are formatted for the language (Babel). Error codes never change with the language; their
  messages and the pages around them do.
- The session cookie is `__Host-zguard-session` (`Secure`) when the console serves TLS, and
  `zguard-session` on plain HTTP (loopback, or a TLS proxy in front), because a browser refuses
  the `__Host-` prefix without `Secure`. Always `HttpOnly`, `SameSite=Strict`, `Path=/`, no
  `Domain`, and no `Max-Age`: it ends with the browser, and the server ends it anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.messages.pofile import read_po
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
LOCALES = HERE / "locale"
LANGUAGES: Mapping[str, str] = {"en": "English", "zh-CN": "中文"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "zguard-lang"
SESSION_COOKIES = ("__Host-zguard-session", "zguard-session")  # TLS, plain HTTP


def session_cookie_name(tls: bool) -> str:
    return SESSION_COOKIES[0] if tls else SESSION_COOKIES[1]


@cache
def catalog(language: str) -> Mapping[str, str]:
    """msgid → msgstr of a language's catalogs (`locale/<ll_CC>/*.po`, one per page group, merged);
    English is the msgids themselves (empty)."""
    if language == DEFAULT_LANGUAGE:
        return {}
    merged: dict[str, str] = {}
    for path in sorted((LOCALES / language.replace("-", "_")).glob("*.po")):
        with path.open("rb") as po:
            messages = read_po(po)
        merged.update({str(m.id): str(m.string) for m in messages if m.id and m.string and not m.fuzzy})
    return merged


def translate(language: str, message: str) -> str:
    return catalog(language).get(message, message)


def negotiate(request: Request) -> str:
    """The page's language: the remembered switch, else Accept-Language, else English."""
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen is not None and chosen in LANGUAGES:
        return chosen
    header = request.headers.get("accept-language", "")[:256]  # bounded: parsing costs per entry
    preferred = []
    for part in header.split(",")[:16]:
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag:
            preferred.append((quality, tag.strip()))
    for _quality, tag in sorted(preferred, key=lambda p: -p[0]):
        if tag.lower().startswith("zh"):
            return "zh-CN"
        if tag.lower().startswith("en") or tag == "*":
            return "en"
    return DEFAULT_LANGUAGE


def format_time(value: datetime | None, language: str) -> str:
    if value is None:
        return ""
    try:
        locale = Locale.parse(language.replace("-", "_"))
    except (ValueError, UnknownLocaleError):  # pragma: no cover - LANGUAGES are all known to Babel
        locale = Locale("en")
    return format_datetime(value, "medium", tzinfo=value.tzinfo, locale=locale)


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page in the request's language. `context` gets `_`, `lang`, `languages`, `when`."""
    language = negotiate(request)
    context = {"identity": None, "csrf": "", "may": {}, **context}  # what base.html reads, signed in or not
    page = (
        environment()
        .get_template(template)
        .render(
            _=lambda message, **values: (
                translate(language, message).format(**values) if values else translate(language, message)
            ),
            lang=language,
            languages=LANGUAGES,
            when=lambda value: format_time(value, language),
            path=request.url.path,
            **context,
        )
    )
    return HTMLResponse(page, status_code=status)


def see_other(location: str) -> RedirectResponse:
    """303 to a path of this console (never a URL from the request: no open redirect)."""
    if not location.startswith("/") or location.startswith("//"):
        location = "/"
    return RedirectResponse(location, status_code=303)


def set_session_cookie(response: Response, value: str, *, tls: bool) -> None:
    response.set_cookie(session_cookie_name(tls), value, path="/", secure=tls, httponly=True, samesite="strict")


def clear_session_cookie(response: Response, *, tls: bool) -> None:
    response.delete_cookie(session_cookie_name(tls), path="/", secure=tls, httponly=True, samesite="strict")
