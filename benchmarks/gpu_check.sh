#!/usr/bin/env bash
# The GPU check: on a machine with a GPU (under 8 minutes on one card), in order
#   1. numerics: ESVAE and FSVAE on the device against the CPU reference, float64 (the verdict:
#      identical spikes, outputs within 1e-9, gradients within 1e-6) and float32 (reported);
#   2. `python -m esvae_bench --device DEVICE` for ESVAE and FSVAE at T = 16, batch 64 and the paper's batch;
#   3. a bf16 variant: this project has no reduced-precision mode, so this step says so;
#   4. one epoch of the paper configuration (ESVAE, Fashion-MNIST, T = 16, the paper's batch) with
#      its training images/s;
# and writes OUT/summary.md (the table the README's GPU row takes) next to each step's JSON and log.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU: cuda, OUT=benchmarks/gpu
#   bash benchmarks/gpu_check.sh --device cpu --smoke --out /tmp/check   # what the test runs on CPU
#
# --smoke shrinks every step (T = 2, batch 4 and 8, 64 training images, no memory measurement) so that the script itself
# is exercised where there is no GPU; its numbers mean nothing. The data folder is $ESVAE_DATA or
# ./data (Fashion-MNIST is unpacked there from the installed package when missing).
set -euo pipefail
usage_error() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

DEVICE=cuda
SMOKE=0
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || usage_error "--device needs a value"; DEVICE=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --out) [ $# -ge 2 ] || usage_error "--out needs a folder"; OUT=$2; shift 2 ;;
    -h|--help) sed -n "2,19p" "$0"; exit 0 ;;
    *) usage_error "unknown argument '$1' (see --help)" ;;
  esac
done
if [ -n "$OUT" ]; then mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd); fi  # relative to where it was called
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu}
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check.sh: error: no Python at '$PY'; run 'bash scripts/setup.sh' first or set PYTHON" >&2
  exit 2
fi
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: error: --device $DEVICE but torch sees no CUDA device" >&2
  exit 2
fi
mkdir -p "$OUT"
PAPER_BATCH=$("$PY" -c "from esvae.config import paper_train_config; print(paper_train_config('fashion').batch_size)")
if [ "$SMOKE" = 1 ]; then
  T=2; BATCH=4; PAPER_BATCH=8; REPEATS=1; EPOCH=(--train-subset 64 --test-subset 16 --timesteps 2)
  BENCH=(--no-memory --allocator default)
else
  T=16; BATCH=64; REPEATS=3; EPOCH=(--timesteps 16); BENCH=()
fi
start=$(date +%s)
step() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" >&2; }

step "1/4 numerics against the CPU reference ($DEVICE, T=$T)"
"$PY" -m esvae_bench.devices --device "$DEVICE" --timesteps "$T" --batch 16 --json "$OUT/numerics.json" \
  > "$OUT/numerics.md" 2> "$OUT/numerics.log" || { cat "$OUT/numerics.md" "$OUT/numerics.log" >&2; exit 1; }

BATCHES=("$BATCH")
[ "$PAPER_BATCH" = "$BATCH" ] || BATCHES+=("$PAPER_BATCH")
for b in "${BATCHES[@]}"; do
  step "2/4 esvae_bench --device $DEVICE, T=$T, batch $b"
  "$PY" -m esvae_bench --device "$DEVICE" --models esvae fsvae --timesteps "$T" --batch "$b" --repeats "$REPEATS" \
    --check-batch 8 "${BENCH[@]}" --json "$OUT/bench_batch$b.json" > "$OUT/bench_batch$b.md" 2> "$OUT/bench_batch$b.log" \
    || { tail -5 "$OUT/bench_batch$b.log" >&2; exit 1; }
done

step "3/4 bf16: no reduced-precision mode exists in this project; skipped"
echo "no bf16 mode: every run is float32 (none was built; see the README's Performance section)" > "$OUT/bf16.md"

step "4/4 one epoch of the paper configuration, ESVAE on Fashion-MNIST (batch $PAPER_BATCH)"
rm -rf "$OUT/epoch"
"$PY" -m esvae train --model esvae --dataset fashion --epochs 1 --batch-size "$PAPER_BATCH" --device "$DEVICE" \
  --no-eval-at-init "${EPOCH[@]}" --out "$OUT/epoch" > "$OUT/epoch.log" 2>&1 || { tail -5 "$OUT/epoch.log" >&2; exit 1; }

"$PY" - "$OUT" "$DEVICE" "$SMOKE" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
from pathlib import Path
from esvae.history import read_history
out, device, smoke, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
num = json.loads((out / "numerics.json").read_text())
lines = [f"# GPU check on {num['device']}" + (" (SMOKE RUN: sizes shrunk, numbers meaningless)" if smoke else ""), "",
         f"Numerics vs the CPU reference, float64: {'same' if num['ok'] else 'MISMATCH'}", "",
         (out / "numerics.md").read_text().strip(), "", "| model | T | batch | mode | naive img/s | ours img/s | speed-up |",
         "|---|---|---|---|---|---|---|"]
for f in sorted(out.glob("bench_batch*.json"), key=lambda p: int(p.stem.split("batch")[1])):
    rep = json.loads(f.read_text())
    alloc = list(rep["conditions"]["allocators"])[0]
    for r in rep["rows"]:
        for mode in ("train", "eval", "sample"):
            ips = r["images_per_s"][alloc]
            lines.append(f"| {r['model']} | {r['timesteps']} | {r['batch']} | {mode} | {ips['naive'][mode]:.0f} | "
                         f"{ips['ours'][mode]:.0f} | {r['speedup'][alloc][mode]:.1f}x |")
epoch = [r for r in read_history(out / "epoch" / "history.tsv") if r.get("epoch") == 1]
rate = epoch[0]["train_images_per_s"] if epoch else float("nan")
lines += ["", f"One epoch of ESVAE's paper configuration on Fashion-MNIST: {rate:.0f} training images/s",
          "", (out / "bf16.md").read_text().strip(), "", f"Device {device}; the whole check took {seconds} s."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
