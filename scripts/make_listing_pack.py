"""Make a seeded "listing transforms" benchmark pack from a registry.

Every registry photo becomes a reference; each object's first photo is put through the listing
transforms of ``app/jobs/listing_transforms.py`` (crop, rotation, perspective, colour, blur, JPEG q30,
watermark, screenshot, composite, downscale to 300 px) as queries; ``--lots`` adds photos of two
objects together, ``--holdout`` leaves objects out of the references for open-set queries, ``--twins``
adds near twins of registered objects (one region relabelled, repainted or re-inscribed; tagged
``twin``, never to be called ``match``).

    .venv/bin/python -m scripts.make_listing_pack --demo-coins out/coins-listing
    .venv/bin/python -m scripts.make_listing_pack --demo-coins out/coins-listing-twins --holdout 8 --twins 16
    .venv/bin/python -m scripts.make_listing_pack --data-dir index out/my-registry-listing --holdout 20 --twins 50
    .venv/bin/heritage-match evaluate out/coins-listing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.jobs.listing_transforms import write_pack
from scripts.common import script_parser


def demo_coin_objects():
    from app.jobs.demo import coin_crops

    return [(c.inventory_number, "coin", [c.image]) for c in coin_crops()]


def data_dir_objects(data_dir: Path, limit: int | None):
    from app.core.config import Settings
    from app.jobs.listing_transforms import registry_objects
    from app.registry.store import RegistryStore

    if not Path(data_dir).is_dir():
        sys.exit(f"{data_dir} is not a heritage-match data directory")
    settings = Settings(data_dir=data_dir)
    store = RegistryStore(settings.db_url, settings.data_dir / "photos", photo_store=settings.photo_store)
    try:
        return registry_objects(store, limit)
    finally:
        store.close()


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("out", type=Path, help="folder of the new pack (must not exist)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo-coins", action="store_true", help="the 24 demo coins")
    src.add_argument("--data-dir", type=Path, help="a heritage-match data directory (HM_DATA_DIR)")
    ap.add_argument("--limit", type=int, help="at most this many artefacts")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--holdout", type=int, default=0, help="objects left unregistered (open-set queries)")
    ap.add_argument("--lots", type=int, default=0, help="photos showing two objects together")
    ap.add_argument("--twins", type=int, default=0,
                    help="registered objects that get a near-twin query (open-set: must not be matched); "
                         "at most one per registered object")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; choose a new folder")
    objects = demo_coin_objects() if args.demo_coins else data_dir_objects(args.data_dir, args.limit)
    if not objects:
        sys.exit("the registry has no artefact with photos")
    print(json.dumps(write_pack(objects, args.out, seed=args.seed, holdout=args.holdout, lots=args.lots,
                                 twins=args.twins)))


if __name__ == "__main__":
    main()
