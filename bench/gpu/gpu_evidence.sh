#!/usr/bin/env bash
# The GPU evidence of docs/benchmarks.md's "Results", on one GPU:
#
#   bash bench/gpu/gpu_evidence.sh DATA_DIR OUT_DIR [SECONDS]
#
# DATA_DIR: the CIFAR-10 JPEG folder (train.txt, test.txt, the tarball);
# OUT_DIR: logs, run workdirs and the report. SECONDS (default 560) bounds
# the whole script: what has not finished by then is stopped, so that a
# time-limited machine still hands back everything done so far. Running it
# again with the same OUT_DIR skips finished runs and resumes stopped ones
# from their checkpoints. On one H200 the first call took 8 minutes and
# stopped the two seed-1 runs at epoch 80; a second call finished them
# (docs/results/gpu_evidence_h200.log).
#
# 1. CIFAR-10-LT (IF 100), ResNet-32, the full 200-epoch recipe: BN and NBN
#    with seeds 0 and 1, NBN + logit-adjusted CE with seed 0, several runs
#    at once on the one GPU (on-device input path: no TensorFlow needed),
#    then `bench/experiments/cifar10_lt_accuracy.py report`.
# 2. Speed: `bench/timing/jax_vs_torch.py` (ResNet-32 step, JAX vs PyTorch) and
#    `bench/timing/nbn_overhead.py --bf16` (NBN/BN step time; ResNet-50 bf16
#    training images/s at batch 256).
source "$(dirname "$0")/gpu_lib.sh" "$@"
mkdir -p "$out/runs"

reserve=160  # seconds kept for the speed benchmarks and the report
# Runs in waves (seed 0 of every arm, then seed 1), so that a machine that
# runs out of time still hands back whole runs; runs stopped midway resume.
wave() {
  stamp "200-epoch runs sharing the GPU: $*"
  local commands=() run arm seed
  for run in "$@"; do
    arm=${run%:*} seed=${run#*:}
    commands+=("XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 python3 \
      -m bench.experiments.cifar10_lt_accuracy run --root='$out/runs' \
      --data-dir='$data_dir' --epochs=200 --arms=$arm --seeds=$seed \
      --config.cache_dir='$out/cache' >>'$out/runs/${arm}_seed${seed}.log' 2>&1")
  done
  run_together "${commands[@]}"
  stamp 'wave ended'
}
wave bn:0 nbn:0 nbn_la:0
(( $(left) > reserve )) && wave bn:1 nbn:1
grep -H 'Training \|^last\|results:' "$out"/runs/*.log
python3 -m bench.experiments.cifar10_lt_accuracy report --root="$out/runs" \
  --out="$out/report"

export JAX_COMPILATION_CACHE_DIR=$out/jax-cache
stamp 'JAX vs PyTorch, ResNet-32 NBN step, batch 128, float32'
timeout $(( $(left) / 2 )) python3 -m bench.timing.jax_vs_torch \
  --steps-per-round=50 --rounds=7
stamp 'NBN / BN step time and ResNet-50 throughput, bfloat16'
timeout $(( $(left) - 10 )) python3 -m bench.timing.nbn_overhead \
  --models=resnet50,resnet32 --resnet50-batch=256 --bf16 --rounds=5 --steps-per-round=10
stamp done
