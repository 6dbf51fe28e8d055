"""JSON Lines, parsed without letting a hostile line through as an exception."""

from __future__ import annotations

import json
from typing import Iterable, Iterator


def parse_json_line(line: str) -> tuple[object, str | None]:
    """(value, None), or (None, why it is not JSON).

    Besides malformed JSON: a number of thousands of digits (Python refuses to convert it) and nesting
    deep enough to exhaust the recursion limit, either of which would otherwise stop a whole import.
    """
    try:
        return json.loads(line), None
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        return None, f"not valid JSON ({getattr(exc, 'msg', None) or exc})"


def object_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object, None) or (line number, None, why not) for each non-blank line."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        value, error = parse_json_line(line)
        obj = value if isinstance(value, dict) else None  # None whenever error is set
        if error is None and obj is None:
            error = "each line must be a JSON object"
        yield n, obj, error
