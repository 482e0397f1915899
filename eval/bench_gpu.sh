#!/usr/bin/env bash
# Speed of OpenDAS training and encoding on one GPU (H100/H200), ViT-L-14 with random weights.
#
#   eval/bench_gpu.sh OUT_DIR            (run from anywhere; at most about 5 minutes once torch is there)
#
# 1. Checks that torch and open_clip import; when not, installs them with
#      pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch
#    (and the package's other dependencies when missing) and says so. Where torch is there but
#    open_clip is not and no index is reachable, wheels in BENCH_WHEELS (default .venv/wheels:
#    open_clip_torch, ftfy, wcwidth) are installed without dependencies first.
# 2. Runs eval/bench_gpu.py (issue 18's GPU figures, under 5 minutes in all): ViT-L-14 batch-16 bf16
#    stage timings with the stage-2 text floor, bench_encode ViT-L-14 batch 64 bf16, then, while time
#    remains, batched 3D mask features on ViT-L-14@336, the floor at 900 labels, cached stage 2 with
#    CUDA graphs (runtime.compile: reduce-overhead) and the baselines. JSON files and a log go to OUT_DIR;
#    summary.json compares stage 1 with the paper's 0.53 s/iter on an A100.
# Environment: PYTHON (default python), BENCH_BUDGET_S (default 270: optional phases start only while
# the elapsed time is below it).
set -u
OUT=${1:?usage: eval/bench_gpu.sh OUT_DIR}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
SETUP=()

WHEELS=${BENCH_WHEELS:-$ROOT/.venv/wheels}
if ! $PY -c "import open_clip" 2>/dev/null && $PY -c "import torch, torchvision" 2>/dev/null && [ -d "$WHEELS" ]; then
    # machines without a package index: wheels fetched beforehand (see docs/performance.md), no dependencies
    echo "bench_gpu: setup: open_clip missing -> pip install --no-index --no-deps from $WHEELS"
    if $PY -m pip install --quiet --no-index --no-deps "$WHEELS"/open_clip_torch-*.whl "$WHEELS"/ftfy-*.whl \
            "$WHEELS"/wcwidth-*.whl; then
        SETUP+=("pip install --no-index --no-deps open_clip_torch ftfy wcwidth from $WHEELS")
    fi
fi
if $PY -c "import torch, open_clip" 2>/dev/null; then
    echo "bench_gpu: setup: torch and open_clip import"
else
    echo "bench_gpu: setup: torch/open_clip missing -> pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch"
    if ! $PY -m pip install --quiet torch==2.14.1 torchvision==0.29.1 open_clip_torch; then
        echo "bench_gpu: setup FAILED: could not install torch/open_clip (no package index reachable?)" >&2
        exit 3
    fi
    SETUP+=("pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch")
fi
MISSING=$($PY - <<'EOF'
import importlib
mods = {"numpy": "numpy", "scipy": "scipy", "safetensors": "safetensors", "tqdm": "tqdm", "sklearn": "scikit-learn",
        "matplotlib": "matplotlib", "PIL": "pillow", "yaml": "pyyaml"}
missing = []
for mod, pkg in mods.items():
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(pkg)
print(" ".join(missing))
EOF
)
if [ -n "$MISSING" ]; then
    echo "bench_gpu: setup: missing package dependencies -> pip install $MISSING"
    if ! $PY -m pip install --quiet $MISSING; then
        echo "bench_gpu: setup FAILED: could not install $MISSING" >&2
        exit 3
    fi
    SETUP+=("pip install $MISSING")
fi
echo "bench_gpu: setup took $(( $(date +%s) - START )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "bench_gpu: nvidia-smi unavailable"

export BENCH_SETUP="${SETUP[*]:-none}"
export BENCH_SETUP_SECONDS=$(( $(date +%s) - START ))
cd "$ROOT" || exit 2
$PY eval/bench_gpu.py --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.log"
STATUS=${PIPESTATUS[0]}
echo "bench_gpu: exit $STATUS after $(( $(date +%s) - START )) s; results in $OUT"
exit "$STATUS"
