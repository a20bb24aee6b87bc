#!/usr/bin/env bash
# MFU of one wc5e2i3t field transformer in bf16 on one GPU, for a lent device machine (one short run,
# under 5 minutes). Finds the largest micro-batch that fits, then measures it; last line `mfu=<ratio>`.
# Target (issue "DeepSpeed ZeRO pretraining"): mfu >= 0.45 on an H100.
#   bash benchmarks/gpu_mfu.sh            # in the repository root, torch with CUDA importable
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the package without its heavy data/workflow dependencies: the benchmark needs torch, numpy, pyyaml
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
best=""
for batch in 64 32 16 8 4; do
  if out=$("$PY" benchmarks/gpu_mfu.py --batch "$batch" --steps 3 2>&1); then best=$batch; break; fi
  echo "batch $batch does not fit: $(echo "$out" | tail -1)"
done
[ -n "$best" ] || { echo "no micro-batch fits"; exit 1; }
echo "largest micro-batch that fits: $best"
"$PY" benchmarks/gpu_mfu.py --batch "$best" --steps 20
