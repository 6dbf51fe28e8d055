"""Speed of the CPU path, measured in one run, next to the naive pipeline it replaces.

    .venv/bin/python -m scripts.benchmark --json out/benchmark.json
    .venv/bin/python -m scripts.benchmark --quick            # a short run (the test suite's)

What it measures (CLIP ViT-B-32; with random weights when no real ones are present, since speed does
not depend on weight values):

- the machine: fp32 matmul GFLOP/s, FLOPs of one image, hence the ceiling in images/s;
- one 12 MP phone JPEG: naive (full decode, torchvision transforms, eager torch) against the project's
  search code (``MatchingService.search``: reduced-scale decode, the chosen runtime, index search,
  verification) on the demo registry, p50 and p95;
- batch embedding of decoded photos: eager torch, ONNX Runtime fp32 and int8 (and int8's cosine to torch),
  OpenVINO fp32 (latency and throughput hints); the fp32 batch figure is the runtime the batch path uses;
- micro-batching: N threads each embedding one photo at a time (concurrent searches), through the
  project's runtime with and without the API's ``BatchingEncoder``, and one caller alone with both;
- cold start: a fresh process to a started service and its first embedding, torch against the runtime;
- search among 10k, 100k and 1M (``--sizes``) synthetic clustered vectors: exact flat search against
  the project's index for that size, time per query and recall@10.

Threads: the run uses the machine's cores (2 on the development machine) and no more: BLAS and
OpenMP are limited with threadpoolctl to the affinity's core count.

Exports and the random checkpoint are kept in ``--work-dir`` so a second run starts warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.config import Settings
from scripts.common import (
    ARCH,
    ROOT,
    add_json_option,
    cores,
    decoded_photos,
    limit_threads,
    naive_query,
    percentile,
    phone_jpeg,
    project_queries,
    random_clip_model,
    script_parser,
    stage,
    timed,
    write_json,
)

# The fp32 runtime the batch path (index rebuilds, imports, scans) uses where its check exists, with
# HM_RUNTIME=onnx or openvino: OpenVINO's throughput plan, measured fastest for batches (docs/BENCHMARKS.md).
BATCH_RUNTIME = "openvino"


# --- the model ---------------------------------------------------------------------------------


def benchmark_model(work_dir: Path) -> tuple[str, bool]:
    """(HM_MODEL spec, real weights?): the default CLIP when its weights are here, else a random ViT-B-32."""
    from app.embedding.models.clip import ClipSpec, find_clip_weights

    settings = Settings()
    spec = ClipSpec.parse(settings.clip_default)
    if spec.architecture == ARCH and find_clip_weights(spec, settings.models_dir) is not None:
        return settings.clip_default, True
    return random_clip_model(work_dir), False


def ensure_exports(torch_encoder, model: str, models_dir: Path) -> dict:
    from app.embedding.export import export_onnx, export_openvino, export_paths

    metas = {}
    for runtime in ("onnx", "onnx-int8", "openvino"):
        path, sidecar = export_paths(models_dir, model, runtime)
        if path.is_file() and sidecar.is_file():
            metas[runtime] = json.loads(sidecar.read_text())
        elif runtime == "openvino":
            metas[runtime] = export_openvino(torch_encoder, model, models_dir)
        else:
            metas[runtime] = export_onnx(torch_encoder, model, models_dir, int8=(runtime == "onnx-int8"))
    return metas


# --- the machine ---------------------------------------------------------------------------------


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul rate of torch and NumPy on this machine's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(timed(lambda: torch.mm(a, b), repeats))
    an, bn = a.numpy(), b.numpy()
    best = min(best, min(timed(lambda: an @ bn, repeats)))
    return 2 * n**3 / (best / 1000) / 1e9


def image_gflop(visual, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # With autograd on: under no_grad attention takes a fused kernel the counter does not see.
    with FlopCounterMode(display=False) as counter:
        visual(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


# --- inputs --------------------------------------------------------------------------------------


def clustered_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors in clusters of about 20, like views of related objects (uniform noise is no registry)."""
    centres = rng.standard_normal((max(1, n // 20), dim), dtype=np.float32)
    vecs = centres[rng.integers(0, len(centres), n)]
    # In place and in float32: at 1M vectors float64 temporaries would take several more GB.
    vecs += 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


# --- the measurements ----------------------------------------------------------------------------


def batch_rate(encoder, photos: list[Image.Image]) -> float:
    encoder.embed(photos[: encoder.batch_size])  # warm-up
    t = time.perf_counter()
    encoder.embed(photos)
    return len(photos) / (time.perf_counter() - t)


def concurrent_embeds(encoder, photos: list[Image.Image], callers: int, rounds: int) -> float:
    """img/s of ``callers`` threads each embedding one photo at a time, ``rounds`` times: concurrent searches."""
    start = threading.Barrier(callers + 1)

    def caller(i: int) -> None:
        start.wait()
        for k in range(rounds):
            encoder.embed([photos[(i * rounds + k) % len(photos)]])

    with ThreadPoolExecutor(callers) as pool:
        done = [pool.submit(caller, i) for i in range(callers)]
        start.wait()
        t = time.perf_counter()
        for f in done:
            f.result()
        return callers * rounds / (time.perf_counter() - t)


def micro_batching(encoder, photos: list[Image.Image], callers: int, rounds: int, repeats: int) -> dict:
    """Concurrent single-photo embeds without and with the API's micro-batcher; one caller alone with both."""
    from app.embedding.runtimes.batching import BatchingEncoder

    settings = Settings()
    batched = BatchingEncoder(encoder, wait_ms=settings.batch_wait_ms, max_batch=settings.max_batch)
    out = {"callers": callers, "wait_ms": settings.batch_wait_ms, "max_batch": settings.max_batch}
    try:
        for name, enc in (("unbatched", encoder), ("batched", batched)):
            concurrent_embeds(enc, photos, callers, 1)  # warm-up: sessions, shapes, the worker thread
        # Alternating runs, so that a change in the machine's load falls on both sides alike.
        rates: dict[str, list[float]] = {"unbatched": [], "batched": []}
        for _ in range(2):
            for name, enc in (("unbatched", encoder), ("batched", batched)):
                rates[name].append(concurrent_embeds(enc, photos, callers, rounds))
        for name in rates:
            out[f"{name}_img_per_s"] = max(rates[name])
        one = photos[0]
        out["single_unbatched_ms_p50"] = percentile(timed(lambda: encoder.embed([one]), repeats), 50)
        out["single_batched_ms_p50"] = percentile(timed(lambda: batched.embed([one]), repeats), 50)
        sizes = batched.batch_sizes
        out["mean_batch_images"] = float(np.mean(sizes)) if sizes else 0.0
    finally:
        batched.close()
    return out


def cold_start(settings: Settings, runtime: str) -> dict:
    """A fresh process: import, start the service (model loaded, index reconciled), first embedding."""
    script = (
        "import time; t0 = time.perf_counter()\n"
        "import sys\n"
        "from app.core.config import Settings\n"
        "from app.service import MatchingService\n"
        "from PIL import Image\n"
        "svc = MatchingService(Settings()).start()\n"
        "svc.encoder.embed_one(Image.new('RGB', (448, 448), (120, 80, 40)))\n"
        "print(time.perf_counter() - t0, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "HM_RUNTIME": runtime, "HM_MODEL": settings.model, "HM_DEVICE": "cpu",
           "HM_MODELS_DIR": str(settings.models_dir), "HM_DATA_DIR": str(settings.data_dir)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    inside, imported_torch = out.stdout.split()[-2:]
    return {"wall_s": wall, "in_process_s": float(inside), "imports_torch": imported_torch == "True"}


def search_at(n: int, dim: int, queries: int, seed: int = 0) -> dict:
    """Exact flat search against the project's index for ``n`` vectors: ms per query, recall@10."""
    import faiss

    stage(f"search among {n:,} vectors")

    from app.pipeline.retrieve import VectorIndex

    rng = np.random.default_rng(seed)
    vecs = clustered_vectors(n, dim, rng)
    picks = rng.integers(0, n, queries)
    # Each query a stored vector moved off its point (cosine about 0.9), as a new photo of a registered object.
    q = vecs[picks] + 0.5 / np.sqrt(dim) * rng.standard_normal((queries, dim)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    exact = faiss.IndexFlatIP(dim)
    exact.add(vecs)
    t = time.perf_counter()
    for row in q:
        exact.search(row[None], 10)
    exact_ms = (time.perf_counter() - t) * 1000 / queries
    _, truth = exact.search(q, 10)

    t = time.perf_counter()
    index = VectorIndex.build("benchmark", np.arange(n, dtype=np.int64), vecs, dim)
    build_s = time.perf_counter() - t
    got = np.zeros_like(truth)
    t = time.perf_counter()
    for i, row in enumerate(q):
        _, ids = index.search(row[None], 10)
        got[i] = ids[0]
    ms = (time.perf_counter() - t) * 1000 / queries
    recall = float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, truth)]))
    return {"vectors": n, "index": index.kind, "build_s": build_s, "ms_per_query": ms, "exact_ms_per_query": exact_ms,
            "recall_at_10": recall}


# --- the run -------------------------------------------------------------------------------------


def run(args) -> dict:
    import torch

    from app.core.threads import intra_op_threads
    from app.embedding import create_encoder, create_torch_encoder
    from app.embedding.runtimes.onnx import OnnxImageEncoder
    from app.embedding.runtimes.openvino import OpenVinoImageEncoder

    work_dir = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    models_dir = work_dir / "models"
    model, real_weights = benchmark_model(work_dir)
    base = Settings(model=model, models_dir=models_dir, data_dir=work_dir / "data", device="cpu")
    repeats, photos_n = (3, 8) if args.quick else (args.repeats, 64)

    stage("model and exports")
    torch_encoder = create_torch_encoder(base).load()
    metas = ensure_exports(torch_encoder, model, models_dir)
    # The plain OnnxImageEncoder is ONNX Runtime alone: its own figure (the service's encoder for
    # HM_RUNTIME=onnx, which create_encoder builds, sends batches to OpenVINO).
    fp32 = OnnxImageEncoder.from_models_dir(model, models_dir, "onnx", threads=intra_op_threads(base)).load()
    int8 = create_encoder(base.model_copy(update={"runtime": "onnx-int8"})).load()
    # The OpenVINO encoder as the service and the CLI build it: latency plan for searches, throughput for batches.
    openvino = create_encoder(base.model_copy(update={"runtime": "openvino"})).load()
    openvino_latency = OpenVinoImageEncoder.from_models_dir(model, models_dir, hint="LATENCY").load()
    project = base.model_copy(update={"runtime": args.runtime})

    r: dict = {"model": model, "real_weights": real_weights, "runtime": args.runtime,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "quick": args.quick}
    gflops = matmul_gflops(1024 if args.quick else 2048)
    per_image = image_gflop(torch_encoder._visual, torch_encoder.preprocessing.size)
    r.update(matmul_gflops=gflops, gflop_per_image=per_image, ceiling_img_per_s=gflops / per_image)

    stage("12 MP queries")
    jpeg = phone_jpeg()
    naive = naive_query(model, models_dir, jpeg, repeats)
    queries = project_queries(project, jpeg, repeats)
    # The same search on the int8 runtime (its own vectors, so its own registry): the fastest CPU setting.
    int8_queries = project_queries(base.model_copy(update={"runtime": "onnx-int8", "data_dir": work_dir / "data-int8"}),
                                   jpeg, repeats, regions_options=(False,))
    n_cores = r["cores"] = cores()  # the process's own cores, as the thread limits use
    r.update(
        int8_query_latency_ms_p50=percentile(int8_queries[False], 50),
        int8_query_latency_ms_p95=percentile(int8_queries[False], 95),
        int8_query_cpu_ms_p50=percentile(int8_queries["cpu"], 50),
        int8_query_latency_bound_ms=percentile(int8_queries["cpu"], 50) / n_cores,
    )
    r.update(
        query_jpeg_megapixels=12.2, query_jpeg_bytes=len(jpeg),
        naive_query_latency_ms_p50=percentile(naive, 50),
        query_latency_ms_p50=percentile(queries[False], 50), query_latency_ms_p95=percentile(queries[False], 95),
        query_cpu_ms_p50=percentile(queries["cpu"], 50),
        query_latency_bound_ms=percentile(queries["cpu"], 50) / n_cores,
        query_decode_embed_ms_p50=percentile(queries["decode_embed"], 50),
        query_with_regions_latency_ms_p50=percentile(queries[True], 50),
        query_with_regions_latency_ms_p95=percentile(queries[True], 95),
    )

    stage("batches")
    photos = decoded_photos(photos_n)
    encoders = {"torch": torch_encoder, "onnx": fp32, "onnx-int8": int8, "openvino": openvino,
                "openvino-latency": openvino_latency}
    for enc in encoders.values():
        enc.batch_size = 32
    rates = {name: batch_rate(enc, photos) for name, enc in encoders.items()}
    # The machine's rate again, after the batches: on a shared machine the higher of the two is the ceiling.
    gflops = max(gflops, matmul_gflops(1024 if args.quick else 2048))
    r.update(matmul_gflops=gflops, ceiling_img_per_s=gflops / per_image)
    r["torch_batch_img_per_s"] = rates["torch"]
    r["onnx_fp32_img_per_s"] = rates["onnx"]
    r["openvino_img_per_s"] = rates["openvino"]
    r["openvino_latency_plan_img_per_s"] = rates["openvino-latency"]
    r["int8_img_per_s"] = rates["onnx-int8"]
    # The batch path's fp32 figure is the runtime it uses by default (see BATCH_RUNTIME).
    r["batch_runtime"] = BATCH_RUNTIME
    r["batch_img_per_s"] = rates[BATCH_RUNTIME]
    reference = torch_encoder.embed(photos)
    r["fp32_cosine_min"] = float(min(np.sum(reference * enc.embed(photos), axis=1).min() for enc in (fp32, openvino)))
    r["openvino_cosine_min"] = float(np.sum(reference * openvino.embed(photos), axis=1).min())
    r["int8_cosine_min"] = float(min(np.sum(reference * int8.embed(photos), axis=1).min(),
                                     metas["onnx-int8"]["parity"]["cosine_min"]))

    stage("micro-batching")
    project_encoder = create_encoder(project).load()  # as the service builds it
    r["micro_batching"] = micro_batching(project_encoder, photos, callers=args.callers, rounds=2 if args.quick else 4,
                                         repeats=repeats)

    stage("cold starts")
    torch_start = cold_start(base.model_copy(update={"data_dir": work_dir / "cold-torch"}), "torch")
    project_start = cold_start(project.model_copy(update={"data_dir": work_dir / "cold-project"}), args.runtime)
    r.update(naive_cold_start_s=torch_start["wall_s"], cold_start_s=project_start["wall_s"],
             cold_start_imports_torch=project_start["imports_torch"])

    r["search"] = [search_at(n, torch_encoder.dim, 50 if args.quick else 200) for n in args.sizes]
    for s in r["search"]:
        if s["vectors"] == 100_000:
            r["search_ms_100k"], r["search_recall_at_10_100k"] = s["ms_per_query"], s["recall_at_10"]
        if s["vectors"] == 1_000_000:
            r["search_ms_1m"], r["search_recall_at_10_1m"] = s["ms_per_query"], s["recall_at_10"]
    r.setdefault("search_ms_100k", None)  # --sizes without 100000 (e.g. --quick): not measured
    r.setdefault("search_recall_at_10_100k", None)
    r.setdefault("search_ms_1m", None)
    r.setdefault("search_recall_at_10_1m", None)

    mb = r["micro_batching"]
    r["ratios"] = {
        "query_speed-up": r["naive_query_latency_ms_p50"] / r["query_latency_ms_p50"],
        "int8_query_speed-up": r["naive_query_latency_ms_p50"] / r["int8_query_latency_ms_p50"],
        "decode_embed_speed-up": r["naive_query_latency_ms_p50"] / r["query_decode_embed_ms_p50"],
        "batch_of_ceiling": r["batch_img_per_s"] / r["ceiling_img_per_s"],
        "onnx_fp32_of_ceiling": r["onnx_fp32_img_per_s"] / r["ceiling_img_per_s"],
        "openvino_of_ceiling": r["openvino_img_per_s"] / r["ceiling_img_per_s"],
        "int8_over_fp32": r["int8_img_per_s"] / r["batch_img_per_s"],
        "micro_batching_speed-up": mb["batched_img_per_s"] / mb["unbatched_img_per_s"],
        "micro_batching_single_caller_ms_added": mb["single_batched_ms_p50"] - mb["single_unbatched_ms_p50"],
        "cold_start_speed-up": r["naive_cold_start_s"] / r["cold_start_s"],
    }
    return r


def table(r: dict) -> str:
    mb = r["micro_batching"]
    rows = [
        ("machine: fp32 matmul", f"{r['matmul_gflops']:.1f} GFLOP/s on {r['threads']} threads"),
        ("ViT-B-32 image", f"{r['gflop_per_image']:.2f} GFLOP -> ceiling {r['ceiling_img_per_s']:.1f} img/s"),
        ("12 MP query, naive p50", f"{r['naive_query_latency_ms_p50']:.0f} ms"),
        (f"12 MP query, search code ({r['runtime']}) p50 / p95",
         f"{r['query_latency_ms_p50']:.0f} / {r['query_latency_ms_p95']:.0f} ms "
         f"({r['ratios']['query_speed-up']:.1f}x faster)"),
        ("  CPU time, all threads, p50", f"{r['query_cpu_ms_p50']:.0f} ms: at least "
                                         f"{r['query_latency_bound_ms']:.0f} ms on {r['cores']} cores"),
        ("  its decode and embedding alone, p50", f"{r['query_decode_embed_ms_p50']:.0f} ms "
                                                 f"({r['ratios']['decode_embed_speed-up']:.1f}x: the naive "
                                                 "pipeline's steps)"),
        ("  with region proposals p50 / p95",
         f"{r['query_with_regions_latency_ms_p50']:.0f} / {r['query_with_regions_latency_ms_p95']:.0f} ms"),
        ("  on onnx-int8 (whole frame) p50 / p95",
         f"{r['int8_query_latency_ms_p50']:.0f} / {r['int8_query_latency_ms_p95']:.0f} ms "
         f"({r['ratios']['int8_query_speed-up']:.1f}x faster)"),
        ("    CPU time, all threads, p50", f"{r['int8_query_cpu_ms_p50']:.0f} ms: at least "
                                           f"{r['int8_query_latency_bound_ms']:.0f} ms on {r['cores']} cores"),
        ("batch, eager torch", f"{r['torch_batch_img_per_s']:.1f} img/s"),
        ("batch, ONNX Runtime fp32", f"{r['onnx_fp32_img_per_s']:.1f} img/s "
                                     f"({r['ratios']['onnx_fp32_of_ceiling']:.0%} of ceiling)"),
        ("batch, OpenVINO fp32 (latency plan only)", f"{r['openvino_latency_plan_img_per_s']:.1f} img/s"),
        ("batch, OpenVINO fp32", f"{r['openvino_img_per_s']:.1f} img/s ({r['ratios']['openvino_of_ceiling']:.0%} "
                                 f"of ceiling, cosine {r['openvino_cosine_min']:.5f})"),
        (f"batch path fp32 ({r['batch_runtime']})",
         f"{r['batch_img_per_s']:.1f} img/s ({r['ratios']['batch_of_ceiling']:.0%} of ceiling, "
         f"cosine {r['fp32_cosine_min']:.5f})"),
        ("batch, ONNX int8", f"{r['int8_img_per_s']:.1f} img/s ({r['ratios']['int8_over_fp32']:.2f}x batch path "
                             f"fp32, cosine {r['int8_cosine_min']:.4f})"),
        (f"{mb['callers']} concurrent single-photo embeds ({r['runtime']})",
         f"{mb['unbatched_img_per_s']:.1f} img/s; micro-batched {mb['batched_img_per_s']:.1f} img/s "
         f"({r['ratios']['micro_batching_speed-up']:.2f}x, mean batch {mb['mean_batch_images']:.1f})"),
        ("  one caller alone, p50", f"{mb['single_unbatched_ms_p50']:.0f} ms; through the batcher "
                                    f"{mb['single_batched_ms_p50']:.0f} ms (wait {mb['wait_ms']:g} ms)"),
        ("cold start to first embedding, torch", f"{r['naive_cold_start_s']:.2f} s"),
        (f"cold start to first embedding, {r['runtime']}",
         f"{r['cold_start_s']:.2f} s (torch imported: {r['cold_start_imports_torch']})"),
    ]
    for s in r["search"]:
        rows.append((f"search {s['vectors']:,} vectors ({s['index']})",
                     f"{s['ms_per_query']:.2f} ms/query, recall@10 {s['recall_at_10']:.3f} "
                     f"(exact flat {s['exact_ms_per_query']:.2f} ms; built in {s['build_s']:.1f} s)"))
    width = max(len(a) for a, _ in rows)
    head = f"model {r['model']} ({'real' if r['real_weights'] else 'random'} weights), {r['cpus']} CPUs"
    return "\n".join([head] + [f"{a:<{width}}  {b}" for a, b in rows])


def main() -> None:
    limit_threads()  # before torch, ONNX Runtime or OpenVINO size their pools
    parser = script_parser(__doc__)
    add_json_option(parser)
    parser.add_argument("--quick", action="store_true", help="Few repeats, 8 photos, search at 10k only.")
    parser.add_argument("--runtime", default="onnx", choices=["torch", "onnx", "onnx-int8", "openvino"],
                        help="The project's runtime for the query, micro-batching and cold-start figures.")
    parser.add_argument("--callers", type=int, default=8, help="Concurrent callers for the micro-batching figure.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed queries per pipeline.")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="Registry sizes for the search figures (default 10000,100000,1000000; --quick 10000).")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "heritage-match-benchmark",
                        help="Keeps the random checkpoint, exports and demo registry between runs.")
    args = parser.parse_args()
    if args.sizes is None:
        args.sizes = [10_000] if args.quick else [10_000, 100_000, 1_000_000]
    result = run(args)
    print(table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
