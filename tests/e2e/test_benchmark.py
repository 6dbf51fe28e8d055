"""scripts/benchmark.py --quick: one short run writes every figure the issue asks for, each sane.
Timings are not asserted (the suite runs on shared machines); their presence and units are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("query_latency_ms_p50", "query_latency_ms_p95", "naive_query_latency_ms_p50", "batch_img_per_s",
        "ceiling_img_per_s", "int8_img_per_s", "int8_cosine_min", "cold_start_s", "search_ms_100k",
        "search_recall_at_10_100k", "matmul_gflops")


def test_quick_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--quick", "--json", str(out),
         "--work-dir", str(tmp_path / "work"), "--sizes", "2000,100000"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(KEYS) <= set(r)
    assert r["model"].startswith("clip:ViT-B-32:")  # random weights unless real ones are on this machine
    assert 0 < r["query_latency_ms_p50"] <= r["query_latency_ms_p95"]
    assert r["naive_query_latency_ms_p50"] > 0 and r["batch_img_per_s"] > 0 and r["int8_img_per_s"] > 0
    # The CPU time of a search, all threads: its lower bound on the wall time with these cores.
    for prefix in ("", "int8_"):
        assert r[f"{prefix}query_cpu_ms_p50"] > 0
        assert r[f"{prefix}query_latency_bound_ms"] == r[f"{prefix}query_cpu_ms_p50"] / r["cores"]
    # The naive pipeline's own steps on the project's path, beside the whole search.
    assert 0 < r["query_decode_embed_ms_p50"]
    assert r["ratios"]["decode_embed_speed-up"] == r["naive_query_latency_ms_p50"] / r["query_decode_embed_ms_p50"]
    assert 7 < r["gflop_per_image"] < 10  # ViT-B-32 at 224 px: about 8.8 GFLOP
    assert r["ceiling_img_per_s"] == r["matmul_gflops"] / r["gflop_per_image"]
    assert r["fp32_cosine_min"] >= 0.9999 and 0.999 <= r["int8_cosine_min"] <= 1.0
    assert r["cold_start_s"] > 0 and r["cold_start_imports_torch"] is False
    assert r["search_recall_at_10_100k"] >= 0.99 and r["search_ms_100k"] > 0
    assert [s["index"] for s in r["search"]] == ["flat", "ivf"]
    assert "12 MP query" in run.stdout and "search 100,000 vectors (ivf)" in run.stdout
    # OpenVINO beside ONNX Runtime, and the batch path's fp32 figure is the runtime it uses.
    assert r["openvino_img_per_s"] > 0 and r["onnx_fp32_img_per_s"] > 0 and r["openvino_cosine_min"] >= 0.9999
    assert r["batch_img_per_s"] == r["openvino_img_per_s"] and r["batch_runtime"] == "openvino"
    # Micro-batching: both sides measured in this run, and the ratio is theirs.
    mb = r["micro_batching"]
    assert mb["callers"] == 8 and mb["unbatched_img_per_s"] > 0 and mb["batched_img_per_s"] > 0
    assert r["ratios"]["micro_batching_speed-up"] == mb["batched_img_per_s"] / mb["unbatched_img_per_s"]
    assert 1 <= mb["mean_batch_images"] <= mb["max_batch"]
    assert mb["single_unbatched_ms_p50"] > 0 and mb["single_batched_ms_p50"] > 0
    assert "micro-batched" in run.stdout and "OpenVINO" in run.stdout
