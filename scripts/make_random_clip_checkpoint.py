"""Write an open_clip checkpoint with random weights, for timing and tests on machines that cannot
download real ones (speed does not depend on weight values).

    python -m scripts.make_random_clip_checkpoint models/vit-b-32-random.pt --arch ViT-B-32
    HM_MODEL=clip:ViT-B-32:models/vit-b-32-random.pt heritage-match serve
"""

from __future__ import annotations

from pathlib import Path

from scripts.common import ARCH, script_parser, write_random_clip_checkpoint


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default=ARCH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_random_clip_checkpoint(args.out, args.arch, args.seed)
    print(f"wrote {args.out} ({args.arch}, random weights, seed {args.seed}): not for matching, only for timing")


if __name__ == "__main__":
    main()
