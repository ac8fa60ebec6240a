# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run): printing and running commands, argument checks,
# and the training command line. Callers set DRY_RUN=1 to print the commands without running them.

DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

# The arguments as one line that a shell splits back into them (single quotes where needed).
quote() {
  local arg line="" q="'"
  for arg in "$@"; do
    if [[ ! $arg =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
      arg="'${arg//$q/$q\\$q$q}'"
    fi
    line+="${line:+ }$arg"
  done
  printf '%s' "$line"
}

# Print a command (prefixed with "+ "), then run it unless this is a dry run.
run() {
  echo "+ $(quote "$@")"
  if [[ $DRY_RUN == 0 ]]; then
    "$@"
  fi
}

# `need_value OPTION "$@"`: the option must be followed by a value (one that does not look like an
# option, except for --xla-flags, whose values are options).
need_value() {
  [[ $# -ge 2 && -n $2 && ($2 != -* || $1 == --xla-flags) ]] || die "$1 needs a value (see --help)."
}

need_positive_int() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'."
}

# The training config must exist locally (it is copied or read from the same relative path).
need_config() {
  [[ -n $1 ]] || die "--config is required (see --help)."
  [[ -f $1 ]] || die "--config $1: no such file."
}

# Config overrides must look like key.sub=value.
need_overrides() {
  local override
  for override in "$@"; do
    [[ $override =~ ^[A-Za-z_][A-Za-z0-9_.]*= ]] || die "config override '$override' is not key.sub=value."
  done
}
