"""Which evidence tells objects of one kind apart across a change of viewpoint: colours, object views?

Ranks every registered object of a pack for each query by the embedding's cosine plus one colour
similarity, with equal weights and no fitting (so nothing here has learnt the pack), and prints
recall@1 per variant: the embedding alone, plus the whole picture's hue histogram (the signature's
``colour``), plus a hue histogram of the object alone, plus the object's CIELAB histogram (the
signature's ``object_colour``). The embedding's cosine is the best of the query's whole frame and
its object's box against each registry photo's whole frame; "with object views" also against each
registry photo's object box embedded alone, as the search takes it.

    HM_MODEL=efficientnet-lite1 .venv/bin/python -m scripts.colour_ablation \\
        ../shared/benchmarks/eth80-views ../shared/benchmarks/coil100-views
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.config import get_settings
from app.embedding import create_encoder
from app.pipeline import signature as sig
from app.pipeline.regions import Foreground, crop, find_foreground, object_box, propose_regions
from scripts.common import script_parser


def object_hue_histogram(fg: Foreground) -> np.ndarray:
    """The signature's whole-picture hue histogram, over the object's pixels only."""
    return sig.hue_histogram(fg.small, sig.object_weights(fg))


def describe(encoder, pack: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    images = [Image.open(pack / r["path"]).convert("RGB") for r in rows]
    fgs = [find_foreground(im) for im in images]
    out = {"frame": encoder.embed(images),
           "colour": np.stack([sig.colour_signature(im) for im in images]),
           "object_hue": np.stack([object_hue_histogram(fg) for fg in fgs]),
           "object_colour": np.stack([sig.object_colour_signature(fg) for fg in fgs])}
    boxes = [object_box(im, propose_regions(im, fg)) for im, fg in zip(images, fgs)]
    out["box"] = encoder.embed([crop(im, b) if b else im for im, b in zip(images, boxes)])
    return out


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("packs", nargs="+", type=Path)
    args = ap.parse_args()
    encoder = create_encoder(get_settings())
    for pack in args.packs:
        refs = [json.loads(line) for line in (pack / "references.jsonl").read_text().splitlines() if line.strip()]
        queries = [q for q in (json.loads(line) for line in (pack / "queries.jsonl").read_text().splitlines()
                               if line.strip()) if q["object_ids"]]
        r, q = describe(encoder, pack, refs), describe(encoder, pack, queries)
        objects = sorted({x["object_id"] for x in refs})
        owner = np.array([objects.index(x["object_id"]) for x in refs])
        truth = [set(x["object_ids"]) for x in queries]

        def recall_at_1(sim: np.ndarray) -> float:
            per_object = np.stack([sim[:, owner == j].max(axis=1) for j in range(len(objects))], axis=1)
            return float(np.mean([objects[t] in want for t, want in zip(per_object.argmax(axis=1), truth)]))

        frames = np.maximum(q["frame"] @ r["frame"].T, q["box"] @ r["frame"].T)
        views = np.maximum(frames, np.maximum(q["frame"] @ r["box"].T, q["box"] @ r["box"].T))
        print(f"{pack.name} ({len(queries)} queries of registered objects, recall@1; {encoder.name})")
        for label, cosine in (("", frames), ("with object views: ", views)):
            for name, sim in ((f"{label}embedding", cosine),
                              ("  + whole-picture hue (colour)", cosine + q["colour"] @ r["colour"].T),
                              ("  + object's hue", cosine + q["object_hue"] @ r["object_hue"].T),
                              ("  + object's CIELAB (object_colour)",
                               cosine + q["object_colour"] @ r["object_colour"].T)):
                print(f"  {name:40s} {recall_at_1(sim):.4f}")


if __name__ == "__main__":
    main()
