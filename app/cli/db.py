"""``db upgrade`` and ``db current``: the registry database's schema revision (Alembic migrations); ``db
move-photos``: copy registry photos' bytes between the two photo stores (``HM_PHOTO_STORE``).

Every start of the service upgrades a database that is behind, so ``db upgrade`` is for operators who
upgrade on purpose: before starting new replicas, or as the role that owns the tables when the service's
own role may not change them (deploy/postgres-roles.sql).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app.cli.console import console, fail, progress_bar
from app.core.config import get_settings
from app.core.files import private_data_dir, private_sqlite

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _engine(create: bool) -> tuple[Engine | None, str]:
    """The registry database's engine (None: a SQLite file that does not exist and ``create`` is off), and its
    URL as it may be shown (no password)."""
    from sqlalchemy import create_engine, make_url, pool

    settings = get_settings()
    url = make_url(settings.db_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            if not create:
                return None, shown
            if settings.database_url is None:
                private_data_dir(settings.data_dir)
        private_sqlite(settings.db_url)
    return create_engine(settings.db_url, poolclass=pool.NullPool), shown


def db_upgrade() -> None:
    """Bring the registry database to this version's newest schema revision (creating it when empty)."""
    from app.registry import schema

    engine, shown = _engine(create=True)
    assert engine is not None
    try:
        before = schema.upgrade(engine)
        after = schema.state(engine).current
    finally:
        engine.dispose()
    console.print(f"database: {shown}")
    if before.current == after:
        print(f"already at revision {after} (the newest)")
    elif before.empty:
        print(f"created the schema at revision {after}")
    elif before.current is None:
        print(f"recognised a registry of revision {before.legacy} made before migrations; upgraded it to {after}")
    else:
        print(f"upgraded from revision {before.current} to {after}")


def db_current() -> None:
    """The registry database's schema revision, and whether this version is behind, level with or ahead of it."""
    from app.registry import schema

    engine, shown = _engine(create=False)
    console.print(f"database: {shown}")
    head = schema.head()
    if engine is None:
        print(f"revision: none (no database yet; `heritage-match db upgrade` creates it at {head})")
        return
    try:
        now = schema.state(engine)
    finally:
        engine.dispose()
    if now.up_to_date:
        print(f"revision: {now.current} (the newest: up to date)")
    elif now.ahead:
        print(f"revision: {now.current} (ahead: this version's newest is {head}; a newer heritage-match upgraded "
              "it, and this version refuses to use it)")
    elif now.empty:
        print(f"revision: none (empty database; `heritage-match db upgrade` creates the schema at {head})")
    elif now.current is None:
        print(f"revision: none (a registry made before migrations, recognised as {now.legacy}; "
              f"`heritage-match db upgrade` stamps it and upgrades it to {head})")
    else:
        print(f"revision: {now.current} (behind: this version's newest is {head}; `heritage-match db upgrade` "
              "applies it, as does the next start of the service)")


# Photos copied into the database per transaction: each batch commits on its own, so an interrupted move keeps
# what it copied, and no transaction holds more than a few dozen photos' bytes.
MOVE_BATCH_BYTES = 32 << 20
MOVE_BATCH_PHOTOS = 200


def db_move_photos(
    to: str = typer.Option(..., "--to", metavar="database|files",
                           help="The photo store that receives the bytes: `database` or `files` (DATA_DIR/photos)."),
) -> None:
    """Copy every registry photo's bytes from one photo store to the other (HM_PHOTO_STORE), then set
    HM_PHOTO_STORE to the new one on every server. The source is never changed: run it again at will, it copies
    only what the target lacks (stop the servers first, or run it again after they stop: a photo registered
    meanwhile is copied by the next run). Each photo's SHA-256 is checked before it is copied."""
    from sqlalchemy import select

    from app.core.files import sha256_hex
    from app.registry.models import Photo
    from app.registry.photos import DatabasePhotoStore, PhotoStore
    from app.registry.store import RegistryStore

    if to not in ("database", "files"):
        fail(f"--to must be `database` or `files`, not {to!r}")
    settings = get_settings()
    if settings.database_url is None:
        private_data_dir(settings.data_dir)
    store = RegistryStore(settings.db_url, settings.data_dir / "photos")
    files = PhotoStore(settings.data_dir / "photos")
    blobs = DatabasePhotoStore(store.sessions, cache_bytes=0)  # each photo is read once: nothing to cache
    source: PhotoStore | DatabasePhotoStore = files if to == "database" else blobs
    counts = dict.fromkeys(("photos", "copied", "already_there", "missing", "corrupt"), 0)
    try:
        with store.sessions() as s:
            keys = s.execute(select(Photo.sha256, Photo.format).distinct().order_by(Photo.sha256)).all()
        counts["photos"] = len(keys)
        in_database = blobs.stored_keys() if to == "database" else set()
        batch: list[tuple[str, str, bytes]] = []

        def commit_batch() -> None:
            with store.sessions.begin() as s:
                blobs.add(s, batch)
            counts["copied"] += len(batch)
            batch.clear()

        with progress_bar() as progress:
            task = progress.add_task(f"photos to the {to} store", total=len(keys))
            for sha, fmt in keys:
                progress.advance(task)
                if (sha in in_database) if to == "database" else files.has(sha, fmt):
                    counts["already_there"] += 1
                    continue
                try:
                    data = source.read(sha, fmt)
                except FileNotFoundError:
                    counts["missing"] += 1
                    console.print(f"[yellow]photo {sha} ({fmt}) is missing from the source: not copied[/yellow]")
                    continue
                if sha256_hex(data) != sha:
                    counts["corrupt"] += 1
                    console.print(f"[red]photo {sha} ({fmt}) does not match its SHA-256 in the source: "
                                  "not copied[/red]")
                    continue
                if to == "files":
                    files.put(data, sha, fmt)  # atomic: an interrupted write leaves no half photo
                    counts["copied"] += 1
                    continue
                batch.append((sha, fmt, data))
                if len(batch) >= MOVE_BATCH_PHOTOS or sum(len(d) for _, _, d in batch) >= MOVE_BATCH_BYTES:
                    commit_batch()
            if batch:
                commit_batch()
    finally:
        store.close()
    console.print(f"{counts['copied']} photos copied to the {to} store, {counts['already_there']} already there "
                  f"(of {counts['photos']}); the source is unchanged")
    print(json.dumps({"to": to, **counts}))
    if counts["missing"] or counts["corrupt"]:
        fail(f"{counts['missing']} photos missing and {counts['corrupt']} corrupt in the source: they are not in "
             f"the {to} store")
