"""IndexFollower: keeps a server's index in step with changes other processes make to the registry.

Several API replicas (on one machine or many) share one registry database; each holds its index in memory.
Every change that adds or removes indexed photos appends a row to the registry's change feed in its own
transaction (``app.registry.changes``). The follower reads the rows after its position and applies them
(``MatchingService.apply_changes``): within ``HM_FOLLOW_POLL_S`` (1 s) by polling, at once on PostgreSQL, where
the commit sends a NOTIFY the follower LISTENs for. Nothing goes through a file the replicas must share.

Safety nets: every ``FULL_CHECK_S`` the index is compared with the stored vectors' ids and rebuilt if they differ
(a replica paused longer than the feed is kept), and the feed's rows older than ``KEEP_CHANGES`` are purged.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.registry.changes import CHANNEL
from app.service import MatchingService

log = logging.getLogger(__name__)

FULL_CHECK_S = 600.0
KEEP_CHANGES = dt.timedelta(days=7)
PURGE_EVERY_S = 3600.0


class IndexFollower:
    def __init__(self, service: MatchingService, poll_s: float | None = None):
        self.service = service
        self.poll_s = poll_s if poll_s is not None else service.settings.follow_poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Any = None  # psycopg connection LISTENing (PostgreSQL only)
        self._listen_thread: threading.Thread | None = None

    def start(self) -> "IndexFollower":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
            self._thread.start()
            if self.service.store.engine.dialect.name == "postgresql":
                self._listen_thread = threading.Thread(target=self._listen, name="index-follower-listen", daemon=True)
                self._listen_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._listen_thread):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._listen_thread = None

    def wake(self) -> None:
        self._wake.set()

    def follow_once(self) -> int:
        """Apply the changes committed since the last call; returns how many were read."""
        read = 0
        while True:
            changes = self.service.store.changes_after(self.service.change_position)
            if not changes:
                return read
            self.service.apply_changes(changes)
            read += len(changes)

    def _run(self) -> None:
        last_check = last_purge = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.follow_once()
                now = time.monotonic()
                if now - last_check >= FULL_CHECK_S:
                    self.service.reconcile_index()
                    last_check = now
                if now - last_purge >= PURGE_EVERY_S:
                    self.service.store.purge_changes(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                                                     - KEEP_CHANGES)
                    last_purge = now
            except (SQLAlchemyError, OSError) as exc:
                # The database may restart or a connection drop: searches go on with the index as it is, and the
                # next round picks up where this one stopped (the position only moves past applied changes).
                log.warning("Following the registry's changes failed (retrying): %s", exc)
            except Exception:
                log.exception("Following the registry's changes failed (retrying)")

    # --- PostgreSQL: LISTEN, so a change reaches this replica in milliseconds rather than at the next poll ---------

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connect()
                try:
                    # Notifications are read in short slices, so that stop() is answered within one.
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake.set()
                finally:
                    conn.close()
            except Exception as exc:  # a lost connection: polling goes on meanwhile, LISTEN again shortly
                if self._stop.is_set():
                    return
                log.info("Listening for registry changes failed (polling meanwhile): %s", exc)
                self._stop.wait(max(self.poll_s, 5.0))

    def _connect(self) -> Any:
        """A connection of its own, made with the registry engine's own arguments, out of its pool for good."""
        raw = self.service.store.engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        self._wake.set()  # changes committed before LISTEN took effect are read at once
        return conn
