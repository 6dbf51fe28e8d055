"""VectorIndex: FAISS inner-product search over unit vectors, keyed by photo id, saved atomically.

Files in the data directory: ``photos.faiss`` and ``photos.faiss.json`` (the manifest: model
fingerprint, dimension, count, version). The index is derived data: when it is missing or does not
agree with the database, it is rebuilt from the vectors stored in the database.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from app.storage import atomic_write, file_lock

# FAISS switches from its own kernels to BLAS at this many queries; the default (20) makes batched
# flat search 7-10x slower on small CPUs.
faiss.cvar.distance_compute_blas_threshold = 4

INDEX_FILE = "photos.faiss"


@dataclass
class IndexManifest:
    fingerprint: str
    dim: int
    count: int
    version: int


class VectorIndex:
    def __init__(self, fingerprint: str, dim: int, version: int = 0):
        self.fingerprint = fingerprint
        self.dim = dim
        self.version = version
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def manifest(self) -> IndexManifest:
        return IndexManifest(self.fingerprint, self.dim, self.count, self.version)

    def ids(self) -> np.ndarray:
        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            self._index.remove_ids(ids)  # re-adding an id replaces its vector
            self._index.add_with_ids(vectors, ids)
            self.version += 1

    def remove(self, ids: list[int] | np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        with self._lock:
            removed = int(self._index.remove_ids(ids))
            if removed:
                self.version += 1
            return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) unit vectors -> scores (Q, k') and ids (Q, k'), best first, k' = min(k, count)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            k = min(k, self.count)
            if k == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            scores, ids = self._index.search(queries, k)
        return scores, ids

    # --- persistence ---------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write index then manifest, each through a temp file, fsync and rename."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = faiss.serialize_index(self._index)
            manifest = self.manifest()
        atomic_write(directory / INDEX_FILE, data.tobytes())
        atomic_write(directory / (INDEX_FILE + ".json"), json.dumps(asdict(manifest), indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> "VectorIndex | None":
        """The saved index, or None when it is missing or damaged."""
        directory = Path(directory)
        try:
            meta = IndexManifest(**json.loads((directory / (INDEX_FILE + ".json")).read_text()))
            raw = np.frombuffer((directory / INDEX_FILE).read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(raw)
        except (OSError, ValueError, TypeError, RuntimeError):
            return None
        if index.d != meta.dim or index.ntotal != meta.count:
            return None
        obj = cls(meta.fingerprint, meta.dim, meta.version)
        obj._index = index
        return obj

    @classmethod
    def build(cls, fingerprint: str, ids: np.ndarray, vectors: np.ndarray, dim: int, version: int = 0):
        index = cls(fingerprint, dim, version)
        index.add(ids, vectors)
        return index



class SharedIndex:
    """The saved index as every process on one data directory sees it.

    Several uvicorn workers and the CLI may use one data directory. Each keeps the index in
    memory; a change takes an exclusive file lock, first re-reads the saved index if another process
    saved a newer one, applies the change and saves. Readers notice a newer save by the manifest's
    stat, which costs microseconds per search.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.current: VectorIndex | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        self._lock_path = self.directory / "index.lock"

    def _disk_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.directory / (INDEX_FILE + ".json"))
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        stamp = self._disk_stamp()
        if stamp is not None and stamp != self._stamp:
            loaded = VectorIndex.load(self.directory)
            if loaded is not None:
                self.current, self._stamp = loaded, stamp

    def get(self) -> VectorIndex | None:
        if self._disk_stamp() != self._stamp:
            with self._lock, file_lock(self._lock_path, shared=True):
                self._refresh()
        return self.current

    def modify(self, change: Callable[[VectorIndex | None], VectorIndex | None]) -> VectorIndex | None:
        """Run ``change`` on the newest index under the lock; save what it returns (None: no change)."""
        with self._lock, file_lock(self._lock_path):
            self._refresh()
            new = change(self.current)
            if new is not None:
                new.save(self.directory)
                self.current, self._stamp = new, self._disk_stamp()
            return self.current
