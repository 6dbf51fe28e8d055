"""The listings archive's index at scale: build time, memory, search time per query, recall@10.

Fills a throw-away archive (SQLite, as the service keeps it) with ``--n`` synthetic listing vectors,
builds the archive's index from them as the service does (``SharedArchiveIndex.rebuild``: IVF-PQ above
``--ann-min``, probes and re-ranking chosen by measured recall), then measures

1. build: seconds, and memory: the index's bytes (what a process holds), the resident memory it added
   once built, and the peak during the build (training sample, pages read, recall check);
2. start of another process: loading the saved index and comparing its ids with the database;
3. search, one query at a time (a retro-hunt searches the archive with each new registry photo):
   median and p95 milliseconds, of which the IVF-PQ candidates and the exact re-ranking (vectors read
   from the database); and exact flat search over float32 vectors for comparison (timed on 100,000
   vectors and scaled to ``--n``);
4. recall@10 against exact search (brute force over every stored vector) on ``--queries`` queries of
   two kinds: stored vectors moved off their point (cosine about 0.9, a new photo of an archived
   object) and fresh vectors of the same distribution (an object the archive has never seen); and how
   often the first result of a moved query is the stored vector it came from.

The vectors are seeded and clustered on two levels (256 broad categories, n/30 groups of similar
objects, each vector its own point around its group): nearest neighbours at cosine about 0.6-0.7 and
random pairs about 0.25, a harder neighbourhood than near-duplicate photos.

    .venv/bin/python -m scripts.benchmark_archive                       # 1,000,000 x 512 (CLIP ViT-B-32)
    .venv/bin/python -m scripts.benchmark_archive --n 100000 --dim 512  # a quick run
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts.common import add_json_option, script_parser, stage, write_json

FINGERPRINT = "synthetic@1"
CHUNK = 50_000


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_peak() -> bool:
    """Reset the peak resident size (Linux 4.0+), so that the next VmHWM is the build's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


class Listings:
    """Seeded synthetic listing vectors: 256 broad categories, n/30 groups of similar objects."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.common = rng.standard_normal(dim).astype(np.float32)
        self.common /= np.linalg.norm(self.common)
        self.categories = rng.standard_normal((256, dim)).astype(np.float32) / math.sqrt(dim)
        groups = max(16, n // 30)
        self.groups = rng.standard_normal((groups, dim)).astype(np.float32) / math.sqrt(dim)
        self.category_of = rng.integers(0, 256, groups)

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        group = rng.integers(0, len(self.groups), count)
        x = (0.5 * self.common + 0.55 * self.categories[self.category_of[group]] + 0.25 * self.groups[group]
             + 0.7 * rng.standard_normal((count, self.dim)).astype(np.float32) / math.sqrt(self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunk(self, number: int, count: int) -> np.ndarray:
        return self.draw(np.random.default_rng([self.seed, 1, number]), count)


def fill(store, listings: Listings, n: int) -> None:
    """Archive photos 1..n with their vectors, straight into the tables in big transactions."""
    import datetime as dt

    from sqlalchemy import insert

    from app.core.db import Base

    photos, vectors = Base.metadata.tables["archive_photos"], Base.metadata.tables["archive_vectors"]

    when = dt.datetime(2024, 1, 1)
    with store.sessions() as s:
        for number, start in enumerate(range(0, n, CHUNK)):
            count = min(CHUNK, n - start)
            vecs = listings.chunk(number, count)
            ids = range(start + 1, start + count + 1)
            s.execute(insert(photos), [
                {"id": i, "sha256": f"{i:064x}", "format": "JPEG", "width": 800, "height": 600,
                 "copy_sha256": f"{i:064x}", "has_full": False, "first_seen": when, "last_seen": when,
                 "times_seen": 1} for i in ids])
            s.execute(insert(vectors), [
                {"photo_id": i, "model_fingerprint": FINGERPRINT, "dim": listings.dim, "vector": v.tobytes()}
                for i, v in zip(ids, vecs)])
            s.commit()
            if number % 4 == 3 or start + count == n:
                stage(f"archive: {start + count:,} of {n:,} vectors stored")


def exact_top(store, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k photo ids of each query, by brute force over every stored vector."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for page in store.vector_pages(FINGERPRINT, page=CHUNK):
        scores = np.concatenate([best_scores, queries @ page.vectors.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(page.ids, (len(queries), len(page.ids)))], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, axis=1), np.take_along_axis(ids, top, axis=1)
    return best_ids


def flat_ms_per_query(listings: Listings, n: int, queries: np.ndarray) -> float:
    """Exact flat search of one query (FAISS IndexFlatIP), timed over 100,000 vectors and scaled to n."""
    import faiss

    part = min(n, 100_000)
    flat = faiss.IndexFlatIP(listings.dim)
    flat.add(listings.draw(np.random.default_rng(7), part))
    times = []
    for q in queries[:50]:
        t = time.perf_counter()
        flat.search(q[None, :], 10)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000 * n / part


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="Archived listing vectors (default 1,000,000).")
    parser.add_argument("--dim", type=int, default=512, help="Dimension (512: CLIP ViT-B-32; 1280: EfficientNet).")
    parser.add_argument("--queries", type=int, default=200, help="Queries of each kind (default 200).")
    parser.add_argument("--ann-min", type=int, default=None,
                        help="Vectors from which the index is compressed (default: HM_ARCHIVE_ANN_MIN_VECTORS).")
    parser.add_argument("--dir", type=Path, default=None, help="Working folder (default: a temporary one, deleted).")
    add_json_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    from app.core.config import Settings
    from app.pipeline.archive_index import ArchiveIndex, SharedArchiveIndex, subquantizers
    from app.registry.archive import ArchiveStore
    from app.registry.store import RegistryStore

    ann_min = Settings().archive_ann_min_vectors if args.ann_min is None else args.ann_min
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data = Path(tmp)
        registry = RegistryStore(f"sqlite:///{data / 'registry.db'}", data / "photos")
        store = ArchiveStore(registry.sessions, data / "archive")
        listings = Listings(args.n, args.dim)
        t = time.perf_counter()
        fill(store, listings, args.n)
        fill_s = time.perf_counter() - t
        db_mb = os.path.getsize(data / "registry.db") / 2**20

        stage("building the index")
        rss_before = rss_mb()
        peak_reset = reset_peak()
        t = time.perf_counter()
        shared = SharedArchiveIndex(data, store, FINGERPRINT, args.dim, ann_min_vectors=ann_min)
        index = shared.rebuild()
        build_s = time.perf_counter() - t
        build_peak = peak_mb() if peak_reset else float("nan")
        rss_after = rss_mb()
        index_mb = index.memory_bytes() / 2**20
        stage(f"built in {build_s:.1f} s: {index.kind}, {index_mb:.1f} MB")

        stage("another process starts: load and compare ids")
        t = time.perf_counter()
        ArchiveIndex.load(data)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        SharedArchiveIndex(data, store, FINGERPRINT, args.dim, ann_min_vectors=ann_min).index()
        start_s = time.perf_counter() - t

        rng = np.random.default_rng(11)
        picked = np.sort(rng.choice(np.arange(1, args.n + 1), args.queries, replace=False))
        _, stored = store.vectors_of(FINGERPRINT, picked)
        near = stored + 0.5 / math.sqrt(args.dim) * rng.standard_normal(stored.shape).astype(np.float32)
        near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
        fresh = listings.draw(np.random.default_rng(12), args.queries)

        stage("exact search for the truth")
        truth = exact_top(store, np.concatenate([near, fresh]), 10)
        stage("searching, one query at a time")
        shared.search(near[:5], 10)  # warm: the page cache holds the database's pages a search reads
        found, total, candidates = [], [], []
        for q in np.concatenate([near, fresh]):
            t = time.perf_counter()
            _, ids = index.search(q[None, :], 10)
            total.append(time.perf_counter() - t)
            found.append(ids[0])
            if index.kind == "ivfpq":
                t = time.perf_counter()
                index.candidates(q[None, :], 10 * index.rerank)
                candidates.append(time.perf_counter() - t)
        recalls = [len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]
        source_first = float(np.mean([f[0] == pid for f, pid in zip(found, picked)]))
        flat_ms = flat_ms_per_query(listings, args.n, near)
        registry.close()

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")

    figures = {
        "n": args.n, "dim": args.dim, "queries_each": args.queries, "ann_min_vectors": ann_min,
        "index": {"kind": index.kind, "lists": int(index._index.nlist) if index.kind == "ivfpq" else 0,
                  "bytes_per_vector": subquantizers(args.dim) if index.kind == "ivfpq" else args.dim * 4,
                  "nprobe": index.nprobe, "rerank": index.rerank, "build_recall_at_10": index.recall},
        "fill_s": round(fill_s, 1), "database_mb": round(db_mb), "build_s": round(build_s, 1),
        "index_mb": round(index_mb, 1), "rss_added_mb": round(rss_after - rss_before, 1),
        "build_peak_rss_mb": round(build_peak - rss_before, 1), "flat_float32_mb": round(args.n * args.dim * 4 / 2**20),
        "load_s": round(load_s, 2), "process_start_s": round(start_s, 2),
        "search_ms_median": ms(total, 50), "search_ms_p95": ms(total, 95),
        "candidates_ms_median": ms(candidates, 50), "flat_exact_ms_per_query": round(flat_ms, 1),
        "recall_at_10_near": round(float(np.mean(recalls[: args.queries])), 4),
        "recall_at_10_fresh": round(float(np.mean(recalls[args.queries:])), 4),
        "near_query_source_first": round(source_first, 4),
        "cores": len(os.sched_getaffinity(0)),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
