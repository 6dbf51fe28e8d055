"""Operator and benchmark scripts, run from the repository root as ``python -m scripts.<name>``
(``.venv/bin/python -m scripts.benchmark --quick``); each says its usage with ``--help``.

- ``benchmark``: speed of the CPU path (12 MP query, batch runtimes, micro-batching, cold start, search
  at 10k to 1M vectors) next to the naive pipeline it replaces;
- ``gpu_benchmark``: the GPU path in one run (fp16, TF32 and fp32 batch rates, parity, the 12 MP query,
  what bounds a scan);
- ``scan_benchmark``: ``heritage-match scan`` throughput against raw embedding throughput;
- ``load_test``: concurrent searches and registrations against a server on loopback;
- ``calibrate``: fits the calibrated score and the verdict thresholds of a model on benchmark packs;
- ``make_listing_pack``: a seeded "listing transforms" benchmark pack from a registry or the demo coins;
- ``resize_pack``: a copy of a benchmark pack at another photo size, with optional sensor noise;
- ``make_random_clip_checkpoint``: an open_clip checkpoint with random weights, for timing;
- ``common``: what the scripts share (timing, synthetic photos, the query pipelines, JSON output).

``evaluate_packs.sh`` runs ``heritage-match evaluate`` on every benchmark pack.
"""
