"""What the scripts share: progress lines, timing, argument and JSON helpers, the synthetic photos they
measure with, the random CLIP checkpoint, and the two 12 MP query pipelines (naive and the service's).

Imports of the project and of torch stay inside the functions that need them, so that a script that
uses none of them (``resize_pack``) starts fast, and a benchmark sets its thread limits before any
library sizes its pools.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from app.core.config import Settings

# The repository root: the working directory of the processes a benchmark starts (its .env, its paths).
ROOT = Path(__file__).resolve().parents[1]
# The CLIP architecture the benchmarks time, with random weights when no real ones are present.
ARCH = "ViT-B-32"
RANDOM_CHECKPOINT = "vit-b-32-random.pt"

_T0 = time.perf_counter()


# --- progress and timing ----------------------------------------------------------------------------


def elapsed() -> float:
    """Seconds since the run started (since this module was imported)."""
    return time.perf_counter() - _T0


def stage(name: str, file: TextIO | None = None) -> None:
    """A progress line with the run's elapsed time, on stderr unless ``file``: a full run takes minutes."""
    print(f"[{elapsed():6.1f} s] {name}", file=file or sys.stderr, flush=True)


def cores() -> int:
    """The cores this process may use (its affinity), which the thread limits follow."""
    return len(os.sched_getaffinity(0))


def limit_threads() -> None:
    """No more threads than ``cores()`` in every OpenMP and BLAS pool loaded from now on, in this process
    and the ones it starts (an explicit setting in the environment wins)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(cores()))


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def timed(fn, repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall times in ms of ``repeats`` calls, after one untimed warm-up call; with ``cpu``, the CPU
    time of each call (all of this process's threads, in ms) is appended to it."""
    fn()
    out = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - c) * 1000)
    return out


# --- arguments and output -----------------------------------------------------------------------------


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: its module docstring, as written, is its ``--help`` text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_json_option(parser: argparse.ArgumentParser, help: str | None = "Also write the figures to this file.") -> None:
    parser.add_argument("--json", type=Path, help=help)


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON in ``path`` (its folder made first); what is not JSON is written as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# --- synthetic photos ---------------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, size: tuple[int, int], *, levels: tuple[int, int] = (0, 256),
                 shape_size: tuple[int, int] = (10, 120), rectangles: bool = False, shapes: int = 10) -> Image.Image:
    """Smooth random colours (a 6x8 grid of ``levels``, upscaled) with ``shapes`` random ellipses on top,
    and as many rectangles when ``rectangles``: a distinct synthetic photo for each seed."""
    img = Image.fromarray(rng.integers(*levels, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x0, y0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        box = (x0, y0, x0 + int(rng.integers(*shape_size)), y0 + int(rng.integers(*shape_size)))
        shape = draw.rectangle if rectangles and rng.random() >= 0.5 else draw.ellipse
        shape(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def sensor_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """``img`` with Gaussian noise of ``sigma`` 8-bit levels, like a phone sensor's (an upscaled photo is
    unnaturally smooth)."""
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, sigma, (img.height, img.width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def phone_jpeg(seed: int = 0, size=(4032, 3024)) -> bytes:
    """A 12 MP JPEG with a photo's content and sensor-like noise (a real photograph, upscaled)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    img = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    return jpeg_bytes(sensor_noise(img, 4, rng), quality=92)


def decoded_photos(count: int) -> list[Image.Image]:
    """Decoded photos at the size the service decodes a large JPEG to (``app.pipeline.decode.working_side``)."""
    from app.embedding.export import parity_images
    from app.pipeline.decode import working_side

    base = parity_images()
    photos = []
    for i in range(count):
        img = base[i % len(base)]
        scale = working_side(224) / min(img.size)
        photos.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR))
    return photos


# --- the model ----------------------------------------------------------------------------------------


def write_random_clip_checkpoint(out: Path, arch: str = ARCH, seed: int = 0) -> Path:
    """An open_clip state dict of ``arch`` with random weights drawn from ``seed``, written to ``out``."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out


def random_clip_model(folder: Path) -> str:
    """The ``HM_MODEL`` spec of a random ViT-B-32 (seed 0) kept in ``folder``, written if it is not there."""
    checkpoint = folder / RANDOM_CHECKPOINT
    if not checkpoint.is_file():
        write_random_clip_checkpoint(checkpoint)
    return f"clip:{ARCH}:{checkpoint}"


# --- the 12 MP query ----------------------------------------------------------------------------------


def naive_query(model: str, models_dir: Path, jpeg: bytes, repeats: int, device: str = "cpu") -> list[float]:
    """Full decode, open_clip's own torchvision transforms, eager fp32 torch: what a first version does."""
    import open_clip
    import torch

    from app.core.config import Settings
    from app.embedding import create_torch_encoder

    encoder = create_torch_encoder(Settings(model=model, models_dir=models_dir, device=device)).load()
    transform = open_clip.image_transform(encoder.preprocessing.size, is_train=False)

    def run():
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        with torch.no_grad():
            encoder._visual(transform(img).unsqueeze(0).to(device)).cpu()  # back on the host: synchronised

    return timed(run, repeats)


def project_queries(settings: Settings, jpeg: bytes, repeats: int, regions_options=(False, True)) -> dict:
    """``MatchingService.search`` on the demo registry: the API's code path, whole frame and with regions.

    Wall times in ms per option, and under ``"cpu"`` the CPU time of each whole-frame search: divided by
    the cores, the shortest wall time any overlap of its steps could reach. Under ``"decode_embed"``: the
    service's decode and embedding of the photo alone, the two steps the naive pipeline is made of (no
    index search, hash, colour, keypoints or verification).
    """
    from app.jobs.demo import seed_demo
    from app.service import MatchingService

    out: dict = {"cpu": []}
    for regions in regions_options:
        service = MatchingService(settings.model_copy(update={"region_proposals": regions})).start()
        if service.index is None or service.index.count == 0:
            seed_demo(service)
        out[regions] = timed(lambda: service.search(jpeg, top_k=5), repeats, None if regions else out["cpu"])
        if not regions:
            out["decode_embed"] = timed(lambda: service.encoder.embed([service.decode(jpeg).image]), repeats)
        service.close()
    return out
