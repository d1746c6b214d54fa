#!/usr/bin/env bash
# Every method on the embedded text-to-image model `t2i-fmnist`, through the `dmq` binary:
# one quantized file and one `dmq eval` row per (method, preset), then the merged rows in
# docs/results/t2i.json. Resumable: a finished file or row is not recomputed (nor a row already
# in docs/results/t2i.json), so re-running after an interruption picks up where it stopped.
# Work files go to $WORK (not in git). MERGE_ONLY=1 only merges the rows there into the JSON.
#
#   cargo build --release -p dmq-cli && scripts/results/t2i.sh
#
# Protocol: 20 DDIM steps, CFG 4 (calibration and sampling), $N samples with seed 2024, image i
# prompted "a photo of a {class i mod 10}"; FD, prompt accuracy (the metric classifier's share
# of the prompted class), PSNR/SSIM against the FP pipeline from the same noise and prompts.
set -euo pipefail
DMQ=${DMQ:-./target/release/dmq}
MODEL=${MODEL:-assets/models/t2i-fmnist}
WORK=${WORK:-runs/t2i-results}
N=${N:-500}
CFG=4
STEPS=20
mkdir -p "$WORK" docs/results/t2i

# rows already in docs/results/t2i.json (an earlier session's) count as done: their row files
# and quantize times are restored, so only the missing rows run
python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
if os.path.exists("docs/results/t2i.json"):
    for r in json.load(open("docs/results/t2i.json")):
        row = os.path.join(work, f"{r['name']}.seed{r['seed']}.row.json")
        if not os.path.exists(row):
            json.dump(r, open(row, "w"))
        if r.get("quantize_args") and r["seed"] == 2024:
            open(os.path.join(work, r["name"] + ".quantize_args"), "w").write(r["quantize_args"] + "\n")
        q = os.path.join(work, r["name"] + ".quantize_s")
        if r.get("quantize_s") is not None and not os.path.exists(q):
            open(q, "w").write(f"{r['quantize_s']:.0f}\n")
PY

# quantize NAME METHOD PRESET [extra quantize flags...]: the file, its wall time
quantize() {
    local name=$1 method=$2 preset=$3
    shift 3
    [ -f "$WORK/$name.dmq.safetensors" ] && return 0
    # scored already (FORCE=1: the file is needed for another seed)
    [ -z "${FORCE:-}" ] && [ -f "$WORK/$name.seed2024.row.json" ] && return 0
    local t0=$SECONDS
    # a searched config carries its own timesteps
    local steps=(--steps $STEPS)
    case " $* " in *" --config "*) steps=() ;; esac
    "$DMQ" quantize --model "$MODEL" --method "$method" --preset "$preset" "${steps[@]}" \
        --cfg $CFG --out "$WORK/$name.dmq.safetensors" "$@"
    echo $((SECONDS - t0)) > "$WORK/$name.quantize_s"
    echo "$method $preset $*" > "$WORK/$name.quantize_args"
}

# evaluate NAME [SEED]: the row (and an FP | quantized grid, columns = the ten class prompts)
evaluate() {
    local name=$1 seed=${2:-2024}
    local row="$WORK/$name.seed$seed.row.json"
    [ -f "$row" ] && return 0
    local model="$WORK/$name.dmq.safetensors" fp=(--fp "$MODEL")
    if [ "$name" = fp ]; then model=$MODEL; fp=(); fi
    local steps=(--steps $STEPS)
    [ "$name" = tmpq ] && steps=()
    "$DMQ" eval --model "$model" "${fp[@]}" --samples "$N" "${steps[@]}" --cfg $CFG \
        --seed "$seed" --json "$row.tmp" \
        $( [ "$seed" = 2024 ] && [ "$name" != fp ] && echo --grid "docs/results/t2i/$name.png" )
    mv "$row.tmp" "$row"
}

if [ -z "${MERGE_ONLY:-}" ]; then
evaluate fp 2024
# Iterations: what fits one session on 2 cores, stated per row on the page (quantize's
# --iters-scale multiplies every iteration count of the method). Q-Diffusion W4A8 ran the
# defaults (400 + 200 iterations per unit, 12 min); the others are scaled: Q-Diffusion W4A4 and
# QuEST 0.25, EfficientDM 0.5 (100 trajectories × 20 steps), BinaryDM 0.25 (500 QAT steps).
extra() {
    case $1 in
        qdiffusion-W4A8 | naive-* | qdiffusion-W8A8) ;;
        qdiffusion-* | quest-*) echo --iters-scale 0.25 ;;
        efficientdm-*) echo --iters-scale 0.5 ;;
        binarydm-*) echo --iters-scale 0.25 ;;
    esac
}
for preset in W4A8 W4A4; do
    for method in naive qdiffusion efficientdm quest; do
        quantize "$method-$preset" $method $preset $(extra "$method-$preset")
        evaluate "$method-$preset"
    done
done
quantize binarydm-W1A4 binarydm W1A4 $(extra binarydm-W1A4)
evaluate binarydm-W1A4

# TMPQ-DM: the mixed-precision search (bits {8, 7, 6, 5}) at the BitOPs of uniform W6A6, then
# its file
if [ ! -f "$WORK/tmpq.config.json" ]; then
    t0=$SECONDS
    "$DMQ" search --model "$MODEL" --steps $STEPS --cfg $CFG --population 12 --epochs 3 \
        --fitness-samples 16 --out "$WORK/tmpq.config.json"
    echo $((SECONDS - t0)) > "$WORK/tmpq.search_s"
fi
quantize tmpq qdiffusion W8A8 --config "$WORK/tmpq.config.json"
evaluate tmpq

quantize naive-W8A8 naive W8A8
evaluate naive-W8A8

# the noise: FP over three noise seeds, and the spread of one quantized row
for seed in 2025 2026; do
    evaluate fp $seed
    [ -f "$WORK/naive-W4A8.seed$seed.row.json" ] || FORCE=1 quantize naive-W4A8 naive W4A8
    evaluate naive-W4A8 $seed
done

# the components too: Q-Diffusion W4A8 with the text encoder and VAE weights at 8 bits
quantize qdiffusion-W4A8-te8-vae8 qdiffusion W4A8 --text-encoder-bits 8 --vae-bits 8 \
    --iters-scale 0.25
# the iteration cut's own effect: Q-Diffusion W4A8 at 0.25
quantize qdiffusion-W4A8-x0.25 qdiffusion W4A8 --iters-scale 0.25
evaluate qdiffusion-W4A8-x0.25
evaluate qdiffusion-W4A8-te8-vae8

quantize qdiffusion-W8A8 qdiffusion W8A8 --iters-scale 0.25
evaluate qdiffusion-W8A8

fi # MERGE_ONLY

python3 - "$WORK" <<'PY'
import json, os, subprocess, sys
work = sys.argv[1]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
rows = []
for f in sorted(os.listdir(work)):
    if not f.endswith(".row.json"):
        continue
    name, seed = f[: -len(".row.json")].rsplit(".seed", 1)
    r = json.load(open(os.path.join(work, f)))
    q = os.path.join(work, name + ".quantize_s")
    r["name"], r["seed"] = name, int(seed)
    r["quantize_s"] = float(open(q).read()) if os.path.exists(q) else None
    a = os.path.join(work, name + ".quantize_args")
    if os.path.exists(a):  # method, preset and the extra quantize flags of the row
        r["quantize_args"] = open(a).read().strip()
    r.setdefault("commit", commit)
    rows.append(r)
json.dump(rows, open("docs/results/t2i.json", "w"), indent=1)
print(f"{len(rows)} rows -> docs/results/t2i.json")
# the table of docs/results/t2i.md (seed 2024 rows)
f = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
print("| row | quantize flags | samples | FD test ↓ | FD vs FP ↓ | prompt acc. | PSNR vs FP "
      "| SSIM vs FP | GBitOPs/img | model KiB | quantize s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = ["fp", "naive-W8A8", "qdiffusion-W8A8", "naive-W4A8", "qdiffusion-W4A8",
         "qdiffusion-W4A8-x0.25", "efficientdm-W4A8", "quest-W4A8", "qdiffusion-W4A8-te8-vae8",
         "naive-W4A4", "qdiffusion-W4A4", "efficientdm-W4A4", "quest-W4A4", "binarydm-W1A4",
         "tmpq"]
rank = lambda r: (order.index(r["name"]) if r["name"] in order else len(order), r["seed"])
for r in sorted(rows, key=rank):
    if r["seed"] != 2024:
        continue
    acc = None if r["class_acc"] is None else 100 * r["class_acc"]
    print(f"| {r['name']} | {r.get('quantize_args', '–')} | {r['samples']} | {f(r['fd_test'])} | {f(r['fd_fp'])} | {f(acc, 1)}% "
          f"| {f(r['psnr_fp'])} | {f(r['ssim_fp'], 3)} | {f(r['gbitops_per_image'], 2)} "
          f"| {r['model_bytes'] / 1024:.1f} | {f(r['quantize_s'], 0)} |")
PY
