#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) it, copy this repository to every worker, install
# rho_jax with the tpu extra, run the same training command on all workers, stream worker 0's log,
# and after a preemption recreate the slice and resume from the last checkpoint.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

REMOTE_DIR=rho_jax            # on each worker, under the home directory
REMOTE_LOG=rho_jax-train.log  # every worker's full training output, under the home directory
MOUNT=/mnt/gcs                # where --bucket is mounted on every worker
METADATA=http://metadata.google.internal/computeMetadata/v1/instance/attributes

usage() {
  cat <<USAGE
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --config FILE [options] [-- key.sub=value ...]

Options:
  --name NAME          TPU VM (and queued resource) name; reused if it exists (required)
  --zone ZONE          e.g. us-east5-a (required)
  --accelerator TYPE   v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v5p-128 (required)
  --config FILE        run configuration, a path inside this repository (required)
  --project ID         Google Cloud project (default: gcloud's configured project)
  --version RUNTIME    TPU software version (default: the usual one for the generation)
  --spot               use spot capacity (cheaper; can be preempted at any time)
  --queued             request the slice as a queued resource (waits for capacity)
  --bucket gs://NAME   mount this bucket with gcsfuse at $MOUNT on every worker; put output_dir
                       (checkpoints) there, since all workers must write to the same directory
  --max-restarts N     recreate and resume after preemption or lost connections at most N times
                       (default 20)
  --dry-run            print every command for a fresh slice, run nothing
  -h, --help           this help
Everything after -- is passed to the trainer as config overrides.

Example (Mistral-7B SLM on a v5p-128 slice, spot capacity, checkpoints in a bucket):
  launch/tpu_pod.sh --name rho-7b --zone us-east5-a --accelerator v5p-128 --spot --queued \\
    --bucket gs://my-bucket --config configs/mistral7b-slm.yaml -- output_dir=$MOUNT/runs/mistral7b-slm
USAGE
}

name="" zone="" accelerator="" config="" project="" version="" spot=0 queued=0 bucket="" max_restarts=20
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --accelerator) need_value "$@"; accelerator=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --version) need_value "$@"; version=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --bucket) need_value "$@"; bucket=$2; shift 2 ;;
    --max-restarts) need_value "$@"; need_positive_int --max-restarts "$2"; max_restarts=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (config overrides go after --; see --help)." ;;
  esac
done
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and dashes, got '$name'."
[[ -n $zone ]] || die "--zone is required (see --help)."
case $accelerator in
  v4-[0-9]*) default_version=tpu-ubuntu2204-base ;;
  v5litepod-[0-9]*) default_version=v2-alpha-tpuv5-lite ;;
  v5p-[0-9]*) default_version=v2-alpha-tpuv5 ;;
  v6e-[0-9]*) default_version=v2-alpha-tpuv6e ;;
  v5e-*) die "--accelerator: Cloud TPU calls v5e slices v5litepod-N, e.g. v5litepod-${accelerator#v5e-}." ;;
  *) die "--accelerator must be v4-N, v5litepod-N, v5p-N or v6e-N, got '${accelerator}'." ;;
esac
[[ $accelerator =~ -[1-9][0-9]*$ ]] || die "--accelerator size must be a positive integer, got '$accelerator'."
version=${version:-$default_version}
[[ -z $bucket || $bucket =~ ^gs://[a-z0-9][-_.a-z0-9]*$ ]] || die "--bucket must be gs://BUCKET_NAME, got '$bucket'."
cd "$REPO"
need_config "$config"
need_overrides "$@"
[[ $DRY_RUN == 1 ]] || command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)."
if [[ -z $bucket ]]; then
  echo "note: without --bucket, output_dir must be a directory that every worker shares (e.g. NFS)." >&2
fi

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
train=(.venv/bin/python -m rho_jax.train --config "$config" "$@")

# The slice's state: READY, CREATING, PREEMPTED, ... or NOT_FOUND.
tpu_state() {
  echo "+ $(quote gcloud compute tpus tpu-vm describe "$name" "${scope[@]}" --format='value(state)')" >&2
  if [[ $DRY_RUN == 1 ]]; then
    echo NOT_FOUND
  else
    gcloud compute tpus tpu-vm describe "$name" "${scope[@]}" --format='value(state)' 2>/dev/null || echo NOT_FOUND
  fi
}

create_tpu() {
  local capacity=()
  [[ $spot == 0 ]] || capacity=(--spot)
  if [[ $queued == 1 ]]; then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" --accelerator-type="$accelerator" \
      --runtime-version="$version" "${capacity[@]}" "${scope[@]}"
    wait_for_queued_resource
  else
    run gcloud compute tpus tpu-vm create "$name" --accelerator-type="$accelerator" --version="$version" \
      "${capacity[@]}" "${scope[@]}"
  fi
}

wait_for_queued_resource() {
  local state
  echo "+ $(quote gcloud compute tpus queued-resources describe "$name" "${scope[@]}" --format='value(state.state)') (every 60 s until ACTIVE)"
  [[ $DRY_RUN == 0 ]] || return 0
  while true; do
    state=$(gcloud compute tpus queued-resources describe "$name" "${scope[@]}" --format='value(state.state)')
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $name is $state (gcloud compute tpus queued-resources describe $name)." ;;
      *) echo "queued resource $name: $state; waiting for capacity"; sleep 60 ;;
    esac
  done
}

delete_tpu() {
  if [[ $queued == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" --force --quiet "${scope[@]}"
  else
    run gcloud compute tpus tpu-vm delete "$name" --quiet "${scope[@]}"
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${scope[@]}" --command="$1"
}

# Copy this repository (without git metadata and ignored files), install rho_jax[tpu], mount the bucket.
setup_workers() {
  local archive="${TMPDIR:-/tmp}/rho_jax-$name.tar.gz"
  run tar -C "$REPO" --exclude-vcs --exclude-vcs-ignores -czf "$archive" .
  run gcloud compute tpus tpu-vm scp "$archive" "$name:rho_jax.tar.gz" --worker=all "${scope[@]}"
  # TPU VM images ship Python 3.10; rho_jax needs 3.11 (from Ubuntu's packages).
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/rho_jax.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
{ command -v python3.11 >/dev/null || { sudo apt-get update -q && sudo apt-get install -yq python3.11 python3.11-venv; }; } && \
{ test -x .venv/bin/python || python3.11 -m venv .venv; } && .venv/bin/pip install -q -e '.[tpu]'"
  if [[ -n $bucket ]]; then
    on_all_workers "command -v gcsfuse >/dev/null || { \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -q && sudo apt-get install -yq gcsfuse; } && \
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && \
{ mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${bucket#gs://} $MOUNT; }"
  fi
}

# The same command on every worker; each keeps its full output in ~/$REMOTE_LOG, worker 0's is streamed.
train_on_all_workers() {
  on_all_workers "set -o pipefail; worker=\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number); \
cd ~/$REMOTE_DIR && $(quote "${train[@]}") 2>&1 | tee -a ~/$REMOTE_LOG | \
if [ \"\$worker\" = 0 ]; then cat; else cat >/dev/null; fi"
}

restarts=0
state=$(tpu_state)
while true; do
  case $state in
    READY) ;;
    NOT_FOUND) create_tpu ;;
    CREATING | STARTING | RESTARTING | PROVISIONING)
      echo "TPU $name is $state; waiting"; sleep 30; state=$(tpu_state); continue ;;
    *) echo "TPU $name is $state; recreating it"; delete_tpu; create_tpu ;;
  esac
  setup_workers
  status=0
  train_on_all_workers || status=$?
  if [[ $DRY_RUN == 1 ]]; then
    echo "(dry run) then, unless training exited 0 on a READY slice: delete and recreate the slice if it was" \
      "preempted, set up the workers again and rerun the same command, which resumes from the last" \
      "checkpoint; at most $max_restarts times."
    exit 0
  fi
  state=$(tpu_state)
  if [[ $state == READY && $status == 0 ]]; then
    echo "training finished on $name (every worker's log: ~/$REMOTE_LOG). Delete the slice when done:"
    echo "  $(quote gcloud compute tpus tpu-vm delete "$name" "${scope[@]}")"
    exit 0
  fi
  if [[ $state == READY && $status != 255 ]]; then
    die "training exited with status $status on a healthy slice; not retrying (see ~/$REMOTE_LOG on the workers)."
  fi
  restarts=$((restarts + 1))
  [[ $restarts -le $max_restarts ]] || die "gave up after $max_restarts restarts (slice $state, last status $status)."
  echo "slice $state, training status $status: restart $restarts of $max_restarts, resuming from the last checkpoint"
done
