#!/usr/bin/env bash
# Runs si-train on every host of a Cloud TPU pod slice (TPU VM).
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- --config experiments/configs/arith_grpo.py --workdir gs://bucket/run
#
# Each host runs the same command; SI_MULTIHOST=1 makes si-train call
# jax.distributed.initialize(), which discovers the pod's coordinator on TPU VMs. The workdir
# must be shared storage (gs://...) so every host reads and writes the same checkpoints.
set -euo pipefail
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- SI_TRAIN_ARGS..." >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 3
repo_dir="${SI_REPO_DIR:-~/si_jax}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo_dir && SI_MULTIHOST=1 si-train$args"
