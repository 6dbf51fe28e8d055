"""Reading listing dumps as a stream: JSONL or CSV files, a folder of images, or a tar/zip of either.

Every item gets a ``seq`` (its position in the dump): the key of the checkpoint and of the output
order, so a resumed scan and an uninterrupted one write the same files. A malformed row becomes a
``RowError`` and the stream goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from app.core.jsonl import parse_json_line
from app.jobs.scan.sources import (
    FolderSource,
    ImageSource,
    ImageUnavailable,
    TarSource,
    ZipSource,
    is_image_name,
    safe_name,
)

LISTING_FIELDS = ("title", "description", "url", "price", "currency", "seller", "platform", "listed_at")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_TEXT = 20_000  # a listing's description beyond this is cut: the report stays readable
CSV_CELL_LIMIT = 16 << 20  # csv's own limit (128 KiB) would stop the dump at one long description
# Manifests are decoded with errors="replace": a row holding the replacement character had bytes that
# are not UTF-8 (a spreadsheet's Windows-1252 export, say) and its photo names cannot be trusted.
UNDECODED = "\ufffd"
NOT_UTF8 = "the row holds bytes that are not UTF-8 text: save the dump as UTF-8"


class DumpError(Exception):
    """The dump as a whole cannot be read (unknown kind, two manifests in one archive...)."""


@dataclass(frozen=True)
class Listing:
    seq: int
    listing_id: str
    fields: dict  # LISTING_FIELDS present in the row, as text
    images: tuple[str, ...]  # as written in the dump: relative paths or URLs
    where: str  # "line 7" or the image's name, for error messages


@dataclass(frozen=True)
class RowError:
    seq: int
    where: str
    reason: str


class Dump:
    """One dump: its items in order and the source its image bytes are read from."""

    def __init__(self, path: Path, kind: str, source: ImageSource, manifest: str | None = None):
        self.path = path
        self.kind = kind  # jsonl, csv, folder, tar, zip
        self.source = source
        self.manifest = manifest  # the manifest member inside an archive

    def items(self) -> Iterator[Listing | RowError]:
        if self.kind in ("jsonl", "csv"):
            with open(self.path, encoding="utf-8-sig", errors="replace", newline="") as f:
                yield from parse_manifest(f, self.kind)
        elif self.kind == "folder":
            root = self.path.resolve()
            for seq, name in enumerate(_folder_images(root)):
                yield Listing(seq, name, {}, (name,), name)
        elif self.kind == "tar":
            yield from self._tar_items()
        else:
            yield from self._zip_items()

    def count(self) -> int:
        """How many items ``items()`` yields (for the progress bar's total and ETA)."""
        if self.kind == "folder":
            return sum(1 for _ in _folder_images(self.path.resolve()))
        return sum(1 for _ in self.items())

    def _tar_items(self) -> Iterator[Listing | RowError]:
        with tarfile.open(self.path, "r:*") as tar:
            if self.manifest:
                raw = tar.extractfile(tar.getmember(self.manifest))
                assert raw is not None  # open_dump picked the manifest among the regular files
                with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as f:
                    yield from parse_manifest(f, _manifest_kind(self.manifest))
                return
            seq = 0
            for m in tar:  # streamed in archive order: a tar of images is read in one pass
                item = _member_item(seq, m.name, m.isreg(), m.issym() or m.islnk())
                if item is not None:
                    yield item
                    seq += 1

    def _zip_items(self) -> Iterator[Listing | RowError]:
        with zipfile.ZipFile(self.path) as zf:
            if self.manifest:
                with io.TextIOWrapper(zf.open(self.manifest), encoding="utf-8-sig", errors="replace", newline="") as f:
                    yield from parse_manifest(f, _manifest_kind(self.manifest))
                return
            seq = 0
            for info in zf.infolist():
                item = _member_item(seq, info.filename, not info.is_dir(), False)
                if item is not None:
                    yield item
                    seq += 1

    def identity(self) -> str:
        """Cheap fingerprint of the dump: what a checkpoint is tied to."""
        h = hashlib.sha256(self.kind.encode())
        if self.kind == "folder":
            root = self.path.resolve()
            for name in _folder_images(root):  # a name that is not UTF-8 keeps its bytes (surrogateescape)
                h.update(f"{name}\0{os.path.getsize(root / name)}\n".encode("utf-8", "surrogateescape"))
            return h.hexdigest()
        size = self.path.stat().st_size
        h.update(str(size).encode())
        with open(self.path, "rb") as f:  # head and tail: enough to tell dumps apart without reading GBs
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
            elif size > 1 << 20:
                h.update(f.read())
        return h.hexdigest()


def open_dump(path: Path, max_bytes: int) -> Dump:
    path = Path(path)
    if not path.exists():
        raise DumpError(f"{path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        return Dump(path, "folder", FolderSource(path, max_bytes))
    if name.endswith((".jsonl", ".ndjson")):
        return Dump(path, "jsonl", FolderSource(path.parent, max_bytes))
    if name.endswith(".csv"):
        return Dump(path, "csv", FolderSource(path.parent, max_bytes))
    if name.endswith(TAR_SUFFIXES):
        try:
            with tarfile.open(path, "r:*") as tar:
                manifest = _one_manifest(m.name for m in tar if m.isreg())
        except tarfile.TarError as exc:
            raise DumpError(f"{path} is not a readable tar archive ({exc})") from exc
        return Dump(path, "tar", TarSource(path, _base_of(manifest), max_bytes), manifest)
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                manifest = _one_manifest(i.filename for i in zf.infolist() if not i.is_dir())
        except zipfile.BadZipFile as exc:
            raise DumpError(f"{path} is not a readable zip archive ({exc})") from exc
        return Dump(path, "zip", ZipSource(path, _base_of(manifest), max_bytes), manifest)
    raise DumpError(f"{path}: give a .jsonl or .csv dump, a folder of images, or a .tar/.zip of either")


def parse_manifest(f: TextIO, kind: str) -> Iterator[Listing | RowError]:
    if kind == "csv":
        yield from _csv_items(f)
    else:
        yield from _jsonl_items(f)


def _jsonl_items(f: TextIO) -> Iterator[Listing | RowError]:
    seq = 0
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        where = f"line {line_no}"
        if UNDECODED in line:
            yield RowError(seq, where, NOT_UTF8)
        else:
            row, error = parse_json_line(line)
            yield RowError(seq, where, error) if error else _listing(seq, row, where)
        seq += 1


def _csv_items(f: TextIO) -> Iterator[Listing | RowError]:
    # A listing's description may be long: cells are cut to MAX_TEXT afterwards, not refused by csv.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_CELL_LIMIT))
    reader = csv.DictReader(f)
    try:
        if not reader.fieldnames:  # reads the header: line numbers count from it
            return
    except csv.Error as exc:
        yield RowError(0, "line 1", f"the CSV header cannot be read ({exc})")
        return
    seq = 0
    skipped = 0  # lines of unreadable rows, which the reader's line count leaves out
    while True:
        start = reader.line_num + skipped + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # one unreadable row: reported, and the reader goes on with the next line
            yield RowError(seq, f"line {start}", f"the CSV row cannot be read ({exc})")
            seq += 1
            skipped += 1
            continue
        end = reader.line_num + skipped
        where = f"line {start}" if end == start else f"lines {start}-{end}"
        if None in row:  # more cells than columns
            yield RowError(seq, where, f"the row has {len(row) - 1 + len(row[None])} cells, the header "
                           f"{len(reader.fieldnames or [])}")
        elif any(UNDECODED in (v or "") for v in row.values()):
            yield RowError(seq, where, NOT_UTF8)
        else:
            # Header names as a spreadsheet writes them: " Images", "Title".
            clean = {k.strip().lower(): v for k, v in row.items() if k}
            clean["images"] = [p for p in (clean.get("images") or "").split("|") if p.strip()]
            yield _listing(seq, clean, where)
        seq += 1


def _listing(seq: int, row, where: str) -> Listing | RowError:
    if not isinstance(row, dict):
        return RowError(seq, where, "a row must be a JSON object")
    listing_id = row.get("listing_id")
    if listing_id is None or isinstance(listing_id, (dict, list, bool)) or not str(listing_id).strip():
        return RowError(seq, where, "listing_id is missing")
    images = row.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        return RowError(seq, where, "images must be a list of paths or URLs")
    if not any(i.strip() for i in images):  # nothing to check: say so rather than pass it as clean
        return RowError(seq, where, "the listing has no photos (`images` is missing or empty)")
    fields = {}
    for name in LISTING_FIELDS:
        value = row.get(name)
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        fields[name] = text.strip()[:MAX_TEXT]
    return Listing(seq, str(listing_id).strip(), fields, tuple(i.strip() for i in images if i.strip()), where)


def _folder_images(root: Path) -> Iterable[str]:
    """Image files under ``root`` in a stable order, as relative POSIX paths; symlinks are not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for fn in sorted(filenames):
            if is_image_name(fn) and not fn.startswith("."):
                yield fn if rel == "." else posixpath.join(*Path(rel).parts, fn)


def _member_item(seq: int, name: str, regular: bool, link: bool) -> Listing | RowError | None:
    """An archive member as a listing of one photo; None for what is no photo (folders, macOS leftovers).

    A photo that is a link, or whose name would leave the archive (``../``, absolute), is never read and
    is reported, as the README says: "refused for that photo".
    """
    if not is_image_name(name) or "__MACOSX" in name or posixpath.basename(name).startswith("."):
        return None
    if link:
        return RowError(seq, name, "the archive member is a link, not a photo: not read")
    if not regular:
        return None
    try:
        safe = safe_name(name)
    except ImageUnavailable as exc:
        return RowError(seq, name, f"{exc}: not read")
    return Listing(seq, safe, {}, (safe,), safe)


def _one_manifest(names: Iterable[str]) -> str | None:
    manifests = [n for n in names if n.lower().endswith(MANIFEST_SUFFIXES) and "__MACOSX" not in n]
    if len(manifests) > 1:
        raise DumpError(f"the archive holds several listing files ({', '.join(sorted(manifests)[:5])}): keep one")
    if manifests:
        try:
            safe_name(manifests[0])
        except ImageUnavailable as exc:
            raise DumpError(f"the archive's listing file {manifests[0]!r} has an unsafe name") from exc
    return manifests[0] if manifests else None


def _base_of(manifest: str | None) -> str:
    return posixpath.dirname(safe_name(manifest)) if manifest else ""


def _manifest_kind(name: str) -> str:
    return "csv" if name.lower().endswith(".csv") else "jsonl"
