"""Hostile text shown to people: invisible controls made visible.

A listing's title, URL or photo name is written by whoever made the dump. Bidirectional controls
(U+202E RIGHT-TO-LEFT OVERRIDE and its kin) reorder what is displayed without changing what is stored:
``http://ok.example/\\u202emoc.elgoog//:sptth`` displays as ``http://ok.example/https://google.com``
and ``\\u202eexe.gpj`` as ``jpg.exe``. Terminal controls (ESC...) can rewrite a terminal's screen.
``visible_controls`` replaces each such character by a visible marker (``‹U+202E›``), for every
human-facing output: HTML reports and pages, CSV meant for spreadsheets, lines printed by the CLI.
Machine outputs (JSON) keep the text as it is.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# Bidirectional formatting characters: embeddings and overrides (U+202A-U+202E), isolates
# (U+2066-U+2069), the implicit marks (U+200E LRM, U+200F RLM, U+061C ALM).
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# C0 controls but tab, line feed and carriage return; DEL; C1 controls (ESC starts terminal sequences).
TERMINAL_CONTROLS = "".join(chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)))

_HIDDEN = re.compile(f"[{re.escape(BIDI_CONTROLS + TERMINAL_CONTROLS)}]")


def _marker(match: re.Match[str]) -> str:
    return f"\u2039U+{ord(match.group()):04X}\u203a"


def visible_controls(text: str) -> str:
    """``text`` with every bidirectional or terminal control replaced by a visible ``‹U+XXXX›``.

    Tab, line feed and carriage return are kept (descriptions have lines). Idempotent: the marker is
    plain text.
    """
    return _HIDDEN.sub(_marker, text)


def has_controls(text: str) -> bool:
    return _HIDDEN.search(text) is not None


def url_without_controls(url: str) -> str:
    """A link's target with those controls %-encoded (``%E2%80%AE``), as a browser sends them anyway:
    the address is unchanged and no raw control is left in the page."""
    return _HIDDEN.sub(lambda m: quote(m.group(), safe=""), url)
