"""Streaming writers for a scan's outputs, and the final pass that puts them in order.

While scanning, candidates and errors are appended as groups finish (in whatever order the engine
delivers them) and fsynced before the checkpoint records the groups. At the end ``finalize`` rewrites
``matches.jsonl`` and ``errors.jsonl`` in dump order without duplicates (a group redone after a kill
was appended twice) and derives ``matches.csv`` from them, so a resumed scan's files equal an
uninterrupted one's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Callable

from app.core.files import atomic_write, private_dir
from app.core.text import visible_controls
from app.jobs.scan.checkpoint import GroupStats, open_append
from app.jobs.scan.reader import Listing, RowError
from app.jobs.scan.work import GroupResult

MATCHES = "matches.jsonl"
MATCHES_CSV = "matches.csv"
ERRORS = "errors.jsonl"
THUMBS = "thumbs"
CSV_COLUMNS = ("listing_id", "image", "artefact_id", "inventory_number", "institution", "artefact_title",
               "score", "verdict", "registry_photo_id", "region", "listing_title", "listing_url", "image_sha256")


class ScanOutputs:
    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        private_dir(self.dir / THUMBS)  # listing matches and photos: this user's only, as the data directory
        self._matches = open_append(self.dir / MATCHES)
        self._errors = open_append(self.dir / ERRORS)

    def write_group(self, result: GroupResult) -> GroupStats:
        stats = GroupStats(result.number)
        for lr in result.listings:
            item = lr.item
            if isinstance(item, RowError):
                stats.row_errors += 1
                self._errors.write(_line({"seq": item.seq, "where": item.where, "listing_id": None,
                                          "image_index": None, "image": None, "reason": item.reason}))
                continue
            stats.listings += 1
            for img in lr.images:
                if img.error:
                    stats.image_errors += 1
                    self._errors.write(_line({"seq": item.seq, "where": item.where, "listing_id": item.listing_id,
                                              "image_index": img.index, "image": img.ref, "reason": img.error}))
                    continue
                stats.images += 1
                if img.thumb:
                    _write_once(self.dir / THUMBS / f"{img.sha256}.jpg", img.thumb)
                for rank, r in enumerate(img.results, start=1):
                    self._matches.write(_line(match_row(item, img, rank, r)))
            if item.more_images:  # once per listing, after its photos: the index is the first one left out
                stats.image_errors += 1
                self._errors.write(_line({"seq": item.seq, "where": item.where, "listing_id": item.listing_id,
                                          "image_index": len(item.images), "image": None,
                                          "reason": too_many_images(item)}))
        return stats

    def flush(self) -> None:
        """Make what was written durable; the checkpoint may then record the groups."""
        for f in (self._matches, self._errors):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._matches.close()
        self._errors.close()


def too_many_images(listing: Listing) -> str:
    named, kept = len(listing.images) + listing.more_images, len(listing.images)
    return (f"the listing names {named} photos; only the first {kept} are searched "
            f"(HM_SCAN_MAX_IMAGES_PER_LISTING): the other {listing.more_images} were neither read nor decoded")


def match_row(listing: Listing, img, rank: int, r: dict) -> dict:
    return {
        "seq": listing.seq, "listing_id": listing.listing_id, "image_index": img.index, "image": img.ref,
        "image_sha256": img.sha256, "rank": rank,
        "artefact_id": r["artefact_id"], "inventory_number": r["inventory_number"],
        "institution": r["institution"], "artefact_title": r["title"], "status": r["status"],
        "score": r["score"], "verdict": r["verdict"], "registry_photo_id": r["photo_id"],
        "region": r["region"], "evidence": r["evidence"], "listing": listing.fields,
    }


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL output; a line torn by a kill is skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        continue
    except FileNotFoundError:
        pass
    return rows


def discard_unrecorded(out_dir: Path, done: set[int], group_size: int) -> int:
    """Before a resumed scan appends: drop the rows of groups the checkpoint never recorded.

    A kill after a group's rows were written but before the checkpoint recorded it leaves them in the
    files; the group is done again, and its outcome may differ (a URL that failed may answer now).
    Only the recorded attempt may stay. Returns the rows dropped.
    """
    dropped = 0
    for name in (MATCHES, ERRORS):
        path = Path(out_dir) / name
        if not path.exists():
            continue
        rows = read_jsonl(path)
        kept = [r for r in rows if r["seq"] // group_size in done]
        if len(kept) != len(rows):
            atomic_write(path, _utf8("".join(_line(r) for r in kept)))
        dropped += len(rows) - len(kept)
    return dropped


def finalize_rows(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Rewrite matches.jsonl and errors.jsonl in dump order, deduplicated; write matches.csv."""
    out_dir = Path(out_dir)
    matches = _unique(read_jsonl(out_dir / MATCHES), lambda r: (r["seq"], r["image_index"], r["rank"]))
    errors = _unique(read_jsonl(out_dir / ERRORS),
                     lambda r: (r["seq"], -1 if r["image_index"] is None else r["image_index"]))
    atomic_write(out_dir / MATCHES, _utf8("".join(_line(r) for r in matches)))
    atomic_write(out_dir / ERRORS, _utf8("".join(_line(r) for r in errors)))
    atomic_write(out_dir / MATCHES_CSV, _utf8(matches_csv(matches)))
    return matches, errors


def matches_csv(matches: list[dict]) -> str:
    """The candidates for spreadsheets: every cell quoted, and no cell, nor any part of one after a
    separator a spreadsheet might split on, can start a formula (``_cell``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(CSV_COLUMNS)
    for r in matches:
        region = r["region"]
        w.writerow([
            _cell(r["listing_id"]), _cell(r["image"]), r["artefact_id"], _cell(r["inventory_number"]),
            _cell(r["institution"]), _cell(r["artefact_title"] or ""), f"{r['score']:.6f}", r["verdict"],
            r["registry_photo_id"],
            f"{region['x0']},{region['y0']},{region['x1']},{region['y1']}" if region else "",
            _cell(r["listing"].get("title", "")), _cell(r["listing"].get("url", "")), r["image_sha256"],
        ])
    return buf.getvalue()


# Where a spreadsheet may start a cell: the start of the text, or after any character it might split
# on (',' and ';' are the separators of English and of French or German locales, tab, line ends, '|').
# A cell starting with = + - @ (or their fullwidth forms, which some spreadsheets fold) is a formula.
_FORMULA_START = re.compile(r"(^|[,;\t\r\n|])( *)(?=[=+\-@\uff1d\uff0b\uff0d\uff20])")


def _cell(text: str) -> str:
    """Listing text is hostile: made safe for a spreadsheet, whatever separator it splits the line on.

    Every place a formula could start gets a ``'`` (a spreadsheet's mark for text): the start of the
    cell and the start of every part after a separator (``item;=cmd|...`` splits on ';' into a formula
    cell in a French spreadsheet). A cell starting with a tab or a carriage return gets one too.
    Bidirectional and terminal controls are made visible (``‹U+202E›``), as in the report.
    """
    text = _FORMULA_START.sub(r"\1'\2", visible_controls(str(text)))
    return "'" + text if text[:1] in ("\t", "\r") else text


def _unique(rows: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    by_key: dict[tuple, dict] = {}
    for r in rows:
        # A group's rows can be there twice only when a kill came between its checkpoint record and the
        # next group (the resume drops unrecorded groups' rows first): the two writes are the same.
        by_key.setdefault(key(r), r)
    return [by_key[k] for k in sorted(by_key)]


def _utf8(text: str) -> bytes:
    """A file or member name that is not UTF-8 (held as surrogates) is written as \\udcXX, not a crash."""
    return text.encode("utf-8", "backslashreplace")


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n"


def _write_once(path: Path, data: bytes) -> None:
    if not path.exists():
        atomic_write(path, data)
