"""The batch jobs' HTML reports (``evaluate``, ``scan``): Jinja2 templates in ``app/jobs/templates``.

Like the web pages, every value a template prints is escaped; here it is escaped as ``html.escape`` does
(quotes too, ``'`` as ``&#x27;``), as the reports always were. A value already marked safe is printed as it is.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


def _escape(value: Any) -> Markup:
    """What ``{{ value }}`` prints: the value as text, escaped (a StrictUndefined value raises here)."""
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(html.escape(str(value), quote=True))


templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                        keep_trailing_newline=True, undefined=StrictUndefined, finalize=_escape)


def render(template: str, **values: Any) -> str:
    """The page ``template`` (a file name in ``app/jobs/templates``) filled with ``values``."""
    return templates.get_template(template).render(**values)
