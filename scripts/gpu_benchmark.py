"""The GPU path in one run: CLIP ViT-B-32 (random weights: speed does not depend on weight values)
through the project's own ``ClipEncoder`` on CUDA, next to fp32 and the naive pipeline.

    python3 -m scripts.gpu_benchmark --device cuda --json out/gpu.json
    .venv/bin/python -m scripts.gpu_benchmark --device cpu --quick --json /tmp/gpu-test.json   # a check without a GPU

What it measures:

1. the machine: GPU name, memory, torch / CUDA / cuDNN versions, the packages the run imported;
2. batch embedding at batch sizes 1, 32, 128, 256 on already decoded, already preprocessed images:
   GPU-resident (the tensor already on the GPU, the model alone) in fp16 autocast (the service's path,
   ``app.embedding.runtimes.torch_inference``), fp32 and fp32 with TF32 matrix products; and through the
   encoder's ``embed_pixels`` (NumPy in, host-to-device copy, NumPy out, normalised) in fp16 and fp32,
   plus 256 images at the service's default ``HM_BATCH_SIZE`` (16 images per forward pass);
3. cosine of the fp16 path's vectors to fp32 on the GPU and to fp32 on the CPU (what an index built
   on a CPU holds), on the project's parity photographs, with the random model's own spread between
   different photos for scale;
4. one picture's embedding (``embed_one``: preprocessing and forward pass) p50 / p95;
5. one 12 MP phone JPEG end to end through ``MatchingService.search`` on the demo registry, whole
   frame and with region proposals, next to the naive pipeline (full decode, open_clip's torchvision
   transforms, eager fp32) on the same device, and the decode alone;
6. what bounds a GPU scan: draft decode (to the side ``MatchingService.decode`` keeps) and
   preprocessing of 12 MP JPEGs in N worker processes, in images/s, against the GPU's batch rate.

Every section is timed with CUDA synchronisation after warm-up calls; a section that fails is
recorded under ``errors`` and the run goes on. The JSON is rewritten after each section, so a run
cut short still leaves what it measured.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from scripts import common
from scripts.common import (
    ARCH,
    add_json_option,
    cores,
    decoded_photos,
    elapsed,
    limit_threads,
    naive_query,
    percentile,
    phone_jpeg,
    project_queries,
    random_clip_model,
    script_parser,
    timed,
    write_json,
)

# open_clip imports transformers where it is installed (the GPU machine's image has it, the project does
# not depend on it): seconds of import and another library's versions in play for nothing, since the
# ViT-B-32 image tower never uses it. Refused here, open_clip takes its ImportError path, as in .venv.
sys.modules.setdefault("transformers", None)

BATCH_SIZES = (1, 32, 64, 128, 256)


def stage(name: str) -> None:
    """Progress on stdout here, between the figures of each section."""
    common.stage(name, sys.stdout)


# --- the machine and the model ----------------------------------------------------------------------


def machine(device: str) -> dict:
    import torch

    r = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cpus": os.cpu_count(),
         "cpu_affinity": cores(), "python": sys.version.split()[0],
         "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        r.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                 gpu_multiprocessors=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}",
                 cudnn=torch.backends.cudnn.version(),
                 # torch's defaults, which the "fp32" figures run under: TF32 for convolutions only.
                 matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                 cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        r["gpu"] = None
    return r


def imported_distributions() -> dict:
    """Every distribution a module of this process came from, with its version and folder."""
    from importlib import metadata

    tops = {name.split(".")[0] for name in list(sys.modules)}
    owners = metadata.packages_distributions()
    out = {}
    for dist_name in sorted({d for t in tops for d in owners.get(t, [])}):
        try:
            dist = metadata.distribution(dist_name)
            out[dist_name] = f"{dist.version} ({Path(str(dist.locate_file(''))).as_posix()})"
        except Exception:
            out[dist_name] = None
    return out


def package_versions() -> dict:
    """Versions of the distributions this process imported (which copy: the carried wheels or the machine's)."""
    from importlib import metadata

    names = ("torch", "torchvision", "numpy", "pillow", "open_clip_torch", "timm", "huggingface_hub", "faiss-cpu",
             "pydantic", "pydantic_core", "pydantic-settings", "typing_extensions", "SQLAlchemy", "ImageHash",
             "pillow_heif", "opencv-python-headless", "scipy", "scikit-image", "ftfy", "safetensors")
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --- batches ------------------------------------------------------------------------------------------


def pixel_batch(encoder, n: int) -> np.ndarray:
    """(n, 3, S, S) preprocessed inputs: the parity photos, decoded as the service decodes them, tiled to n."""
    photos = decoded_photos(10)
    base = encoder.preprocessing.batch(photos)
    return np.ascontiguousarray(base[np.arange(n) % len(base)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rate(fn, images_per_call: int, device: str, min_s: float, warmup: int = 3, min_calls: int = 3) -> float:
    """img/s of ``fn`` over at least ``min_s`` seconds and ``min_calls`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    calls, t = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t < min_s:
        fn()
        calls += 1
        if calls % 4 == 0:
            _sync(device)
    _sync(device)
    return calls * images_per_call / (time.perf_counter() - t)


def fp32_forward(visual, batch: np.ndarray, device: str) -> np.ndarray:
    """``run_module`` without autocast or TF32: the fp32 reference on the same device."""
    import torch

    from app.embedding.runtimes.torch_inference import tf32_matmuls

    with torch.inference_mode(), tf32_matmuls(False):
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device, non_blocking=True)
        return visual(x).float().cpu().numpy()


def batch_throughput(encoder, device: str, sizes: tuple[int, ...], min_s: float) -> dict:
    import torch

    from app.embedding.base import l2_normalise
    from app.embedding.runtimes.torch_inference import inference_context, uses_fp16

    visual = encoder._visual
    pixels = pixel_batch(encoder, max(sizes))
    gpu_pixels = torch.from_numpy(pixels).to(device)
    fp16 = uses_fp16(device)
    out: dict = {"fp16_autocast": fp16, "sizes": list(sizes), "resident": {}, "embed_pixels": {}}

    def resident(mode: str, n: int):
        x = gpu_pixels[:n]

        def run():
            if mode == "fp16":
                with inference_context(device, max(sizes)):  # a large batch's context: fp16 autocast
                    visual(x)
            else:
                with torch.inference_mode():
                    visual(x)

        return run

    modes = (["fp16"] if fp16 else []) + ["fp32"] + (["tf32"] if device.startswith("cuda") else [])
    for mode in modes:
        for n in sizes:
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            try:
                r = rate(resident(mode, n), n, device, min_s)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev
            out["resident"][f"{mode}_{n}"] = r
            stage(f"  resident {mode} batch {n}: {r:,.0f} img/s")

    # Through the encoder: NumPy in, copy to the device, forward, copy back, normalise.
    saved = encoder.batch_size
    try:
        for n in sizes:
            encoder.batch_size = n
            chunk = pixels[:n]
            if fp16:
                r = rate(lambda: encoder.embed_pixels(chunk), n, device, min_s)
                out["embed_pixels"][f"served_{n}"] = r  # the service's choice: fp16 from FP16_MIN_BATCH, TF32 below
                stage(f"  embed_pixels served batch {n}: {r:,.0f} img/s")
            r = rate(lambda: l2_normalise(fp32_forward(visual, chunk, device)), n, device, min_s)
            out["embed_pixels"][f"fp32_{n}"] = r
            stage(f"  embed_pixels fp32 batch {n}: {r:,.0f} img/s")
        # The service's default forward-pass size (HM_BATCH_SIZE=16) on a large batch.
        from app.core.config import Settings
        from app.embedding import batch_size_for

        default = batch_size_for(Settings(), device)
        encoder.batch_size = default
        n = max(sizes)
        r = rate(lambda: encoder.embed_pixels(pixels[:n]), n, device, min_s, warmup=1)
        out["embed_pixels"][f"default_batch_size_{n}"] = r
        out["default_batch_size"] = default
        stage(f"  embed_pixels {n} images at the default batch size {default}: {r:,.0f} img/s")
    finally:
        encoder.batch_size = saved

    best = max(sizes)
    if fp16:
        out["fp16_over_fp32_resident"] = {n: out["resident"][f"fp16_{n}"] / out["resident"][f"fp32_{n}"] for n in sizes}
        out["fp16_over_tf32_resident"] = {n: out["resident"][f"fp16_{n}"] / out["resident"][f"tf32_{n}"] for n in sizes}
        out["served_over_fp32_embed_pixels"] = {n: out["embed_pixels"][f"served_{n}"] / out["embed_pixels"][f"fp32_{n}"]
                                              for n in sizes}
        out["best_img_per_s"] = out["resident"][f"fp16_{best}"]
    else:
        out["best_img_per_s"] = out["resident"][f"fp32_{best}"]
    if device.startswith("cuda"):
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# --- parity -------------------------------------------------------------------------------------------


def parity(encoder, cpu_encoder, device: str) -> dict:
    """Cosine of the service's vectors on this device (fp16 on CUDA) to fp32 here and to fp32 on the CPU."""
    from app.embedding.base import l2_normalise
    from app.embedding.export import parity_images

    images = parity_images()
    photos = images + decoded_photos(10)  # also at the scale the service decodes to
    pixels = encoder.preprocessing.batch(photos)
    served = encoder.embed_pixels(pixels)  # as the service runs it: TF32 for a small batch on CUDA
    # and fp16 autocast for a large one (the same photos, tiled to a batch of FP16_MIN_BATCH)
    from app.embedding.runtimes.torch_inference import FP16_MIN_BATCH

    saved, encoder.batch_size = encoder.batch_size, max(encoder.batch_size, FP16_MIN_BATCH)
    try:
        tiled = pixels[np.arange(FP16_MIN_BATCH) % len(pixels)]
        served_large = encoder.embed_pixels(tiled)[: len(pixels)]
    finally:
        encoder.batch_size = saved
    fp32_here = l2_normalise(fp32_forward(encoder._visual, pixels, device))
    cpu_fp32 = cpu_encoder.embed_pixels(pixels) if cpu_encoder is not None else None

    def cos(a, b):
        c = np.sum(a * b, axis=1)
        return {"min": float(c.min()), "mean": float(c.mean())}

    distinct = fp32_here[: len(images)]  # the parity photos only: the rest are rescaled copies of them
    gram = distinct @ distinct.T
    off = gram[~np.eye(len(gram), dtype=bool)]
    out = {"images": len(photos), "served_vs_fp32_same_device": cos(served, fp32_here),
           "served_large_batch_vs_fp32_same_device": cos(served_large, fp32_here),
           # For scale: how alike this (random) model finds different photos; with real weights it is far lower.
           "fp32_between_different_photos": {"mean": float(off.mean()), "max": float(off.max())},
           # Distance of the served vector to fp32, as a share of the mean distance between different photos.
           "error_over_spread": float(np.linalg.norm(served - fp32_here, axis=1).mean()
                                      / np.mean(np.sqrt(np.maximum(0, 2 - 2 * off))))}
    if cpu_fp32 is not None:
        out["served_vs_cpu_fp32"] = cos(served, cpu_fp32)
        out["fp32_same_device_vs_cpu_fp32"] = cos(fp32_here, cpu_fp32)
    return out


def single_latency(encoder, device: str, repeats: int) -> dict:
    """``embed_one`` on a photo decoded as the service decodes it: preprocessing + forward + copy back."""
    import torch

    from app.embedding.runtimes.torch_inference import inference_context

    photo = decoded_photos(1)[0]
    times = []
    for i in range(repeats + 3):
        t = time.perf_counter()
        encoder.embed_one(photo)
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
    x = torch.from_numpy(encoder.preprocessing.batch([photo])).to(device)
    fwd = []
    for i in range(repeats + 3):
        _sync(device)
        t = time.perf_counter()
        with inference_context(device):
            encoder._visual(x)
        _sync(device)
        if i >= 3:
            fwd.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    for _ in range(repeats):
        encoder.preprocessing(photo)
    pre = (time.perf_counter() - t) * 1000 / repeats
    return {"embed_one_ms_p50": percentile(times, 50), "embed_one_ms_p95": percentile(times, 95),
            "forward_only_ms_p50": percentile(fwd, 50), "forward_only_ms_p95": percentile(fwd, 95),
            "preprocess_ms_mean": pre, "repeats": repeats}


# --- the 12 MP query ----------------------------------------------------------------------------------


def naive_query_on(model: str, models_dir: Path, device: str, jpeg: bytes, repeats: int) -> list[float]:
    """The CPU benchmark's naive pipeline on ``device``, its GPU memory released after."""
    try:
        return naive_query(model, models_dir, jpeg, repeats, device=device)
    finally:
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def queries(model: str, models_dir: Path, data_dir: Path, device: str, repeats: int) -> dict:
    from app.core.config import Settings

    jpeg = phone_jpeg()
    settings = Settings(model=model, models_dir=models_dir, data_dir=data_dir, device=device, runtime="torch")
    stage("  project search (seeds the demo registry first)")
    project = project_queries(settings, jpeg, repeats)  # {False: whole frame, True: with regions}
    stage("  naive pipeline")
    naive = naive_query_on(model, models_dir, device, jpeg, repeats)

    from app.service import MatchingService

    service = MatchingService(settings).start()
    try:
        decode = timed(lambda: service.decode(jpeg), repeats)
        decoded = service.decode(jpeg)
        embed = timed(lambda: service.encoder.embed([decoded.image]), repeats)
        response = service.search(jpeg, top_k=5)
    finally:
        service.close()
    p = percentile
    return {
        "jpeg_bytes": len(jpeg), "megapixels": 12.2, "repeats": repeats,
        "naive_ms_p50": p(naive, 50), "naive_ms_p95": p(naive, 95),
        "search_ms_p50": p(project[False], 50), "search_ms_p95": p(project[False], 95),
        "search_regions_ms_p50": p(project[True], 50), "search_regions_ms_p95": p(project[True], 95),
        "decode_ms_p50": p(decode, 50), "embed_decoded_ms_p50": p(embed, 50),
        "decoded_size": list(decoded.image.size), "model_device": response.model.device,
        "speed_up_p50": p(naive, 50) / p(project[False], 50),
    }


# --- what bounds a scan -------------------------------------------------------------------------------

_JPEG = None
_PRE = None


def _init_decoder(jpeg: bytes, pre: dict) -> None:
    global _JPEG, _PRE
    from app.embedding.preprocess import Preprocessing

    _JPEG, _PRE = jpeg, Preprocessing(**pre)


def _decode_one(_: int) -> np.ndarray:
    """Draft decode as the service decodes, then preprocess: a scan worker's job."""
    from app.pipeline.decode import decode_image, working_side

    return _PRE(decode_image(_JPEG, min_side=working_side(_PRE.size)).image)


def decode_rates(encoder, procs_list: list[int], per_proc: int) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import asdict

    jpeg = phone_jpeg()
    pre = asdict(encoder.preprocessing)
    out = {}
    ctx = multiprocessing.get_context("spawn")  # the parent holds CUDA and thread pools: no fork
    for n in procs_list:
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_decoder, initargs=(jpeg, pre)) as pool:
            list(pool.map(_decode_one, range(2 * n)))  # start and warm every worker
            count = per_proc * n
            t = time.perf_counter()
            for _ in pool.map(_decode_one, range(count), chunksize=2):
                pass
            out[n] = count / (time.perf_counter() - t)
        stage(f"  {n} processes: {out[n]:,.0f} img/s decoded and preprocessed")
    return out


# --- the run ------------------------------------------------------------------------------------------


def run(args) -> dict:
    r: dict = {"device": args.device, "quick": args.quick, "errors": {}}

    def save():
        r["elapsed_s"] = round(elapsed(), 1)
        if args.json:
            write_json(args.json, r)

    def section(name: str, fn):
        stage(name)
        try:
            r[name] = fn()
        except Exception as exc:  # one failed section must not cost the others
            traceback.print_exc()
            r["errors"][name] = f"{type(exc).__name__}: {exc}"
            r[name] = None
        save()
        return r[name]

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA GPU here")
    r["machine"] = machine(args.device)
    stage(f"machine: {r['machine']}")
    save()

    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="hm-gpu-bench-"))
    models_dir = work_dir / "models"
    stage(f"random {ARCH} checkpoint")
    model = r["model"] = random_clip_model(work_dir)

    from app.core.config import Settings
    from app.embedding import create_torch_encoder

    settings = Settings(model=model, models_dir=models_dir, device=args.device, runtime="torch")
    encoder = create_torch_encoder(settings).load()
    r["encoder"] = {"class": type(encoder).__name__, "device": str(encoder.device),
                    "param_device": str(next(encoder._visual.parameters()).device)}
    sizes = (1, 4, 8) if args.quick else BATCH_SIZES
    min_s = 0.2 if args.quick else args.min_seconds
    # The CPU benchmark's thread limits, set here as loading its code for the first section always did:
    # they hold for the processes this run starts (the decode workers); torch's pool is already sized.
    limit_threads()
    section("batch", lambda: batch_throughput(encoder, args.device, sizes, min_s))

    def cpu_reference():
        if args.device == "cpu":
            return encoder
        return create_torch_encoder(settings.model_copy(update={"device": "cpu"})).load()

    def parity_section():
        cpu_encoder = cpu_reference()
        try:
            return parity(encoder, cpu_encoder, args.device)
        finally:
            del cpu_encoder

    section("parity", parity_section)
    section("single", lambda: single_latency(encoder, args.device, 20 if args.quick else 100))
    encoder = None  # the sections that use it are done: its (GPU) memory goes back
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    repeats = 3 if args.quick else args.repeats
    section("query", lambda: queries(model, models_dir, work_dir / "data", args.device, repeats))

    if not args.no_decode:
        n_cores = cores()
        procs = sorted({p for p in (1, 4, 8, 16, n_cores) if p <= n_cores})
        if args.quick:
            procs = procs[:1]

        def decode_section():
            from app.pipeline.decode import working_side

            enc = create_torch_encoder(settings.model_copy(update={"device": "cpu"}))  # preprocessing only, not loaded
            rates = decode_rates(enc, procs, 2 if args.quick else 32)
            gpu = (r.get("batch") or {}).get("best_img_per_s")
            return {"img_per_s_by_processes": rates, "min_side": working_side(enc.preprocessing.size),
                    "gpu_best_img_per_s": gpu,
                    "gpu_over_all_cores": gpu / rates[max(rates)] if gpu else None}

        section("decode", decode_section)
    save()
    return r


def fmt(v, spec=",.0f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"device {r['device']}: {m.get('gpu') or 'CPU'}"
             + (f" ({m['gpu_memory_gib']} GiB, cc {m['gpu_capability']})" if m.get("gpu") else "")
             + f", torch {m['torch']}, CUDA {m['torch_cuda']}, cuDNN {m.get('cudnn')}, {m['cpus']} CPUs",
             f"model {r.get('model')} (random weights)"]
    rows = []
    b = r.get("batch")
    if b:
        fp16 = b["fp16_autocast"]
        for n in b["sizes"]:
            res, emb = b["resident"], b["embed_pixels"]
            rows.append((f"batch {n}: resident fp16 / fp32 / tf32",
                         " / ".join(fmt(res.get(f"{mode}_{n}")) for mode in ("fp16", "fp32", "tf32")) + " img/s"
                         + (f"  (fp16 {b['fp16_over_fp32_resident'][n]:.1f}x fp32)" if fp16 else "")))
            rows.append((f"batch {n}: embed_pixels served / fp32",
                         f"{fmt(emb.get(f'served_{n}'))} / {fmt(emb.get(f'fp32_{n}'))} img/s"
                         + (f"  ({b['served_over_fp32_embed_pixels'][n]:.1f}x)" if fp16 else "")))
        n = max(b["sizes"])
        rows.append((f"{n} images at HM_BATCH_SIZE={b['default_batch_size']}",
                     f"{fmt(b['embed_pixels'].get(f'default_batch_size_{n}'))} img/s"))
    p = r.get("parity")
    if p:
        rows.append(("cosine served vs fp32 (same device) min / mean",
                     f"{p['served_vs_fp32_same_device']['min']:.6f} / {p['served_vs_fp32_same_device']['mean']:.6f}"
                     f" on {p['images']} photos"))
        if "served_large_batch_vs_fp32_same_device" in p:
            q2 = p["served_large_batch_vs_fp32_same_device"]
            rows.append(("  same in a large batch (fp16 on CUDA) min / mean", f"{q2['min']:.6f} / {q2['mean']:.6f}"))
        if "served_vs_cpu_fp32" in p:
            rows.append(("cosine served vs CPU fp32 min / mean",
                         f"{p['served_vs_cpu_fp32']['min']:.6f} / {p['served_vs_cpu_fp32']['mean']:.6f}"))
        rows.append(("  random model: cosine between different photos",
                     f"mean {p['fp32_between_different_photos']['mean']:.4f}, max "
                     f"{p['fp32_between_different_photos']['max']:.4f}; error/spread {p['error_over_spread']:.4f}"))
    s = r.get("single")
    if s:
        rows.append(("embed_one p50 / p95", f"{s['embed_one_ms_p50']:.2f} / {s['embed_one_ms_p95']:.2f} ms "
                     f"(forward alone {s['forward_only_ms_p50']:.2f} / {s['forward_only_ms_p95']:.2f} ms, "
                     f"preprocessing {s['preprocess_ms_mean']:.2f} ms)"))
    q = r.get("query")
    if q:
        rows += [
            ("12 MP query, naive p50 / p95", f"{q['naive_ms_p50']:.0f} / {q['naive_ms_p95']:.0f} ms"),
            ("12 MP query, MatchingService.search p50 / p95",
             f"{q['search_ms_p50']:.0f} / {q['search_ms_p95']:.0f} ms ({q['speed_up_p50']:.1f}x faster)"),
            ("  with region proposals p50 / p95",
             f"{q['search_regions_ms_p50']:.0f} / {q['search_regions_ms_p95']:.0f} ms"),
            ("  draft decode alone p50 / embed of it p50",
             f"{q['decode_ms_p50']:.1f} / {q['embed_decoded_ms_p50']:.1f} ms (decoded {q['decoded_size']})"),
        ]
    d = r.get("decode")
    if d:
        rates = d["img_per_s_by_processes"]
        rows.append(("12 MP decode+preprocess, by processes",
                     ", ".join(f"{n}: {v:,.0f}" for n, v in rates.items()) + " img/s"))
        if d["gpu_over_all_cores"]:
            name = "GPU fp16" if b and b["fp16_autocast"] else "device"
            rows.append((f"  {name} best batch rate / all-core decode", f"{d['gpu_over_all_cores']:.1f}x"))
    if r.get("errors"):
        rows += [(f"ERROR in {k}", v) for k, v in r["errors"].items()]
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(lines + [f"{a:<{width}}  {v}" for a, v in rows] + [f"total {r.get('elapsed_s')} s"])


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda (default) or cpu (a check without a GPU)")
    add_json_option(parser, "Also write the figures to this file (rewritten after each section).")
    parser.add_argument("--quick", action="store_true", help="Batch sizes 1, 4, 8, few repeats: a check, not a figure.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed 12 MP queries per pipeline.")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="Timed seconds per batch figure.")
    parser.add_argument("--no-decode", action="store_true", help="Skip the multi-process decode rates.")
    parser.add_argument("--work-dir", type=Path, help="Random checkpoint and demo registry (default: a new temp dir).")
    args = parser.parse_args()
    result = run(args)
    result["packages"] = package_versions()
    try:
        result["imported_distributions"] = imported_distributions()
    except Exception as exc:
        result["imported_distributions"] = f"{type(exc).__name__}: {exc}"
    if args.json:
        write_json(args.json, result)
    try:
        print(table(result), flush=True)
    except Exception:  # the figures are in the JSON already; show them raw rather than nothing
        traceback.print_exc()
        print(json.dumps(result, indent=2, default=str), flush=True)
    print("packages: " + ", ".join(f"{k} {v}" for k, v in result["packages"].items()), flush=True)


if __name__ == "__main__":
    main()
