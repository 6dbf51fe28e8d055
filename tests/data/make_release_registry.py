"""Make tests/data/release-fc5c7b6/: a registry written by the last release without migrations (commit fc5c7b6),
for the upgrade test (tests/unit/registry/test_migrations.py). Run once, with that release's code:

    git archive fc5c7b6 | tar -x -C /tmp/release
    PYTHONPATH=/tmp/release .venv/bin/python tests/data/make_release_registry.py tests/data/release-fc5c7b6

It writes registry.sql (the SQLite database as SQL text: tables, triggers, rows, sqlite_sequence) and photos/
(the content-addressed photo files): artefacts with photos, vectors and signatures, one deleted (a gap in the
ids), one updated, API keys (one revoked) and the audit events of all that and of one search with results.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw


def photo(seed: int) -> bytes:
    import io
    import random

    rng = random.Random(seed)
    img = Image.new("RGB", (120, 90), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(10):
        x, y = rng.randrange(110), rng.randrange(80)
        box = (x, y, x + rng.randrange(8, 50), y + rng.randrange(8, 40))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def main(out: Path) -> None:
    import app.core.db

    assert not hasattr(app.core.db, "is_unique_violation"), "run with the release's code (see the docstring)"
    from app.core.config import Settings
    from app.security.audit import AuditLog
    from app.security.keys import KeyStore
    from app.service import MatchingService, PhotoInput

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        service = MatchingService(Settings(data_dir=data, model="efficientnet-lite0", device="cpu")).start()
        keys = KeyStore(service.store.sessions)
        keys.create("desk", "registrar")
        keys.revoke(keys.create("old laptop", "officer").key.id)
        first = service.register_artefact(
            {"inventory_number": "R-1", "institution": "Museum A", "title": "Bronze ewer", "status": "stolen",
             "date_reported": "2024-05-02", "height": 21.5, "dimension_unit": "cm", "materials": "bronze",
             "description": "Ewer with a chased frieze; dent on the foot."},
            [PhotoInput(photo(1), view="front"), PhotoInput(photo(2), view="back")])
        service.register_artefact({"inventory_number": "R-2", "institution": "Museum A", "title": "Seal"},
                                  [PhotoInput(photo(3))])
        gone = service.register_artefact({"inventory_number": "R-3", "institution": "Museum B"},
                                         [PhotoInput(photo(4))])
        service.delete_artefact(gone.id)
        service.register_artefact({"inventory_number": "R-4", "institution": "Museum B", "title": "Stele"},
                                  [PhotoInput(photo(5))])
        service.update_artefact(first.id, {"status": "recovered"})
        AuditLog(service.store.sessions).record_search(service.search(photo(1)))
        service.close()

        out.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(data / "registry.db") as conn:
            (out / "registry.sql").write_text("\n".join(conn.iterdump()) + "\n")
        shutil.rmtree(out / "photos", ignore_errors=True)
        shutil.copytree(data / "photos", out / "photos", ignore=shutil.ignore_patterns(".*"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
