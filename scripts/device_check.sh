#!/usr/bin/env bash
# One prepared check of the GPU paths, for a machine with a CUDA GPU (about 8 minutes on one
# H100/H200): the `cuda` tests, the train benchmark on the GPU in bf16 (ours and stock
# nn.Transformer, at d_model 256 and at the paper's base size with 25k-token batches; tokens/s
# and MFU against the GPU's measured bf16 matmul peak), a 5-minute Multi30k training in bf16
# with its test BLEU, and the decode benchmark on the GPU with that run. Results: one JSON file
# ($OUT/device_check.json) and a log ($OUT/device_check.log).
#
#   scripts/device_check.sh                  # on the GPU machine, from the repository root
#   scripts/device_check.sh --device cpu --quick   # every part that can, on a CPU, shortened, fp32
#
# It installs nothing from the internet (a GPU machine may reach none). What it needs beyond
# torch: tokenizers, datasets, sacrebleu, typer, pyyaml, tqdm, tensorboard, matplotlib (and
# ctranslate2 for the CTranslate2 decode rows). Missing ones can travel as wheels in `.whl/`
# (pip download on a machine with internet); the script installs them from there, offline.
# The Multi30k corpus is read from $MULTI30K_DIR (default ../shared/data/multi30k-en-de); when
# it is absent the training and decode steps use the built-in corpus instead and say so.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (use --device cuda|cpu, --quick)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-device_check_out}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/device_site .whl/*.whl && export PYTHONPATH="/tmp/device_site:${PYTHONPATH:-}"
fi
# The checkout itself, not an installed copy.
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
"$PY" - <<'EOF' || exit 2
import importlib.util, sys
need = ["torch", "tokenizers", "datasets", "sacrebleu", "typer", "yaml", "tqdm",
        "tensorboard", "matplotlib", "pytest"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"device_check: missing Python packages: {', '.join(missing)} "
             "(bring their wheels in .whl/)")
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "device_check: --device $DEVICE but torch sees no CUDA GPU" >&2
  exit 2
fi

DATA="${MULTI30K_DIR:-../shared/data/multi30k-en-de}"
DATA_ARGS=()
if [ -f "$DATA/test_2016_flickr.de" ]; then
  DATA_ARGS=(--data-dir "$DATA")
else
  echo "device_check: no Multi30k at $DATA: training and decoding use the built-in corpus"
fi
# --quick (for a CPU): a few steps and one round, small base batches, a half-minute training.
if [ "$QUICK" = 1 ]; then STEPS=3; ROUNDS=1; MINUTES=0.5; SENT=60; BASE_TOKENS=1000
else STEPS=20; ROUNDS=3; MINUTES=5; SENT=1000; BASE_TOKENS=25000; fi
# bf16 on the GPU; on a CPU without AMX bf16 autocast is many times slower than fp32.
PRECISION=bf16
[ "$DEVICE" = cpu ] && PRECISION=fp32
FAILED=()

step() {  # step NAME SECONDS COMMAND...: run one part, record its exit status, go on
  local name="$1" secs="$2"; shift 2
  echo; echo "=== $name ($(date -u +%H:%M:%S))"
  local start=$SECONDS
  timeout "$secs" "$@"
  local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - start)) s"
  [ $rc = 0 ] || FAILED+=("$name")
}

step "cuda tests" 300 "$PY" -m pytest -q -m cuda tests/test_cuda.py -rs
step "train d256" 240 "$PY" scripts/benchmark.py --suite train --train-device "$DEVICE" \
  --precision "$PRECISION" --no-tutorial --train-steps "$STEPS" --train-rounds "$ROUNDS" "${DATA_ARGS[@]}" \
  --json "$OUT/train_d256.json"
step "train base" 300 "$PY" scripts/benchmark.py --suite train --train-device "$DEVICE" \
  --precision "$PRECISION" --no-tutorial --train-steps "$STEPS" --train-rounds "$ROUNDS" "${DATA_ARGS[@]}" \
  --train-set model.d_model=512 --train-set model.layers=6 --train-set model.heads=8 \
  --train-set model.d_ff=2048 --train-set "training.max_tokens=$BASE_TOKENS" \
  --json "$OUT/train_base.json"

RUN="$OUT/m30k_bf16"
if [ ${#DATA_ARGS[@]} -gt 0 ]; then
  TRAIN_CFG=(--config configs/multi30k_en_de.yaml --set "data.dir=$DATA")
else
  TRAIN_CFG=(--config configs/toy.yaml)
fi
step "train $MINUTES min" $(( ${MINUTES%.*} * 60 + 180 )) "$PY" -m translator train \
  "${TRAIN_CFG[@]}" --set "training.max_minutes=$MINUTES" --set "training.precision=$PRECISION" \
  --set "training.device=$DEVICE" --set "output.dir=$RUN" --overwrite --quiet
step "evaluate" 180 sh -c "\"$PY\" -m translator evaluate --run \"$RUN\" --split test \
  --device \"$DEVICE\" --json > \"$OUT/m30k_test.json\""
step "decode" 300 "$PY" scripts/benchmark.py --suite decode --decode-device "$DEVICE" \
  --decode-run "$RUN" --decode-sentences "$SENT" "${DATA_ARGS[@]}" --json "$OUT/decode.json"

"$PY" - "$OUT" "$DEVICE" "${FAILED[@]+"${FAILED[@]}"}" <<'EOF'
import json, sys
from pathlib import Path
out, device, failed = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
summary = {"device": device, "failed_steps": failed}
for name, prefix in (("train_d256", "train_d256"), ("train_base", "train_base"),
                     ("decode", "")):
    path = out / f"{name}.json"
    if path.is_file():
        for k, v in json.loads(path.read_text()).items():
            summary[f"{prefix}.{k}" if prefix else k] = v
test = out / "m30k_test.json"
if test.is_file() and test.stat().st_size:
    report = json.loads(test.read_text())
    summary.update({"m30k.test_bleu": report.get("bleu"),
                    "m30k.test_bleu_tok_lc": report.get("bleu_tok_lc"),
                    "m30k.beam_size": report.get("beam_size")})
(out / "device_check.json").write_text(json.dumps(summary, indent=2) + "\n")
keys = ["train_d256.train.ours_mfu", "train_d256.train.ratio_vs_stock",
        "train_base.train.ours_mfu", "train_base.train.ratio_vs_stock",
        "train_base.train.ours_tps", "m30k.test_bleu", "decode.cached_batched_sps",
        "decode.ct2_int8_batched_sps"]
print("\n=== summary (" + str(out / "device_check.json") + ")")
for k in keys:
    print(f"{k:36} {summary.get(k)}")
print("failed steps:", ", ".join(failed) or "none")
EOF
[ ${#FAILED[@]} = 0 ]
