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
  --archive-only FILE  write the code archive copied to the workers (tracked and untracked files,
                       nothing git ignores) to FILE and exit
  -h, --help           this help
Everything after -- is passed to the trainer as config overrides.

Example (Mistral-7B SLM on a v5p-128 slice, spot capacity, checkpoints in a bucket):
  launch/tpu_pod.sh --name rho-7b --zone us-east5-a --accelerator v5p-128 --spot --queued \\
    --bucket gs://my-bucket --config configs/mistral7b-slm.yaml -- output_dir=$MOUNT/runs/mistral7b-slm
USAGE
}

name="" zone="" accelerator="" config="" project="" version="" spot=0 queued=0 bucket="" max_restarts=20 archive_only=""
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
    --archive-only) need_value "$@"; archive_only=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (config overrides go after --; see --help)." ;;
  esac
done
# Tracked and untracked files of this checkout, without anything git ignores (.venv, runs, caches).
pack_repo() {
  echo "+ git -C $(quote "$REPO") ls-files -z --cached --others --exclude-standard | tar -C $(quote "$REPO") --null -T - -czf $(quote "$1")"
  [[ $DRY_RUN == 0 ]] || return 0
  git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO is not a git checkout; cannot tell which files to copy."
  git -C "$REPO" ls-files -z --cached --others --exclude-standard | tar -C "$REPO" --null -T - -czf "$1"
}
if [[ -n $archive_only ]]; then
  pack_repo "$archive_only"
  exit 0
fi

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
[[ $(realpath "$config") == "$REPO"/* ]] || die "--config $config is outside this repository, so the workers would not have it."
need_overrides "$@"
[[ $DRY_RUN == 1 ]] || command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)."
if [[ -z $bucket ]]; then
  echo "note: without --bucket, output_dir must be a directory that every worker shares (e.g. NFS)." >&2
fi

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
train=(.venv/bin/python -m rho_jax.train --config "$config" "$@")

# `resource_state tpu-vm|queued-resources FIELD`: the slice's or queued request's state (READY,
# PREEMPTED, WAITING_FOR_RESOURCES, ACTIVE, ...), or NOT_FOUND. A dry run prints the query and
# assumes NOT_FOUND.
resource_state() {
  local describe=(gcloud compute tpus "$1" describe "$name" "${scope[@]}" --format="value($2)")
  echo "+ $(quote "${describe[@]}")" >&2
  if [[ $DRY_RUN == 1 ]]; then
    echo NOT_FOUND
  else
    "${describe[@]}" 2>/dev/null || echo NOT_FOUND
  fi
}

tpu_state() {
  resource_state tpu-vm state
}

queued_state() {
  resource_state queued-resources state.state
}

# Create the slice (returns non-zero if capacity or quota refuses it; the caller retries).
create_tpu() {
  local capacity=()
  [[ $spot == 0 ]] || capacity=(--spot)
  if [[ $queued == 1 ]]; then
    case $(queued_state) in
      NOT_FOUND) ;;
      ACTIVE | FAILED | SUSPENDED) delete_tpu || return 1 ;;  # its node is gone or never came: start over
      *) wait_for_queued_resource; return ;;                 # an earlier request is still waiting: keep it
    esac
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" --accelerator-type="$accelerator" \
      --runtime-version="$version" "${capacity[@]}" "${scope[@]}" || return 1
    wait_for_queued_resource
  else
    run gcloud compute tpus tpu-vm create "$name" --accelerator-type="$accelerator" --version="$version" \
      "${capacity[@]}" "${scope[@]}"
  fi
}

# Poll the queued request every 60 s until it is ACTIVE (a dry run prints the query once).
wait_for_queued_resource() {
  local state
  while true; do
    state=$(queued_state)
    [[ $DRY_RUN == 0 ]] || return 0
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) echo "queued resource $name is $state"; return 1 ;;
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
  pack_repo "$archive" || return 1
  run gcloud compute tpus tpu-vm scp "$archive" "$name:rho_jax.tar.gz" --worker=all "${scope[@]}" || return 1
  # TPU VM images ship Python 3.10; rho_jax needs 3.11 (from Ubuntu's packages).
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/rho_jax.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
{ command -v python3.11 >/dev/null || { sudo apt-get update -q && \
sudo apt-get install -yq -o DPkg::Lock::Timeout=600 python3.11 python3.11-venv; }; } && \
{ test -x .venv/bin/python || python3.11 -m venv .venv; } && .venv/bin/pip install -q -e '.[tpu]'" || return 1
  if [[ -n $bucket ]]; then
    on_all_workers "command -v gcsfuse >/dev/null || { \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -q && \
sudo apt-get install -yq -o DPkg::Lock::Timeout=600 gcsfuse; } && \
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && \
{ mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${bucket#gs://} $MOUNT; }" || return 1
  fi
}

# Trainers left running by an earlier attempt whose connection dropped (they hold the TPU).
stop_leftover_trainers() {
  on_all_workers "pkill -INT -f '[r]ho_jax.train' && sleep 60; pkill -KILL -f '[r]ho_jax.train'; true"
}

# The same command on every worker; each keeps its full output in ~/$REMOTE_LOG, worker 0's is streamed.
train_on_all_workers() {
  on_all_workers "set -o pipefail; worker=\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number); \
cd ~/$REMOTE_DIR && $(quote "${train[@]}") 2>&1 | tee -a ~/$REMOTE_LOG | \
if [ \"\$worker\" = 0 ]; then cat; else cat >/dev/null; fi; status=\$?; \
if [ \"\$worker\" = 0 ]; then echo \"rho_jax.train exit status: \$status\"; fi; exit \$status"
}

STOPPED=75  # rho_jax.train's exit code after a stop signal (preemption notice): checkpoint saved, rerun
restarts=0

# Count one more restart, or give up after --max-restarts.
restart() {
  restarts=$((restarts + 1))
  [[ $restarts -le $max_restarts ]] || die "gave up after $max_restarts restarts ($1)."
  echo "$1: restart $restarts of $max_restarts"
  [[ $DRY_RUN == 1 ]] || sleep 60
}

while true; do
  state=$(tpu_state)
  case $state in
    READY) ;;
    CREATING | STARTING | RESTARTING | PROVISIONING | REPAIRING)
      echo "TPU $name is $state; waiting"
      sleep 30
      continue ;;
    NOT_FOUND) create_tpu || { restart "could not create $name"; continue; } ;;
    *)
      echo "TPU $name is $state; recreating it"
      { delete_tpu && create_tpu; } || { restart "could not recreate $name"; continue; } ;;
  esac
  setup_workers || { restart "setting up the workers failed"; continue; }
  stop_leftover_trainers
  local_log="${TMPDIR:-/tmp}/rho_jax-$name-$((restarts + 1)).log"
  train_on_all_workers | tee "$local_log" || true
  if [[ $DRY_RUN == 1 ]]; then
    echo "(dry run) then: if worker 0's trainer exited 0 on a READY slice, done; if it failed on a healthy slice," \
      "stop; otherwise (preempted, stopped by a signal, connection lost) recreate the slice if needed, set it up" \
      "again and rerun the same command, which resumes from the last checkpoint; at most $max_restarts times."
    exit 0
  fi
  status=$(sed -n 's/^rho_jax.train exit status: \([0-9]*\)$/\1/p' "$local_log" | tail -n 1)
  status=${status:-lost}  # no status line: the connection or the slice went away
  state=$(tpu_state)
  if [[ $state == READY && $status == 0 ]]; then
    echo "training finished on $name (every worker's log: ~/$REMOTE_LOG). Delete the slice when done:"
    echo "  $(quote gcloud compute tpus tpu-vm delete "$name" "${scope[@]}")"
    exit 0
  fi
  if [[ $state == READY && $status != lost && $status != "$STOPPED" ]]; then
    die "training exited with status $status on a healthy slice; not retrying (see ~/$REMOTE_LOG on the workers)."
  fi
  restart "slice $state, trainer status $status"
done
