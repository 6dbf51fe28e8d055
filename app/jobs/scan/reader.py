"""Reading listing dumps as a stream: JSONL or CSV files, a folder of images, or a tar/zip of either.

Every item gets a ``seq`` (its position in the dump): the key of the checkpoint and of the output
order, so a resumed scan and an uninterrupted one write the same files. A malformed row becomes a
``RowError`` and the stream goes on.

A dump is hostile input and is read within limits: a manifest line (a CSV row, whose quoted cells may
span lines) longer than ``HM_SCAN_MAX_LINE_KB`` is read through in chunks without being held, and
reported; a listing's photos beyond ``HM_SCAN_MAX_IMAGES_PER_LISTING`` are dropped before anything
reads them, and counted (``Listing.more_images``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, NamedTuple

from app.core.config import Settings
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
CSV_CELL_LIMIT = 16 << 20  # the most csv's field limit is raised to (its own 128 KiB is below a long row)
# The settings' defaults (HM_SCAN_MAX_LINE_KB, HM_SCAN_MAX_IMAGES_PER_LISTING), for callers without settings.
MAX_LINE_BYTES = Settings.model_fields["scan_max_line_kb"].default * 1024
MAX_IMAGES = Settings.model_fields["scan_max_images_per_listing"].default
READ_CHUNK = 1 << 16  # bytes read at a time from a manifest
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
    images: tuple[str, ...]  # as written in the dump: relative paths or URLs (at most the per-listing limit)
    where: str  # "line 7" or the image's name, for error messages
    more_images: int = 0  # photos named beyond the per-listing limit: neither read nor decoded


@dataclass(frozen=True)
class RowError:
    seq: int
    where: str
    reason: str


class Dump:
    """One dump: its items in order and the source its image bytes are read from."""

    def __init__(self, path: Path, kind: str, source: ImageSource, manifest: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES, max_images: int = MAX_IMAGES):
        self.path = path
        self.kind = kind  # jsonl, csv, folder, tar, zip
        self.source = source
        self.manifest = manifest  # the manifest member inside an archive
        self.max_line_bytes = max_line_bytes
        self.max_images = max_images

    def _parse(self, raw: IO[bytes], kind: str) -> Iterator[Listing | RowError]:
        return parse_manifest(raw, kind, self.max_line_bytes, self.max_images)

    def items(self) -> Iterator[Listing | RowError]:
        if self.kind in ("jsonl", "csv"):
            with open(self.path, "rb") as f:
                yield from self._parse(f, self.kind)
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
                with raw:
                    yield from self._parse(raw, _manifest_kind(self.manifest))
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
                with zf.open(self.manifest) as raw:
                    yield from self._parse(raw, _manifest_kind(self.manifest))
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


def open_dump(path: Path, max_bytes: int, max_line_bytes: int = MAX_LINE_BYTES, max_images: int = MAX_IMAGES) -> Dump:
    """The dump at ``path``. ``max_bytes``: the largest photo read; ``max_line_bytes``: the longest manifest
    line (or CSV row) parsed, a longer one is reported and skipped; ``max_images``: photos searched per listing."""
    path = Path(path)
    limits: dict = {"max_line_bytes": max_line_bytes, "max_images": max_images}
    if not path.exists():
        raise DumpError(f"{path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        return Dump(path, "folder", FolderSource(path, max_bytes), **limits)
    if name.endswith((".jsonl", ".ndjson")):
        return Dump(path, "jsonl", FolderSource(path.parent, max_bytes), **limits)
    if name.endswith(".csv"):
        return Dump(path, "csv", FolderSource(path.parent, max_bytes), **limits)
    if name.endswith(TAR_SUFFIXES):
        try:
            with tarfile.open(path, "r:*") as tar:
                manifest = _one_manifest(m.name for m in tar if m.isreg())
        except tarfile.TarError as exc:
            raise DumpError(f"{path} is not a readable tar archive ({exc})") from exc
        return Dump(path, "tar", TarSource(path, _base_of(manifest), max_bytes), manifest, **limits)
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                manifest = _one_manifest(i.filename for i in zf.infolist() if not i.is_dir())
        except zipfile.BadZipFile as exc:
            raise DumpError(f"{path} is not a readable zip archive ({exc})") from exc
        return Dump(path, "zip", ZipSource(path, _base_of(manifest), max_bytes), manifest, **limits)
    raise DumpError(f"{path}: give a .jsonl or .csv dump, a folder of images, or a .tar/.zip of either")


class Overlong(NamedTuple):
    """A line longer than the limit, read through and dropped: only its count of ``"`` is kept (for CSV)."""

    quotes: int


_LINE_END = re.compile(rb"\r\n|\r|\n")


def bounded_lines(raw: IO[bytes], max_bytes: int, chunk: int = READ_CHUNK) -> Iterator[bytes | Overlong]:
    """The lines of a byte stream with their ends (``\\n``, ``\\r\\n`` or ``\\r``), each at most ``max_bytes``
    long before its end; a longer line is ``Overlong``, read in chunks and dropped as it is read.

    Whatever the stream (a 600 MB line in a 600 KB zip), no more than ``max_bytes + chunk`` is held.
    """
    buf = b""
    pos = 0
    eof = False
    dropping = False  # the current line is over the limit: its bytes are counted, not kept
    quotes = 0  # '"' in the dropped part of the current line
    while True:
        m = _LINE_END.search(buf, pos)
        # A \r at the end of what was read may be the first half of \r\n: read on before deciding.
        if m is not None and (eof or m.end() < len(buf) or m.group() != b"\r"):
            if dropping or m.start() - pos > max_bytes:
                yield Overlong(quotes + buf.count(b'"', pos, m.end()))
            else:
                yield buf[pos:m.end()]
            dropping, quotes, pos = False, 0, m.end()
            continue
        if eof:
            if dropping or len(buf) - pos > max_bytes:
                yield Overlong(quotes + buf.count(b'"', pos))
            elif pos < len(buf):
                yield buf[pos:]
            return
        keep = 1 if buf.endswith(b"\r") else 0  # a \r that may start a \r\n is not dropped
        if dropping or len(buf) - pos - keep > max_bytes:
            quotes += buf.count(b'"', pos, len(buf) - keep)
            dropping, buf, pos = True, buf[len(buf) - keep:], 0
        data = raw.read(chunk)
        eof = not data
        buf = buf[pos:] + data
        pos = 0


def _numbered_lines(raw: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | Overlong]]:
    """(line number, line) from 1; a UTF-8 byte order mark at the start is dropped."""
    for line_no, line in enumerate(bounded_lines(raw, max_bytes), start=1):
        if line_no == 1 and isinstance(line, bytes) and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield line_no, line


def _text(line: bytes) -> str:
    # Decoded with errors="replace": a row holding U+FFFD had bytes that are not UTF-8 (UNDECODED).
    # A line end is ASCII and never inside a UTF-8 sequence, so decoding line by line loses nothing.
    return line.decode("utf-8", errors="replace")


def _too_long(max_bytes: int, what: str = "line") -> str:
    return (f"the {what} is longer than the limit of {_kb(max_bytes)} KB (HM_SCAN_MAX_LINE_KB): "
            "skipped, not parsed")


def _kb(n: int) -> str:
    return f"{n / 1024:g}"


def parse_manifest(raw: IO[bytes], kind: str, max_line_bytes: int = MAX_LINE_BYTES,
                   max_images: int = MAX_IMAGES) -> Iterator[Listing | RowError]:
    """The items of a JSONL or CSV manifest read from a byte stream, one bounded line at a time."""
    if kind == "csv":
        yield from _csv_items(raw, max_line_bytes, max_images)
    else:
        yield from _jsonl_items(raw, max_line_bytes, max_images)


def _jsonl_items(raw: IO[bytes], max_line_bytes: int, max_images: int) -> Iterator[Listing | RowError]:
    seq = 0
    for line_no, data in _numbered_lines(raw, max_line_bytes):
        where = f"line {line_no}"
        if isinstance(data, Overlong):
            yield RowError(seq, where, _too_long(max_line_bytes))
            seq += 1
            continue
        line = _text(data)
        if not line.strip():
            continue
        if UNDECODED in line:
            yield RowError(seq, where, NOT_UTF8)
        else:
            row, error = parse_json_line(line)
            yield RowError(seq, where, error) if error else _listing(seq, row, where, max_images)
        seq += 1


class _RowTooLong(Exception):
    """Raised through ``csv.reader`` by ``_CsvLines``: the row went over the limit and was read through."""


class _CsvLines:
    """The lines under ``csv.reader``: decoded, numbered, and bounded per row, not only per line.

    A quoted CSV cell may span lines, so a row is bounded as a whole: once its lines pass
    ``max_bytes`` the rest of the row is read through without being kept (it ends at a line end with
    an even count of ``"`` so far, as a quoted cell closes) and ``_RowTooLong`` stops csv's row.
    csv starts afresh on its next row.
    """

    def __init__(self, raw: IO[bytes], max_bytes: int):
        self._lines = _numbered_lines(raw, max_bytes)
        self.max_bytes = max_bytes
        self.line_no = 0  # the last line handed out or dropped
        self.first = 0  # the first line of the current row with text on it
        self._bytes = 0
        self._quotes = 0

    def start_row(self) -> None:
        self.first = 0
        self._bytes = self._quotes = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        self.line_no, line = next(self._lines)
        if isinstance(line, bytes):
            if not self.first and line.strip():
                self.first = self.line_no
            self._bytes += len(line)
            self._quotes += line.count(b'"')
            if self._bytes <= self.max_bytes:
                return _text(line)
        else:
            self.first = self.first or self.line_no
            self._quotes += line.quotes
        while self._quotes % 2:  # inside a quoted cell: read through to the row's end
            try:
                self.line_no, line = next(self._lines)
            except StopIteration:
                break
            self._quotes += line.quotes if isinstance(line, Overlong) else line.count(b'"')
        raise _RowTooLong()


def _csv_items(raw: IO[bytes], max_line_bytes: int, max_images: int) -> Iterator[Listing | RowError]:
    # A listing's description may be long: cells are cut to MAX_TEXT afterwards, not refused by csv.
    # csv never sees more than max_line_bytes of one row (_CsvLines), so no cell can be longer.
    csv.field_size_limit(max(csv.field_size_limit(), min(CSV_CELL_LIMIT, max_line_bytes)))
    lines = _CsvLines(raw, max_line_bytes)
    reader = csv.DictReader(lines)
    try:
        if not reader.fieldnames:  # reads the header
            return
    except _RowTooLong:
        yield RowError(0, "line 1", f"the CSV header cannot be read ({_too_long(max_line_bytes, 'header')})")
        return
    except csv.Error as exc:
        yield RowError(0, "line 1", f"the CSV header cannot be read ({exc})")
        return
    seq = 0
    while True:
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, _RowTooLong) as exc:  # one unreadable row: reported, and the reader goes on
            start = lines.first or lines.line_no
            where = f"line {start}" if lines.line_no == start else f"lines {start}-{lines.line_no}"
            reason = (_too_long(max_line_bytes, "row") if isinstance(exc, _RowTooLong)
                      else f"the CSV row cannot be read ({exc})")
            yield RowError(seq, where, reason)
            seq += 1
            continue
        start, end = lines.first or lines.line_no, lines.line_no
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
            yield _listing(seq, clean, where, max_images)
        seq += 1


def _listing(seq: int, row, where: str, max_images: int = MAX_IMAGES) -> Listing | RowError:
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
    refs = tuple(i.strip() for i in images if i.strip())
    # Photos beyond the limit are neither read nor decoded; the outputs report how many (errors.jsonl).
    return Listing(seq, str(listing_id).strip(), fields, refs[:max_images], where,
                   more_images=max(0, len(refs) - max_images))


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
