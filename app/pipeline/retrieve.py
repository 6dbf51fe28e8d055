"""VectorIndex: FAISS inner-product search over unit vectors, keyed by photo id, saved atomically.

Files in the data directory: ``photos.faiss`` and ``photos.faiss.json`` (the manifest: model
fingerprint, dimension, count, version). The index is derived data: when it is missing or does not
agree with the database, it is rebuilt from the vectors stored in the database.

Small registries are searched exactly (``IndexIDMap2`` over ``IndexFlatIP``). From
``ANN_MIN_VECTORS`` photos on, a build makes an IVF-Flat index instead (about 4 sqrt(n) lists, a few
of them probed): exact distances within the probed lists, and unlike HNSW it removes ids, so deleting
an artefact stays exact. Each IVF build measures its recall@10 against exact search on sample
queries, probes more lists until it reaches ``ANN_MIN_RECALL``, and stays flat (with a warning) when
it cannot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from app.core.files import atomic_write, file_lock, private_dir

# FAISS switches from its own kernels to BLAS at this many queries; the default (20) makes batched
# flat search 7-10x slower on small CPUs.
faiss.cvar.distance_compute_blas_threshold = 4

INDEX_FILE = "photos.faiss"
ANN_MIN_VECTORS = 20_000  # below: exact search costs a few ms per query on 2 cores
ANN_MIN_RECALL = 0.99
RECALL_SAMPLE = 200

log = logging.getLogger(__name__)


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
        # IndexIDMap2 over IndexFlatIP, or an IndexIVFFlat; Any: faiss's stubs lack what its Python wrappers add
        # (ndarray arguments, nlist on the IVF index).
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()
        self.ann_min_vectors = ANN_MIN_VECTORS

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def manifest(self) -> IndexManifest:
        return IndexManifest(self.fingerprint, self.dim, self.count, self.version)

    def ids(self) -> np.ndarray:
        with self._lock:
            if isinstance(self._index, faiss.IndexIVF):
                lists = self._index.invlists
                assert lists is not None  # an IVF index always holds its inverted lists
                parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                         for i in range(lists.nlist) if lists.list_size(i)]
                return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
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
            if self.kind == "flat" and self.ann_min_vectors and self.count >= self.ann_min_vectors:
                self._grow_into_ivf()

    def _grow_into_ivf(self) -> None:
        """The registry just reached the IVF size: rebuild from the flat index's own vectors."""
        flat = faiss.downcast_index(self._index.index)
        assert isinstance(flat, faiss.IndexFlat)  # the IndexFlatIP that __init__ wraps
        vectors = faiss.rev_swig_ptr(flat.get_xb(), self.count * self.dim).reshape(self.count, self.dim).copy()
        ivf = _accurate_ivf(self.ids(), vectors, self.dim)
        if ivf is not None:
            self._index = ivf

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
            with _one_thread_if_small(self.count * len(queries)):
                scores, ids = self._index.search(queries, k)
            short = np.flatnonzero((ids < 0).any(axis=1))
            if len(short):  # the probed lists held fewer than k vectors: probe them all (exact)
                every = faiss.SearchParametersIVF()
                every.nprobe = self._index.nlist
                scores[short], ids[short] = self._index.search(queries[short], k, params=every)
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
    def build(cls, fingerprint: str, ids: np.ndarray, vectors: np.ndarray, dim: int, version: int = 0,
              ann_min_vectors: int | None = None):
        """An index of these vectors: exact while fewer than ``ann_min_vectors``, IVF above when it is accurate."""
        index = cls(fingerprint, dim, version)
        if ann_min_vectors is not None:
            index.ann_min_vectors = ann_min_vectors
        threshold = index.ann_min_vectors
        ids = np.asarray(ids, dtype=np.int64)
        if threshold and len(ids) >= threshold:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), dim)
            ivf = _accurate_ivf(ids, vectors, dim)
            if ivf is not None:
                index._index = ivf
                return index
        index.add(ids, vectors)
        return index


def _accurate_ivf(ids: np.ndarray, vectors: np.ndarray, dim: int):
    """IVF-Flat over ``vectors`` probing enough lists for ANN_MIN_RECALL at 10, or None (stay exact)."""
    # 100k photos: 1265 lists of about 80; FAISS wants 39 training points a list.
    nlist = max(16, min(round(4 * math.sqrt(len(ids))), len(ids) // 39))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # enough for list assignment; the recall check below guards the result
    ivf.cp.seed = 1234
    ivf.train(vectors[np.random.default_rng(0).permutation(len(vectors))[: nlist * 64]])
    ivf.add_with_ids(vectors, ids)
    # remove_ids and reconstruct by photo id (faiss's stubs omit DirectMap)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]

    # Sample queries: stored vectors moved off their point (cosine about 0.9), as a new photo of a
    # registered object is.
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), min(RECALL_SAMPLE, len(vectors)), replace=False)]
    queries = sample + 0.5 / math.sqrt(dim) * rng.standard_normal(sample.shape).astype(np.float32)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    k = min(10, len(ids))
    exact = np.argpartition(-(queries @ vectors.T), k - 1, axis=1)[:, :k]
    truth = [set(ids[row]) for row in exact]
    nprobe, recall = 8, 0.0
    # Up to a quarter of the lists: still 4x less than flat search. At 1M clustered vectors recall@10
    # reaches 0.99 only near 256 of 4000 lists probed, where an eighth (500) left no room for noise.
    while nprobe <= nlist // 4:
        ivf.nprobe = nprobe
        _, found = ivf.search(queries, k)
        recall = float(np.mean([len(t & set(f)) / k for t, f in zip(truth, found)]))
        if recall >= ANN_MIN_RECALL:
            log.info("IVF index over %d vectors: %d lists, %d probed, recall@10 %.3f", len(ids), nlist, nprobe, recall)
            return ivf
        nprobe *= 2
    log.warning("IVF recall@10 %.3f < %.2f over %d vectors probing a quarter of its lists: keeping exact search",
                recall, ANN_MIN_RECALL, len(ids))
    return None


class SharedIndex:
    """The saved index as every process on one data directory sees it.

    Several uvicorn workers and the CLI may use one data directory. Each keeps the index in
    memory; a change takes an exclusive file lock, first re-reads the saved index if another process
    saved a newer one, applies the change and saves. Readers notice a newer save by the manifest's
    stat, which costs microseconds per search.
    """

    def __init__(self, directory: Path, ann_min_vectors: int | None = None):
        self.directory = Path(directory)
        self.ann_min_vectors = ANN_MIN_VECTORS if ann_min_vectors is None else ann_min_vectors
        private_dir(self.directory)
        self.current: VectorIndex | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        self._lock_path = self.directory / "index.lock"

    index_file = INDEX_FILE  # whose manifest's stat tells a newer save (the archive's index has its own)

    def _disk_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.directory / (self.index_file + ".json"))
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> VectorIndex | None:
        return VectorIndex.load(self.directory)

    def _refresh(self) -> None:
        stamp = self._disk_stamp()
        if stamp is not None and stamp != self._stamp:
            loaded = self._load()
            if loaded is not None:
                loaded.ann_min_vectors = self.ann_min_vectors
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


# Below this many vector comparisons a search takes microseconds on one thread, while waking
# OpenMP's threads costs milliseconds whenever the other cores are busy (p90 0.005 ms on one thread
# against 12 ms on two, measured with 24 vectors on the loaded 2-core machine). Kept small: switching
# the thread count per call has its own cost (10k vectors: 3.9 ms a query with the switch, 1.2 without).
SMALL_SEARCH = 5_000


@contextmanager
def _one_thread_if_small(comparisons: int):
    if comparisons >= SMALL_SEARCH:
        yield
        return
    # omp_set_num_threads sets the calling thread's own value: concurrent searches do not interfere.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
