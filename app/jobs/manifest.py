"""Registry import and export: one artefact per row, JSONL or CSV.

A row needs ``inventory_number`` and ``photos`` (paths relative to the manifest; ``|``-separated
in CSV); any other record field may be given by its API name. A bad row is reported with its line
number and skipped; the rest imports. Re-importing the same manifest changes nothing.
"""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pydantic import ValidationError

from app.core.errors import AppError
from app.core.files import sha256_hex
from app.core.jsonl import object_lines
from app.registry.photos import EXTENSIONS
from app.schemas import RECORD_FIELDS, ArtefactCreate
from app.service import MatchingService, PhotoInput

EXPORT_COLUMNS = ("inventory_number", "institution",
                  *(n for n in RECORD_FIELDS if n not in ("inventory_number", "institution")), "photos")


@dataclass
class RowError:
    line: int
    message: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    photos_added: int = 0
    errors: list[RowError] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
            "photos_added": self.photos_added,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
        }


class ManifestUnreadable(AppError):
    code = "manifest_unreadable"
    status_code = 400


def check_text(path: Path) -> None:
    """Refuse, before any row is imported, a manifest that is not UTF-8 text (a spreadsheet saved as
    Latin-1 or Windows-1252, say), naming the line of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk.count(b"\n", 0, exc.start)
                raise ManifestUnreadable(
                    f"{Path(path).name} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} on line {line}): save it "
                    "as UTF-8 (in a spreadsheet: \"CSV UTF-8\") and import it again. Nothing was imported."
                ) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ManifestUnreadable(f"{Path(path).name} ends in the middle of a UTF-8 character (line {line}): "
                                     "save it as UTF-8 and import it again. Nothing was imported.") from None


def read_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line number, row, error) for each row of a JSONL or CSV manifest.

    Raises ``ManifestUnreadable`` first when the file is not UTF-8 text: no row is read then.
    """
    path = Path(path)
    check_text(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if row.get(None):  # more cells than the header has columns: DictReader keeps them under None
                    assert reader.fieldnames is not None  # read with the first row
                    yield reader.line_num, None, (
                        f"{len(reader.fieldnames) + len(row[None])} cells, but the header has "
                        f"{len(reader.fieldnames)} columns: put a value that holds a comma in double quotes")
                    continue
                clean = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
                clean = {k: v for k, v in clean.items() if v not in ("", None)}
                if "photos" in clean:
                    clean["photos"] = [p.strip() for p in clean["photos"].split("|") if p.strip()]
                yield reader.line_num, clean, None
        return
    with open(path, encoding="utf-8-sig") as f:
        yield from object_lines(f)


def _photo_list(row: dict) -> list[dict]:
    """``photos`` as [{"path": ..., "view": ...}]: plain strings or objects are accepted."""
    photos = row.get("photos")
    if isinstance(photos, str):
        photos = [p for p in photos.split("|") if p.strip()]
    if not isinstance(photos, list) or not photos:
        raise ValueError("`photos` is required: a list of photo paths relative to the manifest")
    out = []
    for p in photos:
        if isinstance(p, str):
            out.append({"path": p, "view": None})
        elif isinstance(p, dict) and isinstance(p.get("path"), str):
            out.append({"path": p["path"], "view": p.get("view")})
        else:
            raise ValueError(f"bad photo entry {p!r}")
    return out


def import_manifest(
    service: MatchingService, path: Path, progress: Callable[[int], None] | None = None
) -> ImportReport:
    path = Path(path)
    base = path.parent.resolve()
    report = ImportReport()
    for line, row, error in read_rows(path):
        try:
            if error:
                raise ValueError(error)
            assert row is not None  # a row comes with no error
            _import_row(service, base, row, report)
        except (ValueError, AppError, OSError) as exc:
            report.errors.append(RowError(line, getattr(exc, "message", None) or str(exc)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            report.errors.append(RowError(line, f"{where}: {first.get('msg')}"))
        if progress:
            progress(1)
    return report


def _import_row(service: MatchingService, base: Path, row: dict, report: ImportReport) -> None:
    photos = _photo_list(row)
    unknown = set(row) - set(RECORD_FIELDS) - {"photos"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    record = ArtefactCreate(**{k: v for k, v in row.items() if k != "photos"})
    fields = record.model_dump(mode="python")
    files = []
    for p in photos:
        file = (base / p["path"]).resolve()
        if not file.is_file():
            raise ValueError(f"photo not found: {p['path']}")
        files.append((file.read_bytes(), p["view"], p["path"]))

    existing = service.store.find_artefact(fields["institution"], fields["inventory_number"])
    if existing is None:
        inputs = [PhotoInput(data, view, label) for data, view, label in files]
        service.register_artefact(fields, inputs)
        report.created += 1
        report.photos_added += len(inputs)
        return
    changes = {k: v for k, v in fields.items() if k in row and getattr(existing, k) != v}
    have = {p.sha256 for p in existing.photos}
    new = [PhotoInput(d, v, lbl) for d, v, lbl in files if sha256_hex(d) not in have]
    if new:
        service.add_photos(existing.id, new)
        report.photos_added += len(new)
    if changes:
        service.update_artefact(existing.id, changes)
    if changes or new:
        report.updated += 1
    else:
        report.unchanged += 1


def export_manifest(service: MatchingService, out: Path) -> int:
    """Write OUT (.jsonl or .csv) with the photos copied to ``photos/`` beside it."""
    out = Path(out)
    photo_dir = out.parent / "photos"
    photo_dir.mkdir(parents=True, exist_ok=True)
    from app.registry.store import ArtefactFilter

    rows = []
    offset = 0
    while True:
        page, _ = service.store.list_artefacts(ArtefactFilter(), offset=offset, limit=500)
        if not page:
            break
        for a in page:
            photo_paths = []
            for p in a.photos:
                name = f"{p.sha256}.{EXTENSIONS.get(p.format, 'bin')}"
                target = photo_dir / name
                if not target.exists():
                    # The bytes, not a file copy: the photo store may be the database (HM_PHOTO_STORE).
                    target.write_bytes(service.store.photos.read(p.sha256, p.format))
                photo_paths.append({"path": f"photos/{name}", "view": p.view})
            row = {k: _plain(getattr(a, k)) for k in EXPORT_COLUMNS if k != "photos"}
            row["photos"] = photo_paths
            rows.append(row)
        offset += len(page)
    if out.suffix.lower() == ".csv":
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
            for row in rows:
                row = {k: ("" if v is None else v) for k, v in row.items()}
                row["photos"] = "|".join(p["path"] for p in row["photos"])
                writer.writerow(row)
    else:
        with open(out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n")
    return len(rows)


def _plain(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value"):
        return value.value
    return value
