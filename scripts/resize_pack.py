"""Copy a benchmark pack with every photo resized to another long side (and optional sensor noise).

The decode and the keypoints depend on a photo's size, so a calibration fitted on 1280 px photos
should be checked on photos of the size a deployment receives (12 MP phone photos, 1024 px listings):

    .venv/bin/python -m scripts.resize_pack ../shared/benchmarks/museum-paintings out/museum-12mp \\
        --long-side 4032 --noise 3
    .venv/bin/python -m scripts.resize_pack ../shared/benchmarks/museum-paintings out/museum-1024 --long-side 1024
    HM_MODEL=efficientnet-lite0 .venv/bin/heritage-match evaluate out/museum-12mp

The copy is of third-party photos: keep it out of the repository, like the pack itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scripts.common import script_parser, sensor_noise


def resize_photo(src: Path, dst: Path, long_side: int, noise: float, rng: np.random.Generator, quality: int) -> None:
    img = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
    scale = long_side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    if noise > 0:  # an upscaled photo is unnaturally smooth; a phone sensor's noise is not
        img = sensor_noise(img, noise, rng)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, "JPEG", quality=quality)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("pack", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--long-side", type=int, required=True, help="Long side of every photo, in pixels.")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian noise, in 8-bit levels (0: none).")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the copies.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    for name in ("references.jsonl", "queries.jsonl"):
        lines = (args.pack / name).read_text().splitlines()
        (args.out / name).write_text("\n".join(lines) + "\n")
        for line in lines:
            if not line.strip():
                continue
            rel = json.loads(line)["path"]
            dst = args.out / rel
            if dst.exists():  # re-running continues an interrupted copy
                continue
            try:
                resize_photo(args.pack / rel, dst, args.long_side, args.noise, rng, args.quality)
                done += 1
            except OSError as exc:  # one unreadable photo does not stop the copy; evaluate reports it
                failed += 1
                print(f"skipped {rel}: {exc}", file=sys.stderr)
    print(f"{done} photos written to {args.out}" + (f", {failed} skipped" if failed else ""))


if __name__ == "__main__":
    main()
