"""The listings archive's index: FAISS over the archived photos' unit vectors, keyed by archive photo id.

The archive grows to millions of photos, so above ``ann_min_vectors`` (``HM_ARCHIVE_ANN_MIN_VECTORS``)
the index is compressed: IVF-PQ, with exact re-ranking.

- **IVF**: ``2 sqrt(n)`` lists (2,000 at a million). Every vector added is assigned to its nearest list
  centre, which costs ``n * nlist * dim`` at a build; with PQ codes a longer list costs little to scan,
  so half the ``4 sqrt(n)`` of the registry's IVF-Flat halves the cost of adding and quarters the
  coarse training (its sample grows with the lists).
- **PQ**: ``dim / 4`` sub-quantizers of 8 bits, by residual: 128 bytes a vector at 512 dimensions
  (CLIP ViT-B-32), 320 at 1280 (EfficientNet-Lite0), against 2,048 and 5,120 for float32. A million
  512-d vectors take 134 MB with their ids and list centres instead of 2 GB. ``dim / 8`` (64 bytes)
  was measured too: at a million synthetic vectors its PQ ranking missed neighbours that no amount of
  probing found (recall@10 0.96 with 40x re-ranking, against 0.99 with 10x at ``dim / 4``).
- **Exact re-ranking**: the PQ scores only pick candidates (``k * rerank`` of them, ``rerank`` 10 to
  80); their float32 vectors are read from the database (``archive_vectors``, by primary key) and the
  candidates re-ranked by exact cosine. The scores a search returns are therefore exact, the same as a
  flat index would give, and nothing but the codes is held in memory: ``IndexRefineFlat`` would keep
  every float32 vector in RAM (2 GB at a million), which is what the compression is for, and a float16
  side file would be a second copy to keep in step with purges. Reading 100 vectors costs about a
  millisecond; a search at a million takes about 5 ms against 265 ms for exact flat search
  (``scripts/benchmark_archive.py``).
- **Probes and re-ranking chosen at build**: the build measures recall@10 against exact search on
  sample queries (stored vectors moved off their point, as a new photo of an archived object is) and
  takes the fewest probes, then the least re-ranking, that reach ``BUILD_RECALL`` (0.97: above the
  issue's 0.95, so that fresh queries stay above it too). More probes are tried only while they find
  more neighbours.

Below the threshold the index is exact (``IndexIDMap2`` over ``IndexFlatIP``, as ``VectorIndex``). It
grows into IVF-PQ when it reaches the threshold, and is trained again from the stored vectors when it
has grown fourfold since its training (more lists for more vectors).

Files in the data directory: ``archive.faiss`` and ``archive.faiss.json`` (fingerprint, dimension,
count, version, the last vector row it holds, probes, re-ranking, measured recall). The index is derived
data: the database's ``archive_vectors`` are the truth. ``SharedArchiveIndex`` is the index as every
process on one data directory sees it (``app.pipeline.retrieve.SharedIndex``): it reloads a newer save,
reads the vectors stored since the save it holds (by their row sequence, a range read of microseconds
when there are none), compares ids with the database once per process, and saves every
``save_every`` vectors rather than at each one (a save writes the whole index: 134 MB at a million).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from app.core.files import atomic_write
from app.pipeline.retrieve import IndexManifest, SharedIndex, VectorIndex, _one_thread_if_small

ARCHIVE_FILE = "archive.faiss"
ARCHIVE_LOCK = "archive.lock"
ANN_MIN_VECTORS = 50_000  # the default of HM_ARCHIVE_ANN_MIN_VECTORS
MIN_RECALL = 0.95  # the target for recall@10 against exact search
BUILD_RECALL = 0.97  # what a build aims at on its sample, so that fresh queries stay above MIN_RECALL
RERANK_FACTORS = (10, 20, 40, 80)  # candidates re-ranked exactly: k times this
RECALL_SAMPLE = 200
RECALL_K = 10
RETRAIN_GROWTH = 4  # trained again once this many times as many vectors as it was trained on
SAVE_EVERY = 2_000  # vectors added in memory before a save
TRAIN_PER_LIST = 40  # training points a list (FAISS asks for at least 39)
COMPRESS_MIN = 1_000  # fewer vectors stay exact whatever the setting: PQ trains 256 centroids a sub-quantizer

log = logging.getLogger(__name__)

Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # photo ids -> (ids found, float32 vectors)


class VectorPages(Protocol):
    """Where the archive's vectors are stored (``app.registry.archive.ArchiveStore``)."""

    def vector_pages(self, fingerprint: str, after_seq: int = 0, page: int = ...) -> Iterator[Any]:
        """Pages of (seqs, ids, vectors) stored after ``after_seq``, oldest first."""
        ...

    def vectors_of(self, fingerprint: str, photo_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]: ...

    def vector_ids(self, fingerprint: str) -> np.ndarray: ...


@dataclass
class ArchiveManifest(IndexManifest):
    seq: int = 0  # the last archive_vectors row the index holds
    kind: str = "flat"
    nprobe: int = 0
    rerank: int = 0
    recall: float | None = None  # recall@10 measured at build (compressed only)
    trained_on: int = 0


class ArchiveIndex(VectorIndex):
    """Exact while small, IVF-PQ re-ranked exactly from ``fetch`` above ``ann_min_vectors``.

    ``add`` takes ids the index does not hold yet (vectors stored after ``seq``; a photo's vector of a
    model never changes); a search drops duplicates all the same.
    """

    def __init__(self, fingerprint: str, dim: int, version: int = 0, fetch: Fetch | None = None):
        super().__init__(fingerprint, dim, version)
        self.ann_min_vectors = ANN_MIN_VECTORS
        self.fetch = fetch
        self.seq = 0
        self.rerank = 0
        self.recall: float | None = None
        self.trained_on = 0

    @property
    def kind(self) -> str:
        return "ivfpq" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def nprobe(self) -> int:
        return int(self._index.nprobe) if self.kind == "ivfpq" else 0

    @property
    def needs_retraining(self) -> bool:
        return self.kind == "ivfpq" and self.count >= RETRAIN_GROWTH * max(self.trained_on, 1)

    def memory_bytes(self) -> int:
        """Bytes of the index as saved (codes, ids, list centres): what it holds in memory, near enough."""
        with self._lock:
            return int(faiss.serialize_index(self._index).size)

    def manifest(self) -> ArchiveManifest:
        return ArchiveManifest(self.fingerprint, self.dim, self.count, self.version, self.seq, self.kind,
                               self.nprobe, self.rerank, self.recall, self.trained_on)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.kind == "flat":
            super().add(ids, vectors)  # grows into IVF-PQ at the threshold (_grow_into_ivf)
            return
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            # No remove_ids first, unlike VectorIndex: on IVF lists without a direct map it scans every
            # code (milliseconds at a million), and the ids added here are new.
            self._index.add_with_ids(vectors, ids)
            self.version += 1

    def _compressible(self, n: int) -> bool:
        return bool(self.ann_min_vectors) and n >= max(self.ann_min_vectors, COMPRESS_MIN)

    def _grow_into_ivf(self) -> None:
        """The flat index reached ``ann_min_vectors``: compress it, tuned against its own exact vectors."""
        if not self._compressible(self.count):
            return
        flat = faiss.downcast_index(self._index.index)
        assert isinstance(flat, faiss.IndexFlat)  # the IndexFlatIP that VectorIndex.__init__ wraps
        vectors = faiss.rev_swig_ptr(flat.get_xb(), self.count * self.dim).reshape(self.count, self.dim).copy()
        ids = self.ids()
        if self.fetch is None:  # an index built in memory re-ranks from these arrays
            self.fetch = _memory_fetch(ids, vectors)
        compressed = _compress(self.dim, len(ids), _sample_rows(vectors, len(ids)), [(ids, vectors)],
                               _memory_fetch(ids, vectors))
        self._take(compressed)

    def _take(self, compressed: "_Compressed") -> None:
        self._index = compressed.index
        self.rerank, self.recall, self.trained_on = compressed.rerank, compressed.recall, compressed.trained_on

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) unit vectors -> exact cosines (Q, k') and archive photo ids (Q, k'), best first,
        k' = min(k, count); a row short of k' results (vectors purged meanwhile) ends in id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if self.kind == "flat":
            return super().search(queries, k)
        if self.fetch is None:
            raise RuntimeError("a compressed archive index needs its vector store to re-rank")
        k = min(k, self.count)
        return _rerank(queries, self.candidates(queries, k * self.rerank), _Cache(self.fetch), k)

    def candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        """The ids of the ``n`` best candidates by PQ score (Q, n), -1 past the end (compressed only)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        # Codes scanned, not vectors held, decide whether waking OpenMP's threads pays (one query over
        # 100,000 vectors: 0.4 ms on one thread, 1.2 ms on two busy cores).
        scanned = len(queries) * self.nprobe * (self.count // max(1, self._index.nlist) + 1)
        with _one_thread_if_small(scanned):
            return super().search(queries, n)[1]

    # --- persistence ---------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        with self._lock:
            data = faiss.serialize_index(self._index)
            manifest = self.manifest()
        atomic_write(directory / ARCHIVE_FILE, data.tobytes())
        atomic_write(directory / (ARCHIVE_FILE + ".json"), json.dumps(asdict(manifest), indent=2).encode())

    @classmethod
    def load(cls, directory: Path, fetch: Fetch | None = None) -> "ArchiveIndex | None":
        """The saved index, or None when it is missing or damaged."""
        directory = Path(directory)
        try:
            raw_meta = json.loads((directory / (ARCHIVE_FILE + ".json")).read_text())
            known = {f.name for f in fields(ArchiveManifest)}
            meta = ArchiveManifest(**{k: v for k, v in raw_meta.items() if k in known})
            index = faiss.deserialize_index(np.frombuffer((directory / ARCHIVE_FILE).read_bytes(), dtype=np.uint8))
        except (OSError, ValueError, TypeError, RuntimeError):
            return None
        if index.d != meta.dim or index.ntotal != meta.count:
            return None
        obj = cls(meta.fingerprint, meta.dim, meta.version, fetch)
        obj._index = index
        obj.seq, obj.rerank, obj.recall, obj.trained_on = meta.seq, meta.rerank, meta.recall, meta.trained_on
        if obj.kind == "ivfpq" and not obj.rerank:
            return None
        return obj

    # --- builds --------------------------------------------------------------------------------

    @classmethod
    def build(cls, fingerprint: str, ids: np.ndarray, vectors: np.ndarray, dim: int, version: int = 0,
              ann_min_vectors: int | None = None, fetch: Fetch | None = None) -> "ArchiveIndex":
        """An index of vectors held in memory. Without ``fetch`` a compressed index re-ranks from these
        arrays (kept referenced): for tests and tools; the service builds ``from_store``."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), dim)
        index = cls(fingerprint, dim, version, fetch)
        if ann_min_vectors is not None:
            index.ann_min_vectors = ann_min_vectors
        if index._compressible(len(ids)):
            if index.fetch is None:
                index.fetch = _memory_fetch(ids, vectors)
            index._take(_compress(dim, len(ids), _sample_rows(vectors, len(ids)), [(ids, vectors)],
                                  _memory_fetch(ids, vectors)))
        else:
            index.add(ids, vectors)
        return index

    @classmethod
    def from_store(cls, store: VectorPages, fingerprint: str, dim: int, version: int = 0,
                   ann_min_vectors: int | None = None) -> "ArchiveIndex":
        """An index of every stored vector of ``fingerprint``, streamed page by page: a build over millions
        holds the codes, a training sample and one page, never all the float32 vectors."""

        def fetch(photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return store.vectors_of(fingerprint, photo_ids)

        index = cls(fingerprint, dim, version, fetch)
        if ann_min_vectors is not None:
            index.ann_min_vectors = ann_min_vectors
        stored = store.vector_ids(fingerprint)
        pages = _Pages(store.vector_pages(fingerprint))
        if index._compressible(len(stored)):
            rng = np.random.default_rng(0)
            picked = np.sort(rng.choice(stored, min(len(stored), _train_size(len(stored))), replace=False))
            _, sample = store.vectors_of(fingerprint, picked)
            index._take(_compress(dim, len(stored), sample, pages, fetch))
        else:
            for page_ids, page_vectors in pages:
                index.add(page_ids, page_vectors)
        index.seq = pages.last_seq
        return index


# --- compression ----------------------------------------------------------------------------------


def subquantizers(dim: int) -> int:
    """PQ sub-quantizers: dim / 4 (a byte for 4 dimensions), or the nearest divisor of dim below it."""
    target = max(1, dim // 4)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def list_count(n: int) -> int:
    return max(1, min(round(2 * math.sqrt(n)), n // TRAIN_PER_LIST))


def _train_size(n: int) -> int:
    return max(list_count(n) * TRAIN_PER_LIST, 256 * 64)  # coarse centres, and 64 points a PQ centroid


def _sample_rows(vectors: np.ndarray, n: int) -> np.ndarray:
    rows = np.random.default_rng(0).permutation(n)[: _train_size(n)]
    return vectors[np.sort(rows)]


def _memory_fetch(ids: np.ndarray, vectors: np.ndarray) -> Fetch:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wanted = np.asarray(wanted, np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
        hit = (sorted_ids[pos] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
        return wanted[hit], vectors[order[pos[hit]]]

    return fetch


class _Pages:
    """Pages of a store's ``vector_pages`` as (ids, vectors), remembering the last row sequence read."""

    def __init__(self, pages: Iterator[Any]):
        self._pages = pages
        self.last_seq = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for seqs, ids, vectors in self._pages:
            self.last_seq = max(self.last_seq, int(seqs[-1]))
            yield ids, vectors


class _Cache:
    """Vectors fetched for re-ranking, so that the build's tuning reads each candidate once."""

    def __init__(self, fetch: Fetch):
        self._fetch = fetch
        self._rows: dict[int, np.ndarray] = {}

    def get(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        todo = [int(i) for i in ids if int(i) not in self._rows]
        if todo:
            found, vecs = self._fetch(np.asarray(todo, np.int64))
            self._rows.update(zip((int(i) for i in found), vecs))
        return self._rows


def _rerank(queries: np.ndarray, candidates: np.ndarray, cache: _Cache, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each row's candidates by exact cosine; candidates no longer stored are dropped."""
    rows = cache.get(np.unique(candidates[candidates >= 0]))
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for q, row in enumerate(candidates):
        cand = [int(i) for i in dict.fromkeys(row.tolist()) if i >= 0 and i in rows]
        if not cand:
            continue
        exact = np.stack([rows[i] for i in cand]) @ queries[q]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[q, : len(best)] = exact[best]
        ids[q, : len(best)] = np.asarray(cand, np.int64)[best]
    return scores, ids


class _ExactTop:
    """Exact top-k of a few queries over vectors seen page by page (the truth a build's recall is measured by)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        every = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.queries), len(ids)))], axis=1)
        keep = min(self.k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        self.scores = np.take_along_axis(scores, top, axis=1)
        self.ids = np.take_along_axis(every, top, axis=1)


@dataclass
class _Compressed:
    index: Any  # faiss.IndexIVFPQ, nprobe set
    rerank: int
    recall: float
    trained_on: int


def _compress(dim: int, n: int, sample: np.ndarray, pages: Iterable[tuple[np.ndarray, np.ndarray]],
              fetch: Fetch) -> _Compressed:
    """Train IVF-PQ on ``sample``, add every page, then choose probes and re-ranking by measured recall."""
    nlist, m = list_count(n), subquantizers(dim)
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # list assignment; the recall check below guards the result
    ivf.cp.seed = 1234
    ivf.pq.cp.niter = 12
    ivf.pq.cp.max_points_per_centroid = 64  # 16k points train each sub-quantizer: enough for 256 centroids
    ivf.pq.cp.seed = 1234
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    ivf.train(sample)

    # Sample queries: stored vectors moved off their point (cosine about 0.9), as a new photo of an
    # archived object is (app.pipeline.retrieve measures the registry's IVF the same way).
    rng = np.random.default_rng(0)
    picked = sample[rng.choice(len(sample), min(RECALL_SAMPLE, len(sample)), replace=False)]
    queries = picked + 0.5 / math.sqrt(dim) * rng.standard_normal(picked.shape).astype(np.float32)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    truth = _ExactTop(queries, RECALL_K)
    added = 0
    for ids, vectors in pages:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ivf.add_with_ids(vectors, np.asarray(ids, np.int64))
        truth.update(np.asarray(ids, np.int64), vectors)
        added += len(ids)
    nprobe, rerank, recall = _tune(ivf, queries, truth.ids, fetch)
    ivf.nprobe = nprobe
    log.info("Archive index: IVF-PQ over %d vectors (%d lists, %d bytes a vector), %d probed, %dx re-ranked, "
             "recall@10 %.3f", added, nlist, m, nprobe, rerank, recall)
    return _Compressed(ivf, rerank, recall, added)


def _tune(ivf: Any, queries: np.ndarray, truth: np.ndarray, fetch: Fetch) -> tuple[int, int, float]:
    """The fewest probes, then the least re-ranking, whose recall@10 reaches BUILD_RECALL; the most
    accurate setting tried (with a warning) when none does."""
    k = min(RECALL_K, int(ivf.ntotal))
    truth_sets = [set(row[:k].tolist()) for row in truth]
    cache = _Cache(fetch)
    best = (0, 0, -1.0)
    nprobe = min(8, ivf.nlist)
    limit = max(nprobe, ivf.nlist // 4)
    while True:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        _, candidates = ivf.search(queries, k * RERANK_FACTORS[-1], params=params)
        before = best[2]
        for factor in RERANK_FACTORS:  # the PQ ranking's first k * factor candidates, re-ranked exactly
            _, found = _rerank(queries, candidates[:, : k * factor], cache, k)
            recall = float(np.mean([len(t & set(f.tolist())) / k for t, f in zip(truth_sets, found)]))
            if recall > best[2]:
                best = (nprobe, factor, recall)
            if recall >= BUILD_RECALL:
                return nprobe, factor, recall
        # Probing twice as many lists found no more neighbours: the PQ ranking is what misses them.
        if nprobe >= limit or best[2] - before < 0.002:
            break
        nprobe = min(nprobe * 2, limit)
    log.warning("Archive index: recall@10 %.3f < %.2f at best (%d lists probed, %dx re-ranked): the vectors "
                "are hard to cluster; searches may miss archived photos.", best[2], BUILD_RECALL, best[0], best[1])
    return best


# --- the index shared by processes ------------------------------------------------------------------


def _archive(index: VectorIndex | None) -> ArchiveIndex | None:
    return index if isinstance(index, ArchiveIndex) else None


class SharedArchiveIndex(SharedIndex):
    """The archive's index as every process on one data directory sees it.

    ``SharedIndex`` with the archive's files and lock: a change takes the exclusive file lock, re-reads
    a newer save and saves; a reader reloads a newer save at the cost of a stat. Between saves each
    process reads from the database the vectors stored after the save it holds.
    """

    def __init__(self, directory: Path, store: VectorPages, fingerprint: str, dim: int,
                 ann_min_vectors: int | None = None, save_every: int = SAVE_EVERY):
        super().__init__(directory, ANN_MIN_VECTORS if ann_min_vectors is None else ann_min_vectors)
        self._lock_path = self.directory / ARCHIVE_LOCK
        self.store, self.fingerprint, self.dim, self.save_every = store, fingerprint, dim, save_every
        self._sync = threading.RLock()  # one catch-up at a time in this process
        self._checked = False  # ids compared with the database once in this process
        self.unsaved = 0

    # SharedIndex's hooks, on the archive's files

    index_file = ARCHIVE_FILE

    def _load(self) -> ArchiveIndex | None:
        return ArchiveIndex.load(self.directory, self._fetch)

    def _refresh(self) -> None:
        before = self.current
        super()._refresh()
        if self.current is not before:  # another process's save replaced ours: nothing of it is unsaved here
            self.unsaved = 0

    def _fetch(self, photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.store.vectors_of(self.fingerprint, photo_ids)

    def _usable(self, index: ArchiveIndex | None) -> bool:
        return index is not None and index.fingerprint == self.fingerprint and index.dim == self.dim

    def _build(self, saved: VectorIndex | None) -> ArchiveIndex:
        index = ArchiveIndex.from_store(self.store, self.fingerprint, self.dim,
                                        version=saved.version + 1 if saved is not None else 0,
                                        ann_min_vectors=self.ann_min_vectors)
        index.fetch = self._fetch
        return index

    def _catch_up(self, index: ArchiveIndex) -> int:
        added = 0
        for seqs, ids, vectors in self.store.vector_pages(self.fingerprint, after_seq=index.seq):
            index.add(ids, vectors)
            index.seq = int(seqs[-1])
            added += len(ids)
        self.unsaved += added
        return added

    # what the archive uses

    def index(self) -> ArchiveIndex:
        """The index to search: the newest save with every vector stored since; built when missing, of
        another model or out of step with the database; saved every ``save_every`` vectors added."""
        with self._sync:
            current = _archive(self.get())
            if not self._checked or current is None or not self._usable(current):
                return self.reconcile()
            self._catch_up(current)
            if self.unsaved >= self.save_every or current.needs_retraining:
                return self.save()
            return current

    def reconcile(self) -> ArchiveIndex:
        """Make the saved index agree with the database: catch up, add what is missing, drop what was
        purged; rebuild when it is missing, of another model, or far out of step."""

        def change(saved_any: VectorIndex | None) -> ArchiveIndex | None:
            saved = _archive(saved_any)
            if saved is None or not self._usable(saved):
                if saved is not None:
                    log.info("Archive index was built for %s (%d-d); building it for %s.", saved.fingerprint,
                             saved.dim, self.fingerprint)
                return self._build(saved_any)
            changed = self._catch_up(saved) > 0
            stored = self.store.vector_ids(self.fingerprint)
            held = np.sort(saved.ids())
            if not np.array_equal(held, stored):
                missing, extra = np.setdiff1d(stored, held), np.setdiff1d(held, stored)
                if len(missing) > max(1_000, len(stored) // 10) or len(np.unique(held)) != len(held):
                    log.warning("Archive index far out of step with the database: rebuilding.")
                    return self._build(saved)
                log.info("Archive index: %d vectors added, %d removed to agree with the database.",
                         len(missing), len(extra))
                saved.remove(extra)
                ids, vectors = self.store.vectors_of(self.fingerprint, missing)
                if len(ids):
                    saved.add(ids, vectors)
                changed = True
            if saved.needs_retraining:
                return self._build(saved)
            return saved if changed or self._disk_stamp() is None else None

        with self._sync:
            index = _archive(self.modify(change))
            assert index is not None  # change returns an index whenever there is none
            self._checked, self.unsaved = True, 0
            return index

    def save(self) -> ArchiveIndex:
        """Save the index with every vector stored so far (trained again when it has outgrown its lists)."""

        def change(saved_any: VectorIndex | None) -> ArchiveIndex:
            saved = _archive(saved_any)
            if saved is None or not self._usable(saved):
                return self._build(saved_any)
            self._catch_up(saved)
            return self._build(saved) if saved.needs_retraining else saved

        with self._sync:
            index = _archive(self.modify(change))
            assert index is not None
            self.unsaved = 0
            return index

    def remove(self, photo_ids: list[int] | np.ndarray) -> int:
        """Drop purged photos from the index, and save it so that every process sees them gone."""
        removed = 0

        def change(saved_any: VectorIndex | None) -> ArchiveIndex | None:
            nonlocal removed
            saved = _archive(saved_any)
            if saved is None or not self._usable(saved):
                return None  # the next use builds it from the database, without them
            self._catch_up(saved)
            removed = saved.remove(np.asarray(photo_ids, np.int64))
            return saved

        if len(photo_ids):
            with self._sync:
                self.modify(change)
                self.unsaved = 0
        return removed

    def rebuild(self) -> ArchiveIndex:
        with self._sync:
            index = _archive(self.modify(self._build))
            assert index is not None
            self._checked, self.unsaved = True, 0
            return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index().search(queries, k)

    def close(self) -> None:
        """Save what was added since the last save (the next process then reads less from the database)."""
        if self.unsaved:
            self.save()
