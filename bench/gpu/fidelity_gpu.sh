#!/usr/bin/env bash
# The fidelity evidence, on one GPU, in priority order
# under one deadline, so that a time-limited machine always hands back
# whole results:
#
#   bash bench/gpu/fidelity_gpu.sh DATA_DIR OUT_DIR [SECONDS]
#
# DATA_DIR: the CIFAR-10 JPEG folder (../shared/data/cifar10-jpeg); OUT_DIR:
# logs, runs (checkpoints included: ResNet-32's are small) and the tables.
# SECONDS (default 560) bounds the whole script. Needs jax (CUDA), torch
# (CUDA) and this repository; no TensorFlow, no network. Running it again
# with the same OUT_DIR resumes: finished runs are skipped, stopped ones
# continue from their checkpoints.
#
# (a) LDAM-DRW's CIFAR loop in PyTorch (bench/gpu/fidelity_gpu.py oracle: its
#     init, schedule, last batch kept, test evaluation after every epoch,
#     best_acc1 and last) for seeds 0 and 1, beside our trainer's BN arm
#     with the test evaluated after every epoch and LDAM's per-epoch
#     warm-up (seeds 0 and 1; OUR_EXTRA_FLAGS replaces those extra flags),
#     all four sharing the GPU. Table: OUT_DIR/fidelity.md.
# (b) BN vs NBN (and both with logit-adjusted CE) at IF 100, then 50 and 10,
#     5 seeds each, one program of 5 runs per cell (bench/experiments/sweep.py).
# (c) Speed: our ResNet-32 step against PyTorch eager and torch.compile,
#     then ResNet-50 bf16 training images/s (and NBN/BN step time), then,
#     if time is left, K runs in one program against one (bench/timing/many_runs.py).
#
# Estimates from measured numbers (docs/benchmarks.md, one H200): a JAX
# 200-epoch run took 106 s alone (3 sharing the GPU: 277 s); PyTorch eager
# takes 12.3 ms a step against our 3.9, so an oracle run is about 19,400 x
# 12.3 ms = 240 s of mostly launch-bound work, plus 200 evaluations. (a):
# about 300 to 420 s with all four sharing the GPU (not yet measured), so
# in one 560 s call it may stop short and finish in a second call. (c):
# about 150 to 180 s (the JAX, torch.compile and two ResNet-50 compilations
# dominate), kept in reserve. Imports and JPEG decoding: about 20 s.
source "$(dirname "$0")/gpu_lib.sh" "$@"
reserve=${SPEED_RESERVE:-180}  # seconds kept for (c) and the tables
mkdir -p "$out/oracle" "$out/ours"

# --- (a) the oracle as LDAM trains, beside our BN arm ------------------------
part_a_oracle() {
  stamp '(a) oracle seeds 0, 1 and our BN seeds 0, 1, sharing the GPU'
  local deadline=$(( $(date +%s) + $(left) - reserve )) commands=()
  local our_flags=${OUR_EXTRA_FLAGS-'--config.warmup_granularity=epoch'}
  local seed
  for seed in 0 1; do
    commands+=("python3 -m bench.gpu.fidelity_gpu oracle --data-dir='$data_dir' \
      --cache-dir='$out/cache' --out='$out/oracle/seed$seed' --seed=$seed \
      --deadline=$deadline >>'$out/oracle/seed$seed.log' 2>&1")
    # Our trainer, the CIFAR recipe (docs/method.md), the test set every epoch.
    commands+=("XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 python3 \
      -m bench.experiments.cifar10_lt_accuracy run --root='$out/ours' \
      --data-dir='$data_dir' --epochs=200 --arms=bn --seeds=$seed \
      --config.cache_dir='$out/cache' --config.eval_every_epochs=1 \
      $our_flags >>'$out/ours/bn_seed$seed.log' 2>&1")
  done
  run_together "${commands[@]}"
  stamp '(a) ended'
  grep -h 'results:\|deadline' "$out"/oracle/*.log
  python3 -m bench.gpu.fidelity_gpu summary --root="$out" \
    --out="$out/fidelity.md"
}

# --- (b) BN vs NBN seed sweep ------------------------------------------------
# bench/experiments/sweep.py: each (imbalance factor, arm) cell is one program of 5 runs
# (--config.num_runs=5, seeds 0..4); IF 100 first (BN, NBN, then both with
# logit-adjusted CE), then IF 50 and 10. Cells past the deadline are left
# for a second call (a stopped cell resumes from its checkpoint). Report:
# OUT_DIR/sweep/report/sweep.md (paired NBN - BN per seed, 95% CI).
part_b_seed_sweep() {
  stamp '(b) seed sweep: 5 seeds per arm, one program per cell'
  local deadline=$(( $(date +%s) + $(left) - reserve ))
  local imbalance
  for imbalance in 100 50 10; do
    python3 -m bench.experiments.sweep run --root="$out/sweep" --data-dir="$data_dir" \
      --cache-dir="$out/cache" --seeds=5 --imbalance-factors=$imbalance \
      --arms=bn,nbn,bn_la,nbn_la --deadline=$deadline \
      --config.eval_every_epochs=1 >>"$out/sweep.log" 2>&1
  done
  python3 -m bench.experiments.sweep report --root="$out/sweep" \
    --out="$out/sweep/report" || true
  stamp '(b) ended'
}

# --- (c) speed -----------------------------------------------------------------
# Runs a command for at most $1 seconds; skips it when fewer than 10 are left.
bounded() {
  local seconds=$1
  shift
  if (( seconds < 10 )); then
    stamp "skipped (no time left): $*"
    return
  fi
  timeout "$seconds" "$@"
}

part_c_speed() {
  export JAX_COMPILATION_CACHE_DIR=$out/jax-cache
  stamp '(c) ResNet-32 NBN step: JAX vs PyTorch eager vs torch.compile'
  bounded $(( $(left) * 55 / 100 )) python3 -m bench.timing.jax_vs_torch \
    --steps-per-round=50 --rounds=7 --compile
  stamp '(c) ResNet-50 bf16 training images/s (NBN/BN step time)'
  bounded $(( $(left) - 5 )) python3 -m bench.timing.nbn_overhead \
    --models=resnet50 --resnet50-batch=256 --bf16 --rounds=5 \
    --steps-per-round=10
  stamp '(c) with what time is left: K ResNet-32 runs in one program'
  bounded $(( $(left) - 5 )) python3 -m bench.timing.many_runs \
    --runs=2,4,8,16 --run-axis=vmap,unroll --rounds=3
}

part_a_oracle
(( $(left) > reserve )) && part_b_seed_sweep
part_c_speed
stamp done
