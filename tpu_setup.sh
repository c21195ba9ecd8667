#!/usr/bin/env bash
# Prepare a Cloud TPU VM worker for Sora, idempotently, then run a smoke check. Run it on EVERY worker:
#
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
#       --command "cd ~/sora && bash tpu_setup.sh"
#
# Options:
#   --dry-run      print what would be done, change nothing
#   --no-smoke     skip the smoke check
#   --commands     only print the gcloud commands for the whole life cycle of a TPU VM and exit
#
# Sora needs Python >= 3.12 (jax 0.12). Ubuntu 22.04 TPU images ship 3.10: the script then installs uv and
# a Python 3.12 with it (user-local, no sudo), and makes the venv from that interpreter.
#
# Environment: SORA_PYTHON (an interpreter >= 3.12 to use), SORA_VENV (default ~/.venvs/sora), SORA_DATA_DIR (default ~/tensorflow_datasets),
# SORA_WORKDIR (a run directory all workers share, e.g. gs://BUCKET/runs/smoke: the smoke check trains there;
# required on a multi-host slice), SORA_DATA_BUCKET (a bucket holding prepared TFDS data: mounted read-only
# with gcsfuse at SORA_DATA_DIR, since grain reads ArrayRecord files through the local filesystem),
# TPU_NAME, ZONE, ACCELERATOR (default v5litepod-16), VERSION (TPU software, default v2-alpha-tpuv5-lite).
set -euo pipefail

DRY_RUN=0
SMOKE=1
COMMANDS_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-smoke) SMOKE=0 ;;
    --commands) COMMANDS_ONLY=1 ;;
    -h | --help)
      sed -n '2,19p' "$0"
      exit 0
      ;;
    *)
      echo "error: unknown option $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

VENV="${SORA_VENV:-$HOME/.venvs/sora}"
DATA_DIR="${SORA_DATA_DIR:-$HOME/tensorflow_datasets}"
TPU_NAME="${TPU_NAME:-sora-tpu}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
VERSION="${VERSION:-v2-alpha-tpuv5-lite}"
WORKDIR="${SORA_WORKDIR:-}"
DATA_BUCKET="${SORA_DATA_BUCKET:-}"
# More than one worker hostname: a multi-host slice, whose hosts must share one run directory.
MULTI_HOST=0
case "${TPU_WORKER_HOSTNAMES:-}" in *,*) MULTI_HOST=1 ;; esac

run() {
  # Echo each command; execute it unless --dry-run.
  echo "+ $*"
  if [ "$DRY_RUN" -eq 0 ]; then
    "$@"
  fi
}

print_commands() {
  cat <<EOF
# Create a TPU VM (on-demand; add --spot for a preemptible one):
gcloud compute tpus tpu-vm create $TPU_NAME --zone=$ZONE --accelerator-type=$ACCELERATOR --version=$VERSION
# Or queue it (waits for capacity):
gcloud compute tpus queued-resources create ${TPU_NAME}-q --node-id=$TPU_NAME --zone=$ZONE \\
    --accelerator-type=$ACCELERATOR --runtime-version=$VERSION --spot
# Copy the code to every worker (or: --command "git clone <your fork> ~/sora"):
gcloud compute tpus tpu-vm scp --recurse . $TPU_NAME:~/sora --zone=$ZONE --worker=all
# Set up every worker:
gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "cd ~/sora && bash tpu_setup.sh"
# Launch training on all workers (jax.distributed finds the other workers itself):
gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command \\
    "cd ~/sora && source $VENV/bin/activate && nohup python train.py --config=configs/default.py \\
     --workdir=gs://YOUR_BUCKET/runs/exp1 --config.data.data_dir=$DATA_DIR --config.model.dtype=bfloat16 \\
     > train.log 2>&1 &"
# Stop it (a SIGTERM makes Sora save a checkpoint first; run the launch command again to resume):
gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command "pkill -TERM -f train.py"
# Delete the VM:
gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE --quiet
EOF
}

if [ "$COMMANDS_ONLY" -eq 1 ]; then
  print_commands
  exit 0
fi

if [ ! -f pyproject.toml ] || [ ! -f train.py ] || [ ! -d sora_jax ]; then
  echo "error: run tpu_setup.sh from the root of the Sora repository (where train.py is)." >&2
  exit 2
fi

# A Python >= 3.12 (jax 0.12 needs it): SORA_PYTHON, else python3.13 / python3.12 / python3 if new enough,
# else one installed with uv (user-local; TPU VM images on Ubuntu 22.04 have only 3.10).
is_new_enough() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null
}
PYTHON="${SORA_PYTHON:-}"
if [ -n "$PYTHON" ] && ! is_new_enough "$PYTHON"; then
  echo "error: SORA_PYTHON=$PYTHON is not a Python >= 3.12; point it at one, or unset it to have uv install one." >&2
  exit 2
fi
if [ -z "$PYTHON" ]; then
  for candidate in python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && is_new_enough "$candidate"; then
      PYTHON="$(command -v "$candidate")"
      break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  UV="$HOME/.local/bin/uv"
  if ! command -v uv >/dev/null 2>&1 && [ ! -x "$UV" ]; then
    run python3 -m pip install --quiet --user uv
  fi
  command -v uv >/dev/null 2>&1 && UV="$(command -v uv)"
  run "$UV" python install 3.12
  if [ "$DRY_RUN" -eq 1 ]; then
    PYTHON='$(uv python find 3.12)'
  else
    PYTHON="$("$UV" python find 3.12)"
  fi
fi
echo "Python for the venv: $PYTHON"

# A virtual environment, never the system Python; created once, reused afterwards.
if [ -x "$VENV/bin/python" ] && ! is_new_enough "$VENV/bin/python"; then
  echo "error: $VENV was made with $("$VENV/bin/python" --version 2>&1); Sora needs Python >= 3.12: remove it" \
    "(rm -rf $VENV) and run tpu_setup.sh again." >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  run "$PYTHON" -m venv "$VENV"
fi
run "$VENV/bin/python" -m pip install --quiet --upgrade pip
# jax[tpu] pulls the matching libtpu; the version range is the project's own.
run "$VENV/bin/python" -m pip install --quiet -e ".[tpu,demo]"
run mkdir -p "$DATA_DIR"

# Prepared datasets in a bucket: mount it with gcsfuse (as MaxText does for ArrayRecord), read-only, with the
# file cache that makes grain's random reads fast. Each host mounts it; nothing is copied.
if [ -n "$DATA_BUCKET" ]; then
  if ! command -v gcsfuse >/dev/null 2>&1; then
    run bash -c 'export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s); echo "deb https://packages.cloud.google.com/apt $GCSFUSE_REPO main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list; curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -; sudo apt-get update -q; sudo apt-get install -y -q gcsfuse'
  fi
  if ! mountpoint -q "$DATA_DIR" 2>/dev/null; then
    run gcsfuse --implicit-dirs -o ro --file-cache-max-size-mb=-1 --cache-dir=/tmp/gcsfuse_cache \
      "${DATA_BUCKET#gs://}" "$DATA_DIR"
  fi
fi

# What every run on this VM needs.
ENV_FILE="$VENV/sora_env.sh"
if [ "$DRY_RUN" -eq 0 ]; then
  cat >"$ENV_FILE" <<EOF
export TFDS_DATA_DIR="$DATA_DIR"
# Overlap collectives with compute on TPU (safe defaults; tune per model).
export LIBTPU_INIT_ARGS="\${LIBTPU_INIT_ARGS:---xla_tpu_enable_async_collective_fusion=true}"
EOF
  grep -q sora_env.sh "$VENV/bin/activate" || echo "source $ENV_FILE" >>"$VENV/bin/activate"
else
  echo "+ write $ENV_FILE (TFDS_DATA_DIR, LIBTPU_INIT_ARGS) and source it from $VENV/bin/activate"
fi

if [ "$SMOKE" -eq 1 ]; then
  # jax.distributed must start on every worker (Sora does it in train.py); two steps of the tiny model
  # on synthetic data show the devices and the mesh work together.
  run "$VENV/bin/python" -c "import jax; print('jax', jax.__version__, jax.device_count(), 'devices,',
    jax.local_device_count(), 'local, backend', jax.default_backend())"
  # One run directory for all workers: a bucket on a multi-host slice (a per-host /tmp would leave hosts 1..N
  # without process 0's tokenizer and config).
  SMOKE_WORKDIR="$WORKDIR"
  if [ -z "$SMOKE_WORKDIR" ]; then
    if [ "$MULTI_HOST" -eq 1 ]; then
      echo "error: this is a multi-host slice: set SORA_WORKDIR to a run directory all workers share, e.g." \
        "SORA_WORKDIR=gs://BUCKET/runs/smoke (or pass --no-smoke)." >&2
      exit 2
    fi
    SMOKE_WORKDIR="/tmp/sora_smoke_$$"
  fi
  run "$VENV/bin/python" train.py --config=configs/tiny.py:synthetic --workdir="$SMOKE_WORKDIR" \
    --config.num_train_steps=2 --config.log_every_steps=1 --config.data.task_options.num_examples=512 \
    --config.batch_size=64 --config.data.eval_batch_size=64
fi

echo "Sora is set up in $VENV. Next steps:"
print_commands
