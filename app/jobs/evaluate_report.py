"""The evaluation as one self-contained HTML page: figures, per-tag recall, and every failure shown
side by side (query, what the system answered, what it should have answered).

Thumbnails are embedded as data: URIs so the page opens from disk and can be archived with the run.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

THUMB = 160
SUMMARY_KEYS = ("model", "queries", "pairs", "recall@1", "recall@5", "recall@10", "mAP", "open_set_queries",
                "false_match_rate", "match_recall", "latency_ms_p50", "latency_ms_p95")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{display:inline-block;margin:0 8px 0 0;text-align:center}
figcaption{font-size:12px;max-width:170px;word-break:break-all}img{max-width:160px;max-height:160px}
.match{color:#0a6b2b;font-weight:bold}.possible{color:#9a6a00;font-weight:bold}.no_match{color:#777}
"""


def thumbnail_uri(path: Path) -> str:
    """A small JPEG of the photo as a data: URI; a photo that cannot be read gets no picture."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
    except (OSError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(path: Path | None, caption: str) -> str:
    uri = thumbnail_uri(path) if path else ""
    img = f'<img src="{uri}" alt="">' if uri else "<div>(no photo)</div>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_report(result: dict, pack: Path, reference_of: dict[str, str]) -> str:
    """``reference_of``: object id -> path (relative to the pack) of one of its reference photos."""
    pack = Path(pack)
    esc = html.escape

    def ref(obj: str | None) -> Path | None:
        return pack / reference_of[obj] if obj in reference_of else None

    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(result.get(k)))}</td></tr>" for k in SUMMARY_KEYS)
    tags = "".join(
        f"<tr><td>{esc(t)}</td><td>{s['pairs']}</td><td>{s['recall@1']}</td></tr>"
        for t, s in result.get("per_tag", {}).items()
    )
    rows = []
    failures = result.get("failures") if isinstance(result.get("failures"), list) else []
    for f in failures:
        got = f.get("got") or []
        answer = got[0] if got else None
        verdict = f.get("got_verdict", "")
        score = f.get("got_score")
        kind = "false match (object not registered)" if f.get("kind") == "false_match" else (
            f"expected object at rank {f.get('rank')}" if f.get("rank") else "expected object not in the results")
        cells = [
            _figure(pack / f["query"], f"query {f['query']}"),
            _figure(ref(answer), f"answer: {answer} " + (f"({score:.3f}, {verdict})" if score is not None else "")),
            _figure(ref(f.get("expected")) if f.get("expected") else None,
                    f"expected: {f.get('expected') or 'none (unregistered)'}"),
        ]
        rows.append(f'<tr><td>{esc(kind)}<br><span class="{esc(verdict)}">{esc(verdict)}</span></td>'
                    f"<td>{''.join(cells)}</td></tr>")
    errors = "".join(f"<li>{esc(e['query'])}: {esc(e['error'])}</li>" for e in result.get("errors", []))
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>heritage-match evaluation: {esc(pack.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Evaluation of {esc(pack.name)}</h1><table>{summary}</table>"
        f"<h2>Recall@1 per tag</h2><table><tr><th>tag</th><th>pairs</th><th>recall@1</th></tr>{tags}</table>"
        f"<h2>Failures ({len(rows)})</h2><table>{''.join(rows) or '<tr><td>none</td></tr>'}</table>"
        + (f"<h2>Queries that could not be read</h2><ul>{errors}</ul>" if errors else "")
        + "</body></html>"
    )
