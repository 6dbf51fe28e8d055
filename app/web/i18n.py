"""Message catalogues (gettext .po files read with Babel at start-up) and the choice of language.

The .po files are read directly, so a fresh clone needs no compile step. Language: ``?lang=`` (the
switch, remembered in a cookie), else the cookie, else the browser's Accept-Language, else English.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from babel.messages.pofile import read_po
from starlette.requests import Request

CATALOGUES = Path(__file__).parent / "translations"
DEFAULT = "en"
LANGUAGES = {"en": "English", "ar": "العربية", "fr": "Français"}  # each in its own language
RTL = {"ar"}
COOKIE = "hm_lang"


@lru_cache
def catalogue(lang: str) -> dict[str, str]:
    """msgid -> msgstr of ``lang``; English is the msgids themselves."""
    path = CATALOGUES / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not path.exists():
        return {}
    with open(path, "rb") as f:
        cat = read_po(f, locale=lang)
    # A str id is a singular message, whose string is a str too (plurals have tuples of both).
    return {m.id: m.string for m in cat
            if m.id and isinstance(m.id, str) and m.string and isinstance(m.string, str) and not m.fuzzy}


class Translator:
    def __init__(self, lang: str):
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self.messages = catalogue(self.lang)

    @property
    def direction(self) -> str:
        return "rtl" if self.lang in RTL else "ltr"

    def gettext(self, message: str, **values) -> str:
        text = self.messages.get(message, message)
        return text % values if values else text


def parse_accept_language(header: str | None) -> list[str]:
    """Primary language subtags of an Accept-Language header, best first (q=0 dropped)."""
    ranked = []
    for n, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, n, tag.split("-")[0].lower()))
    return [tag for _, _, tag in sorted(ranked)]


def choose_language(request: Request) -> tuple[str, bool]:
    """The request's language, and whether it came from ``?lang=`` (then the switch remembers it)."""
    asked = request.query_params.get("lang", "")
    if asked in LANGUAGES:
        return asked, True
    remembered = request.cookies.get(COOKIE, "")
    if remembered in LANGUAGES:
        return remembered, False
    for tag in parse_accept_language(request.headers.get("accept-language")):
        if tag in LANGUAGES:
            return tag, False
    return DEFAULT, False


def N_(message: str) -> str:
    """Mark a message for the catalogues where it is defined; it is translated where it is shown."""
    return message
