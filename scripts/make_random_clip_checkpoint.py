"""Write an open_clip checkpoint with random weights, for timing and tests on machines that cannot
download real ones (speed does not depend on weight values).

    python scripts/make_random_clip_checkpoint.py models/vit-b-32-random.pt --arch ViT-B-32
    HM_MODEL=clip:ViT-B-32:models/vit-b-32-random.pt heritage-match serve
"""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.arch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({args.arch}, random weights, seed {args.seed}): not for matching, only for timing")


if __name__ == "__main__":
    main()
