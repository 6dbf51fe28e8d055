"""Scan throughput against raw embedding throughput, in one run on one machine.

Builds a dump of phone-size JPEGs (3000x4000, synthetic: a smooth random scene with sensor-like
noise, a demo coin in some of them) in a temporary folder, registers the demo coins in a throw-away
data directory, then measures

1. raw embedding: the model's forward pass alone on already decoded, already preprocessed tensors;
2. the search path alone (``search_images``: regions, embedding, search, verification) on photos
   decoded beforehand;
3. the CPU time per photo of each stage (decode, analysis: signature, keypoints and proposals,
   search with its embeddings, and the bare embedding), whose ratio bounds what a scan on a machine
   with every core busy can reach of the raw embedding throughput;
4. the scan: ``heritage-match scan`` end to end (read, draft decode and analysis in worker
   processes, embedding, search, verification, writing), timed from start to the last output;

and prints them with the ratios scan / raw embedding and scan / search path. The photos are deleted
afterwards (``--keep`` keeps them).

``--archive-compare ROUNDS`` measures instead what the listings archive costs a scan: the same dump
scanned with ``HM_ARCHIVE`` off and on, alternating, ROUNDS times each, each scan on a fresh registry
(so every photo is new to the archive: its copy, vector and rows are all written), and prints the
median throughput ratio on / off.

    .venv/bin/python -m scripts.scan_benchmark --images 300 --archive-compare 3

    .venv/bin/python -m scripts.scan_benchmark --images 500 --model efficientnet-lite0
    .venv/bin/python -m scripts.scan_benchmark --images 500 --model clip-random   # ViT-B-32, random weights
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.common import add_json_option, random_clip_model, random_scene, script_parser, write_json

PHONE = (3000, 4000)


def make_photo(args: tuple[int, Path, bool]) -> int:
    """One synthetic 12 MP photo: smooth scene, shapes, a coin for some, noise; JPEG quality 90."""
    seed, path, with_coin = args
    rng = np.random.default_rng(seed)
    img = random_scene(rng, (PHONE[0] // 4, PHONE[1] // 4), levels=(40, 220), shape_size=(20, 300))
    if with_coin:
        coin = _coins()[seed % 24].image.resize((400, 400), Image.Resampling.BICUBIC)
        img.paste(coin, (img.width // 2 - 200, img.height // 2 - 200))
    img = img.resize(PHONE, Image.Resampling.BILINEAR)
    noise = rng.normal(0, 4, size=(256, 256, 1)).astype(np.float32)  # tiled: cheap, still costs the decoder
    arr = np.asarray(img, dtype=np.float32)
    reps = (PHONE[1] // 256 + 1, PHONE[0] // 256 + 1, 3)
    arr = np.clip(arr + np.tile(noise, reps)[: PHONE[1], : PHONE[0]], 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path.stat().st_size


_coin_cache = None


def _coins():
    global _coin_cache
    if _coin_cache is None:
        from app.jobs.demo import coin_crops

        _coin_cache = coin_crops()
    return _coin_cache


def build_dump(folder: Path, n: int, procs: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(i, folder / f"photo-{i:05d}.jpg", i % 5 == 0) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        return sum(pool.imap_unordered(make_photo, jobs, chunksize=4))


def raw_embedding(service, dump: Path, n: int) -> float:
    """Images/s of the forward pass on tensors decoded and preprocessed beforehand (batch_size per pass)."""
    enc = service.encoder
    paths = sorted(dump.glob("*.jpg"))[: enc.batch_size * 2]
    tensors = enc.preprocessing.batch([service.decode(p.read_bytes()).image for p in paths])
    batch = tensors[: enc.batch_size]
    enc._forward(batch)  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < n:
        enc._forward(batch)
        done += len(batch)
    return done / (time.perf_counter() - t0)


def search_only(service, dump: Path, n: int) -> float:
    """Images/s of ``search_images`` (regions, embedding, search, verification) on photos decoded
    beforehand: the most a scan can reach with this search path, whatever its decoding."""
    paths = sorted(dump.glob("*.jpg"))[:32]
    decoded = [service.decode(p.read_bytes()) for p in paths]
    service.search_images(decoded[:2])  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < n:
        start = done % len(decoded)  # cycle over the photos there are (fewer than 32 with --images < 32)
        chunk = decoded[start:start + 16]
        service.search_images(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - t0)


def cpu_costs(service, dump: Path, n: int = 32) -> dict:
    """CPU time per photo (all threads of this process, so other load hardly counts) of each stage.

    A scan must spend all of it per photo, on whatever cores it has; the embedding alone is what the
    raw throughput spends. Their ratio bounds the scan's share of the raw embedding throughput when
    both keep every core busy, whatever overlaps with what.
    """
    import dataclasses

    from app.pipeline.signature import analyse_photo

    paths = sorted(dump.glob("*.jpg"))[:n]
    datas = [p.read_bytes() for p in paths]
    enc = service.encoder
    t = time.process_time()
    decoded = [service.decode(d) for d in datas]
    decode = (time.process_time() - t) / n
    t = time.process_time()
    analysed = [dataclasses.replace(d, analysis=analyse_photo(d.image, service.settings.region_proposals))
                for d in decoded]
    analysis = (time.process_time() - t) / n
    tensors = enc.preprocessing.batch([d.image for d in decoded[: enc.batch_size]])
    enc._forward(tensors)  # warm-up
    t = time.process_time()
    for _ in range(max(1, n // len(tensors))):
        enc._forward(tensors)
    embedding = (time.process_time() - t) / (max(1, n // len(tensors)) * len(tensors))
    t = time.process_time()
    for start in range(0, n, 16):
        service.search_images(analysed[start:start + 16])
    search = (time.process_time() - t) / n
    total = decode + analysis + search
    # The search embeds the whole frame and each object proposal: the model's work per photo.
    crops = float(np.mean([1 + len(a.analysis.proposals or []) for a in analysed]))
    return {"crops_per_photo": round(crops, 2), "decode_cpu_ms": round(decode * 1000, 1),
            "analysis_cpu_ms": round(analysis * 1000, 1), "search_cpu_ms": round(search * 1000, 1),
            "embedding_cpu_ms": round(embedding * 1000, 1),
            "scan_cpu_ms": round(total * 1000, 1), "ratio_bound": round(embedding / total, 3)}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="efficientnet-lite0, clip-random or an HM_MODEL spec")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1)")
    parser.add_argument("--no-regions", action="store_true",
                        help="search the whole frame only (HM_REGION_PROPOSALS=false)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated dump in this folder")
    parser.add_argument("--archive-compare", type=int, default=0, metavar="ROUNDS",
                        help="measure scans with the listings archive off and on instead (ROUNDS each)")
    add_json_option(parser, None)
    args = parser.parse_args()

    from app.core.config import Settings
    from app.jobs.demo import seed_demo
    from app.jobs.scan.runner import ScanOptions, run_scan
    from app.service import MatchingService

    tmp = Path(tempfile.mkdtemp(prefix="hm-scan-bench-"))
    try:
        model = args.model
        if model == "clip-random":
            model = random_clip_model(tmp)
        dump = args.keep or tmp / "dump"
        t0 = time.perf_counter()
        if not (dump.is_dir() and len(list(dump.glob("*.jpg"))) >= args.images):
            size = build_dump(dump, args.images, os.cpu_count() or 2)
            print(f"built {args.images} JPEGs of {PHONE[0]}x{PHONE[1]} ({size / args.images / 1e6:.1f} MB each) "
                  f"in {time.perf_counter() - t0:.0f} s")
        if args.archive_compare:
            result = archive_compare(dump, tmp, model, args)
            print(json.dumps(result))
            if args.json:
                write_json(args.json, result)
            return
        settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", model=model, device="cpu",
                            region_proposals=not args.no_regions)
        service = MatchingService(settings).start()
        seed_demo(service)
        raw = raw_embedding(service, dump, max(64, args.images // 2))
        print(f"raw embedding: {raw:.1f} images/s ({service.encoder.name}, batch {service.encoder.batch_size})")
        searched = search_only(service, dump, max(32, args.images // 4))
        print(f"search path on decoded photos: {searched:.1f} images/s")
        costs = cpu_costs(service, dump)
        print("CPU per photo: " + ", ".join(f"{k} {v}" for k, v in costs.items()))
        summary = run_scan(ScanOptions(dump=dump, out=tmp / "out", workers=args.workers), settings, service=service)
        service.close()
        ratio = summary.images_per_s / raw
        # Share of the raw throughput the model does in the scan, counting every crop it embeds.
        utilisation = summary.images_per_s * costs["crops_per_photo"] / raw
        result = {
            "model": service.encoder.name, "model_spec": args.model, "images": summary.images,
            "errors": summary.errors, "candidates": summary.candidates, "region_proposals": not args.no_regions,
            "cores": os.cpu_count(), "decode_workers": args.workers or max(1, (os.cpu_count() or 2) - 1),
            "raw_embedding_images_per_s": round(raw, 2), "scan_images_per_s": summary.images_per_s,
            "search_only_images_per_s": round(searched, 2),
            "scan_wall_s": summary.wall_s, "ratio": round(ratio, 3),
            "ratio_to_search_only": round(summary.images_per_s / searched, 3),
            "cpu_per_photo": costs, "model_utilisation": round(utilisation, 3),
        }
        print(f"scan: {summary.images_per_s:.1f} images/s end to end "
              f"({summary.images} images in {summary.wall_s:.1f} s)")
        print(f"ratio scan / raw embedding: {ratio:.1%}; scan / search path on decoded photos: "
              f"{summary.images_per_s / searched:.1%}")
        print(f"model utilisation (crops embedded per second / raw embedding throughput): {utilisation:.1%}; "
              f"CPU bound on the photo ratio: {costs['ratio_bound']:.1%}")
        print(json.dumps(result))
        if args.json:
            write_json(args.json, result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def archive_compare(dump: Path, tmp: Path, model: str, args) -> dict:
    """Scans of one dump with the listings archive off and on, alternating, each on a fresh registry."""
    from app.core.config import Settings
    from app.jobs.demo import seed_demo
    from app.jobs.scan.runner import ScanOptions, run_scan
    from app.service import MatchingService

    rates: dict[bool, list[float]] = {False: [], True: []}
    shares: list[float] = []  # of each archiving scan's time, the part spent recording (same run: noise-free)
    for r in range(args.archive_compare):
        for archive in (False, True):
            where = tmp / f"run-{r}-{int(archive)}"
            settings = Settings(data_dir=where / "data", models_dir=tmp / "models", model=model, device="cpu",
                                region_proposals=not args.no_regions, archive=archive)
            service = MatchingService(settings).start()
            seed_demo(service)
            summary = run_scan(ScanOptions(dump=dump, out=where / "out", workers=args.workers), settings,
                               service=service)
            service.close()
            rates[archive].append(summary.images_per_s)
            print(f"round {r + 1}, archive {'on ' if archive else 'off'}: {summary.images_per_s:.2f} images/s "
                  f"({summary.images} images, {summary.archived_this_run} archived; {summary.archive_s:.2f} s of "
                  f"{summary.wall_s:.1f} s recording the archive and alerts)")
            if archive:
                shares.append(summary.archive_s / summary.wall_s)
            shutil.rmtree(where, ignore_errors=True)
    ratios = [on / off for off, on in zip(rates[False], rates[True])]
    print(f"archive on / off: median {float(np.median(ratios)):.1%} (each round: "
          + ", ".join(f"{x:.1%}" for x in ratios) + ")")
    print(f"time spent recording, share of the archiving scan: median {float(np.median(shares)):.1%}, so the "
          f"scan keeps at least {1 - float(np.max(shares)):.1%} of its throughput")
    return {"images": args.images, "model_spec": args.model, "rounds": args.archive_compare,
            "images_per_s_off": rates[False], "images_per_s_on": rates[True],
            "ratios_on_off": [round(x, 3) for x in ratios], "median_ratio": round(float(np.median(ratios)), 3),
            "recording_shares": [round(x, 4) for x in shares]}


if __name__ == "__main__":
    main()
