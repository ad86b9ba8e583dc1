#!/bin/bash
# Every GPU check in one go, on a machine with CUDA (and effdet installed for the comparison):
#   bash benchmarks/gpu_checks.sh [LOG_FOLDER]      (default gpu-checks/)
# Each part writes its figures (JSON) and full log to LOG_FOLDER, so a part that fails or is cut
# short leaves the others' results. Wall times measured on one H200: tests 100 s, effdet
# comparison about 60 s per model; Ray trials start slowly there (budget minutes for packing).
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
run() {  # name, command...
    local name=$1; shift
    echo "== $name $(date -u +%T)"
    "$@" > "$out/$name.log" 2>&1
    echo "   exit $? ($name.log)"
}
run tests python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rA
run compare_d0 python benchmarks/compare_effdet.py --models d0 --json "$out/compare_d0.json"
run compare_d3 python benchmarks/compare_effdet.py --models d3 --steps 6 --inference-runs 0 --json "$out/compare_d3.json"
run memory python benchmarks/gpu_packing.py memory --json "$out/memory.json"
run packing_fpn_cpu python benchmarks/gpu_packing.py packing --study studies/fpn_ablation.yaml --profile cpu --set repeats=2 --json "$out/packing_fpn_cpu.json"
run packing_quickstart python benchmarks/gpu_packing.py packing --study studies/quickstart.yaml --set task.epochs=5 --json "$out/packing_quickstart.json"
grep -h -E "^(d[0-9] |model|Training|fpn_ablation|quickstart|  gpus=)|passed|failed" "$out"/*.log
