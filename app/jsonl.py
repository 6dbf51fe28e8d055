"""One JSON Lines line, parsed without letting a hostile line through as an exception."""

from __future__ import annotations

import json


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
