"""``report.html``: one self-contained page for the people who confirm candidates.

Candidates are grouped by artefact; each shows the listing photo beside the registry photo, the
listing's text and link. Thumbnails are embedded as data: URIs, so the page opens from disk with no
server. Listing text is hostile input: everything is escaped, links are followed only for http(s),
and a Content-Security-Policy lets the page load nothing from anywhere. Bidirectional and terminal
controls in any text shown are made visible (``visible_controls``: a U+202E cannot make
``\u202eexe.gpj`` read ``jpg.exe``), and each piece of listing text is isolated (``<bdi>``) so
right-to-left text cannot reorder what is around it.
The page is the template ``app/jobs/templates/scan_report.html``; this module computes what it shows.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from app.core.files import atomic_write
from app.core.text import url_without_controls, visible_controls
from app.jobs import reports
from app.jobs.scan.sources import is_url

DESCRIPTION_CHARS = 600
FACTS = ("price", "currency", "seller", "platform", "listed_at")


class Candidate(NamedTuple):
    score: float
    verdict: str
    image: str
    listing_id: str
    listing_photo: str  # a data: URI, or "" when the thumbnail is missing
    registry_photo_id: int
    registry_photo: str
    title: str
    facts: list[tuple[str, str]]  # the listing's price, seller... that it has
    url: str  # the link's target: the address, its controls %-encoded
    shown_url: str  # the address as displayed, its controls made visible
    link: bool  # only an http(s) address becomes a link
    description: str


class Artefact(NamedTuple):
    inventory_number: str
    title: str
    institution: str
    status: str
    best: float
    candidates: list[Candidate]  # best first


def write_report(path: Path, matches: list[dict], thumbs_dir: Path, registry_thumbs: dict[int, bytes],
                 summary: dict) -> None:
    html = render_report(matches, thumbs_dir, registry_thumbs, summary)
    # backslashreplace: a name that is not UTF-8 must not stop the report; atomic_write: 0600, never half-written
    atomic_write(Path(path), html.encode("utf-8", errors="backslashreplace"))


def render_report(matches: list[dict], thumbs_dir: Path, registry_thumbs: dict[int, bytes], summary: dict) -> str:
    by_artefact: dict[int, list[dict]] = defaultdict(list)
    for m in matches:
        by_artefact[m["artefact_id"]].append(m)
    groups = sorted(by_artefact.values(), key=lambda ms: (-max(m["score"] for m in ms), ms[0]["artefact_id"]))
    candidates = summary.get("candidates", {})
    return reports.render(
        "scan_report.html",
        dump=_shown(summary.get("dump", "")),
        listings=summary.get("listings", 0),
        images=summary.get("images", 0),
        errors=summary.get("errors", 0),
        candidates=len(matches),
        matched=candidates.get("match", 0),
        possible=candidates.get("possible", 0),
        model=_shown(summary.get("model", "")),
        artefacts=[_artefact(ms, thumbs_dir, registry_thumbs) for ms in groups],
    )


def _artefact(ms: list[dict], thumbs_dir: Path, registry_thumbs: dict[int, bytes]) -> Artefact:
    first = ms[0]
    return Artefact(
        inventory_number=_shown(first["inventory_number"]),
        title=_shown(first["artefact_title"] or ""),
        institution=_shown(first["institution"]),
        status=_shown(first["status"]),
        best=max(m["score"] for m in ms),
        candidates=[_candidate(m, thumbs_dir, registry_thumbs)
                    for m in sorted(ms, key=lambda m: (-m["score"], m["seq"], m["image_index"]))],
    )


def _candidate(m: dict, thumbs_dir: Path, registry_thumbs: dict[int, bytes]) -> Candidate:
    listing = m.get("listing") or {}
    url = listing.get("url", "")
    desc = listing.get("description", "")
    if len(desc) > DESCRIPTION_CHARS:
        desc = desc[:DESCRIPTION_CHARS] + "..."
    return Candidate(
        score=m["score"],
        verdict=m["verdict"],
        image=_shown(m["image"]),
        listing_id=_shown(m["listing_id"]),
        listing_photo=_data_uri(_read(thumbs_dir / f"{m['image_sha256']}.jpg")),
        registry_photo_id=m["registry_photo_id"],
        registry_photo=_data_uri(registry_thumbs.get(m["registry_photo_id"])),
        title=_shown(listing.get("title", "")),
        facts=[(k, _shown(listing[k])) for k in FACTS if listing.get(k)],
        url=url_without_controls(url),
        shown_url=_shown(url),
        link=is_url(url),
        description=_shown(desc),
    )


def _shown(text: object) -> str:
    return visible_controls(str(text))


def _data_uri(data: bytes | None) -> str:
    """The JPEG as a data: URI, or "" when there is none (the page says the photo is unavailable)."""
    return f"data:image/jpeg;base64,{base64.b64encode(data).decode()}" if data else ""


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
