"""``report.html``: one self-contained page for the people who confirm candidates.

Candidates are grouped by artefact; each shows the listing photo beside the registry photo, the
listing's text and link. Thumbnails are embedded as data: URIs, so the page opens from disk with no
server. Listing text is hostile input: everything is escaped, links are followed only for http(s),
and a Content-Security-Policy lets the page load nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path

from app.jobs.scan.sources import is_url

DESCRIPTION_CHARS = 600

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin:0 0 .4em}
.summary{color:#555} .controls{margin:1em 0}
.artefact{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.candidate{display:flex;gap:1em;border-top:1px solid #eee;padding:.8em 0}
.photos{display:flex;gap:.5em} figure{margin:0;text-align:center;font-size:12px;color:#666}
img{max-width:200px;max-height:200px;border:1px solid #ddd}
.match{color:#0a0;font-weight:bold} .possible{color:#b80;font-weight:bold}
.text{max-width:60em} .desc{white-space:pre-wrap;color:#444}
"""

SCRIPT = """
function sortBy(order){
  const root=document.getElementById('artefacts');
  const sign=order==='asc'?1:-1;
  const groups=[...root.children];
  for(const g of groups){
    const list=g.querySelector('.candidates');
    [...list.children].sort((a,b)=>sign*(a.dataset.score-b.dataset.score)).forEach(c=>list.appendChild(c));
  }
  groups.sort((a,b)=>sign*(a.dataset.score-b.dataset.score)).forEach(g=>root.appendChild(g));
}
"""


def write_report(path: Path, matches: list[dict], thumbs_dir: Path, registry_thumbs: dict[int, bytes],
                 summary: dict) -> None:
    Path(path).write_text(render_report(matches, thumbs_dir, registry_thumbs, summary), encoding="utf-8",
                          errors="backslashreplace")  # a name that is not UTF-8 must not stop the report


def render_report(matches: list[dict], thumbs_dir: Path, registry_thumbs: dict[int, bytes], summary: dict) -> str:
    by_artefact: dict[int, list[dict]] = defaultdict(list)
    for m in matches:
        by_artefact[m["artefact_id"]].append(m)
    groups = sorted(by_artefact.values(), key=lambda ms: (-max(m["score"] for m in ms), ms[0]["artefact_id"]))
    e = _esc
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        "<title>heritage-match scan report</title>", f"<style>{STYLE}</style>", f"<script>{SCRIPT}</script>",
        "</head><body>", "<h1>heritage-match scan report</h1>",
        f"<p class='summary'>Dump {e(summary.get('dump', ''))}: {summary.get('listings', 0)} listings, "
        f"{summary.get('images', 0)} photos, {summary.get('errors', 0)} errors; "
        f"{len(matches)} candidates on {len(groups)} artefacts "
        f"({summary.get('candidates', {}).get('match', 0)} match, "
        f"{summary.get('candidates', {}).get('possible', 0)} possible). Model {e(summary.get('model', ''))}.</p>",
        "<p class='controls'>Sort by score: <button onclick=\"sortBy('desc')\">highest first</button> "
        "<button onclick=\"sortBy('asc')\">lowest first</button></p>",
        "<div id='artefacts'>",
    ]
    if not groups:
        parts.append("<p>No candidates.</p>")
    for ms in groups:
        first = ms[0]
        best = max(m["score"] for m in ms)
        parts.append(
            f"<section class='artefact' data-score='{best:.6f}'><h2>{e(first['inventory_number'])} "
            f"&mdash; {e(first['artefact_title'] or '')}</h2>"
            f"<div>{e(first['institution'])} &middot; status {e(first['status'])} &middot; "
            f"{len(ms)} candidate(s), best score {best:.3f}</div><div class='candidates'>"
        )
        for m in sorted(ms, key=lambda m: (-m["score"], m["seq"], m["image_index"])):
            parts.append(_candidate(m, thumbs_dir, registry_thumbs))
        parts.append("</div></section>")
    parts.append("</div></body></html>\n")
    return "".join(parts)


def _candidate(m: dict, thumbs_dir: Path, registry_thumbs: dict[int, bytes]) -> str:
    e = _esc
    listing = m.get("listing") or {}
    url = listing.get("url", "")
    link = (f"<a href='{e(url)}' rel='noopener noreferrer nofollow' target='_blank'>{e(url)}</a>"
            if is_url(url) else e(url))
    desc = listing.get("description", "")
    if len(desc) > DESCRIPTION_CHARS:
        desc = desc[:DESCRIPTION_CHARS] + "..."
    facts = " &middot; ".join(e(f"{k}: {listing[k]}") for k in ("price", "currency", "seller", "platform", "listed_at")
                              if listing.get(k))
    listing_img = _img(_read(thumbs_dir / f"{m['image_sha256']}.jpg"), "listing photo")
    registry_img = _img(registry_thumbs.get(m["registry_photo_id"]), "registry photo")
    return (
        f"<div class='candidate' data-score='{m['score']:.6f}'>"
        f"<div class='photos'><figure>{listing_img}<figcaption>listing {e(m['image'])}</figcaption></figure>"
        f"<figure>{registry_img}<figcaption>registry photo {m['registry_photo_id']}</figcaption></figure></div>"
        f"<div class='text'><div><span class='{e(m['verdict'])}'>{e(m['verdict'])}</span> "
        f"score {m['score']:.3f}</div>"
        f"<div><b>{e(listing.get('title', ''))}</b> (listing {e(m['listing_id'])})</div>"
        f"<div>{facts}</div><div>{link}</div><div class='desc'>{e(desc)}</div></div></div>"
    )


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return f"<div>({alt} unavailable)</div>"
    return f"<img alt='{alt}' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _esc(value) -> str:
    return html.escape(str(value), quote=True)
