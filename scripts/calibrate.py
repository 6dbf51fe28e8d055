"""Fit the calibrated score and the verdict thresholds of the active model on benchmark packs, and
check them on objects the fit never saw.

Every pack is searched through the code of the API; every returned candidate becomes one labelled
example (is it the right object?) with its evidence. Validation is by object across all packs
(``app/jobs/calibration.py``): grouped k-fold, every object's queries scored by a fit that never saw
that object, both as registered and as an unregistered object whose sibling is registered; each
pack's false-match rate comes with its Clopper-Pearson 95% upper bound. The final fit uses all data
and is written, with the held-out figures, to ``app/pipeline/calibrations/<model>.json``.

    .venv/bin/python -m scripts.make_listing_pack --demo-coins out/coins-listing --holdout 4 --lots 6 --twins 20
    HM_MODEL=efficientnet-lite1 .venv/bin/python -m scripts.calibrate ../shared/benchmarks/museum-paintings \\
        ../shared/benchmarks/coil100-views ../shared/benchmarks/eth80-views out/coins-listing
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from app.core.config import get_settings
from app.embedding import create_encoder
from app.jobs.calibration import FOLDS, fit_and_check, pack_rows
from app.pipeline.calibrate import calibration_path
from scripts.common import script_parser, write_json


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("packs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="calibration file (default: app/pipeline/calibrations/<model>.json)")
    ap.add_argument("--cache", type=Path, default=Path("out/calibration-cache"))
    ap.add_argument("--folds", type=int, default=FOLDS, help="object-grouped folds of the cross-validation")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()

    # Candidates are collected with the uncalibrated thresholds so no earlier fit colours them;
    # the evidence itself does not depend on the calibration.
    settings = get_settings().model_copy(update={"match_threshold": None, "possible_threshold": None})
    encoder = create_encoder(settings)
    rows = []
    for pack in args.packs:
        pack_rows_ = pack_rows(pack, settings, encoder, args.cache)
        print(f"{pack.name}: {len(pack_rows_)} candidates", file=sys.stderr)
        rows.extend(pack_rows_)
    packs = {p.name: {"candidates": sum(1 for r in rows if r["pack"] == p.name),
                      "queries_sha256": hashlib.sha256((p / "queries.jsonl").read_bytes()).hexdigest()[:16]}
             for p in args.packs}
    cal = fit_and_check(rows, encoder.fingerprint, packs,
                        "scripts/calibrate.py " + " ".join(p.name for p in args.packs), args.folds, args.seed)
    out = args.out or calibration_path(encoder.fingerprint.name)
    write_json(out, cal.to_json())
    print(json.dumps(cal.to_json(), indent=2))
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
