#!/usr/bin/env bash
# Every GPU benchmark in one command, without weights: the one-pass extractor against the reference
# schedule on random-weight real-size models of each bundled preset (bf16, and 4-bit NF4 for the
# paper's Qwen2-VL-7B), then the 11 x 3 alpha sweep of the heads. Writes one JSON per run and a
# summary. Sized to finish in under 8 minutes on one H100-class GPU.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          (default: results/gpu-<date>)
#   SMOKE=1 bash benchmarks/gpu.sh            (CPU, 2 layers at width 128: checks the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [[ "${SMOKE:-0}" == "1" ]]; then
  COMMON=(--device cpu --layers 2 --hidden 128 --images 2 --batch-size 2 --size 32 --ref-images 1
          --ref-max-new-tokens 4 --max-new-tokens 4)
  PRESETS=(qwen2-vl-7b-instruct)
  QUANT_PRESETS=()
  HEADS=(--device cpu --n-train 512 --n-eval 128 --dim 64 --seeds 0 --epochs 1 --reference-steps 5)
else
  COMMON=(--device cuda --dtype bf16 --images 32 --batch-size 8 --real-size 448 --ref-images 1
          --ref-max-new-tokens 256)
  PRESETS=(qwen2-vl-7b-instruct qwen2.5-vl-7b-instruct qwen3-vl-4b-instruct llava-onevision-qwen2-7b-ov gemma-3-4b-it
           smolvlm-instruct internvl3-1b-hf
           )
  QUANT_PRESETS=(qwen2-vl-7b-instruct)
  HEADS=(--device cuda)
fi
for p in "${PRESETS[@]}"; do
  echo "== $p bf16"
  "$PY" benchmarks/extract.py --arch "$p" --random-weights "${COMMON[@]}" --json "$OUT/extract-$p.json"
done
for p in "${QUANT_PRESETS[@]}"; do
  echo "== $p 4bit"
  "$PY" benchmarks/extract.py --arch "$p" --random-weights "${COMMON[@]}" --quant 4bit --dtype bf16 \
    --json "$OUT/extract-$p-4bit.json"
done
echo "== heads (alpha sweep)"
"$PY" benchmarks/heads.py "${HEADS[@]}" --json "$OUT/heads.json"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
(out / "summary.json").write_text(json.dumps(runs, indent=2))
print(f"summary: {out / 'summary.json'} ({len(runs)} runs)")
PYEOF
