"""Write a new schema revision from the difference between the models and the newest revision.

    .venv/bin/python -m scripts.new_migration "what changed"

The difference is taken against a throw-away SQLite database upgraded to the newest revision, and written to
app/migrations/versions/rNNNN_<slug>.py with revision id NNNN (the next number). Read what autogenerate wrote:
it cannot know data moves, renames (it sees a drop and an add) or triggers (app/migrations/append_only.py).
tests/unit/registry/test_migrations.py then checks the models and the migrations agree, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from app.registry import schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("message", help="What the revision changes, in a few words.")
    args = parser.parse_args()
    number = f"{int(schema.head()) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'head.db'}")
        schema.upgrade(engine)
        with engine.connect() as conn:
            cfg = schema.alembic_config(conn)
            cfg.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
            written = command.revision(cfg, args.message, autogenerate=True, rev_id=number)
        engine.dispose()
    paths = [s.path for s in (written if isinstance(written, list) else [written]) if s is not None]
    print("\n".join(paths) or "nothing written")


if __name__ == "__main__":
    main()
