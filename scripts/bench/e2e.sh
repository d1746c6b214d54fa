#!/usr/bin/env bash
# End-to-end sampling speed of dmq against the peers a user would pick, back to back on this
# CPU: 16 images × 10 DDIM steps (batch 16, CFG 4 for the DiT), 2 threads, the embedded
# models' weights. Pause background jobs first (SIGSTOP) so every path sees the same machine.
#   1. scripts/bench/peers.py: PyTorch FP32, ONNX Runtime FP32 and INT8 (static QDQ)
#   2. examples/int_sample.rs: dmq FP32 (burn flex), fake-quant and the integer path
# then merges the rows into docs/results/kernels_e2e.json with each row's ratio to PyTorch
# FP32 and to ONNX Runtime INT8 of the same model (`vs_pytorch`, `vs_onnxruntime_int8`).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-16} STEPS=${STEPS:-10} REPS=${REPS:-3} THREADS=${THREADS:-2}
OUT=${OUT:-docs/results/kernels_e2e.json}
mkdir -p runs/bench
python3 scripts/bench/peers.py --model assets/models/unet-fmnist --n "$N" --steps "$STEPS" \
    --reps "$REPS" --threads "$THREADS" --out runs/bench/peers-unet.json
python3 scripts/bench/peers.py --model assets/models/dit-fmnist --n "$N" --steps "$STEPS" \
    --reps "$REPS" --threads "$THREADS" --cfg 4 --out runs/bench/peers-dit.json
cargo run --release --example int_sample -- --model both --n "$N" --steps "$STEPS" \
    --formats W8A8,W4A8,W4A4 --reps "$REPS" --out runs/bench/e2e-dmq.json
COMMIT=$(git rev-parse --short HEAD) python3 - "$OUT" <<'PY'
import json, os, sys
rows = json.load(open("runs/bench/e2e-dmq.json"))
for m in ["unet", "dit"]:
    for r in json.load(open(f"runs/bench/peers-{m}.json")):
        r["command"] = "scripts/bench/e2e.sh (scripts/bench/peers.py)"
        r["commit"] = os.environ["COMMIT"]
        rows.append(r)
for r in rows:
    peers = {p["path"]: p["images_per_s"] for p in rows if p["model"] == r["model"]
             and p["path"] in ("pytorch", "onnxruntime-int8")}
    r["vs_pytorch"] = r["images_per_s"] / peers["pytorch"]
    r["vs_onnxruntime_int8"] = r["images_per_s"] / peers["onnxruntime-int8"]
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(rows, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, sys.argv[1])
for r in rows:
    print(f"| {r['model']} | {r['path']} | {r['format']} | {r['images_per_s']:.2f} | "
          f"{r['vs_pytorch']:.2f}× | {r['vs_onnxruntime_int8']:.2f}× | "
          f"{r.get('peak_rss_mib', float('nan')):.0f} |")
PY
