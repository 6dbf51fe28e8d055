#!/usr/bin/env bash
# Run `heritage-match evaluate` on every benchmark pack and keep the JSON figures.
# Usage: scripts/evaluate_packs.sh [PACKS_DIR] [OUT_DIR]   (defaults: ../shared/benchmarks, out/eval)
set -euo pipefail
packs=${1:-../shared/benchmarks}
out=${2:-out/eval}
bin=${HM_BIN:-.venv/bin/heritage-match}
mkdir -p "$out"
for pack in "$packs"/*/; do
  [ -f "$pack/queries.jsonl" ] || continue
  name=$(basename "$pack")
  echo "== $name" >&2
  "$bin" evaluate "$pack" --json "$out/$name.json" >/dev/null
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: r[k] for k in ('recall@1','recall@5','mAP','false_match_rate','match_recall','latency_ms_p50')})" "$out/$name.json" "$name"
done
