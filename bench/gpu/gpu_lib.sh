# Shared by the GPU evidence scripts, sourced with their arguments:
#
#   source "$(dirname "$0")/gpu_lib.sh" "$@"     # DATA_DIR OUT_DIR [SECONDS]
#
# Sets data_dir and out (absolute paths), budget (SECONDS, default 560: the
# whole script's) and root (the repository: the working folder from then
# on, and on PYTHONPATH, so bench scripts run as python3 -m bench.<kind>.<x>);
# prints the machine and decodes the CIFAR-10 JPEGs once into $out/cache. Then offers a time budget for a
# time-limited machine, timestamps, and running several trainings at once
# on the one GPU until only `reserve` seconds (the sourcing script sets it)
# are left.

set -uo pipefail
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  bash "$root/tools/help.sh" "$0"
  exit 0
fi
if (( $# < 2 )); then
  echo "usage: $0 DATA_DIR OUT_DIR [SECONDS] (--help: what it runs)" >&2
  exit 2
fi
data_dir=$(cd "$1" && pwd) || exit 2
mkdir -p "$2/cache" && out=$(cd "$2" && pwd) || exit 2
budget=${3:-560}
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
cd "$root"

left() { echo $((budget - SECONDS)); }
stamp() { echo "[$(date +%T) t=${SECONDS}s] $*"; }

# Prints the GPU and the library versions.
show_machine() {
  stamp "$(nvidia-smi -L 2>/dev/null | head -1)"
  python3 -c 'import jax, flax, optax, orbax.checkpoint as o; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "orbax", o.__version__)'
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' 2>/dev/null
}

# Decodes the CIFAR-10 JPEGs in $1 once into the cache $2, for every run.
decode_jpegs() {
  stamp 'decoding the JPEGs once, for all runs'
  local split
  for split in train test; do
    python3 -c "from input_pipeline import sources
sources.load_cifar10_jpeg('$1', '$split', '$2')" &
  done
  wait
}

# Runs the given shell commands (one per argument) at once, each in its own
# process group, until they end or only $reserve seconds are left; what is
# still running then is stopped (the trainer resumes it on the next call).
run_together() {
  local pids=() command
  for command in "$@"; do
    setsid bash -c "$command" &
    pids+=($!)
  done
  while (( $(left) > reserve )) && jobs -r | grep -q .; do sleep 2; done
  if jobs -r | grep -q .; then
    stamp 'out of time: stopping the unfinished runs (they resume)'
    for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null; done
  fi
  wait
}

show_machine
decode_jpegs "$data_dir" "$out/cache"
