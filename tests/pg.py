"""The tests' throw-away PostgreSQL server (``tests/conftest.py``'s ``pg_server`` fixture starts one a session).

The cluster code lives in ``scripts/local_postgres.py``, shared with ``scripts/replicas.py``; this module keeps
the names the tests import. Without the binaries the PostgreSQL tests skip, saying why; with
``HM_REQUIRE_POSTGRES=1`` (set by ``.ci/run``, which installs the package) they fail instead, so that CI never
passes by skipping them. Each test gets a database of its own: ``fresh_database()`` copies a template database
already migrated to the newest revision.
"""

from __future__ import annotations

from scripts.local_postgres import ADMIN, TEMPLATE, PgServer, PgUnavailable, free_port, pg_bin_dir

__all__ = ["ADMIN", "TEMPLATE", "PgServer", "PgUnavailable", "free_port", "pg_bin_dir"]
