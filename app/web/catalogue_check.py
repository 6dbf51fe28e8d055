"""The messages the web interface shows, found in its templates and code, and which a catalogue lacks.

`python -m app.web.catalogue_check` lists what each language still needs; the tests run the same check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.extract import extract_from_dir

from app.web.i18n import DEFAULT, LANGUAGES, catalogue

WEB = Path(__file__).parent
METHODS = [("templates/**.html", "jinja2.ext:babel_extract"), ("**.py", "python")]
KEYWORDS = {"_": None, "gettext": None, "N_": None}


def messages() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(WEB), METHODS, keywords=KEYWORDS, comment_tags=(), strip_comment_tags=True):
        if isinstance(message, str) and message:
            found.add(message)
    return found


def missing(lang: str) -> set[str]:
    return messages() - set(catalogue(lang))


def main() -> int:
    gaps = 0
    for lang in LANGUAGES:
        if lang == DEFAULT:
            continue
        for message in sorted(missing(lang)):
            print(f"{lang}: {message}")
            gaps += 1
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
