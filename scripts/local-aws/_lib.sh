# shellcheck shell=bash
# Shared helpers for scripts/local-aws/{install,start,stop,with-aws}. Sourced, not executed.
#
# Everything here logs to stderr: `start` prints only `export` lines on stdout so that
# callers can `eval "$(scripts/local-aws/start)"`.

LOCAL_AWS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
LOCAL_AWS_REPO_ROOT="$(cd "$LOCAL_AWS_DIR/../.." && pwd -P)"

# The pins. moto 5.2.x answers GetBucketVersioning/ListParts with an XML root that the
# current aws-sdk-s3 rejects, hence 5.1.22. Changing a pin changes the stamp, which
# makes the next `start` re-install into the virtualenv.
# zstandard lets tests read the repository objects nfs-objects compresses (its indexes).
LOCAL_AWS_REQUIREMENTS=(
  "moto[server,ec2,s3]==5.1.22"
  "ministack==1.5.33"
  "zstandard==0.23.0"
)

# Project-local virtualenv. Kept inside this directory (ignored by its .gitignore) so the
# launcher never writes outside scripts/local-aws/; CI may point it at a cached path.
LOCAL_AWS_VENV="${BACKPLAN_LOCAL_AWS_VENV:-$LOCAL_AWS_DIR/.venv}"
LOCAL_AWS_PY="$LOCAL_AWS_VENV/bin/python"

la_log() { printf 'local-aws: %s\n' "$*" >&2; }
la_die() { printf 'local-aws: error: %s\n' "$*" >&2; exit 1; }

la_python3() {
  local p="${BACKPLAN_LOCAL_AWS_PYTHON:-python3}"
  command -v "$p" >/dev/null 2>&1 || la_die "no '$p' on PATH (need CPython >= 3.9; set BACKPLAN_LOCAL_AWS_PYTHON)"
  printf '%s\n' "$p"
}

# `python3 -m venv` needs the ensurepip module, which Debian/Ubuntu split into the
# python3-venv package. Install it when missing (we may be root on a fresh CI machine).
la_ensure_venv_module() {
  local py="$1"
  if "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return 0
  fi
  la_log "python3 cannot create virtualenvs (no ensurepip); installing python3-venv via apt"
  command -v apt-get >/dev/null 2>&1 || la_die "ensurepip missing and no apt-get; install your distro's python3-venv package"
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || la_die "ensurepip missing; run as root or install python3-venv"
    sudo=(sudo -n)
  fi
  local ver pkgs
  ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  pkgs=(python3-venv)
  # Some distros only ship the versioned package with ensurepip for non-default pythons.
  if apt-cache show "python${ver}-venv" >/dev/null 2>&1; then pkgs+=("python${ver}-venv"); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >&2 || la_die "apt-get update failed"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 \
    || la_die "apt-get install ${pkgs[*]} failed"
  "$py" -c 'import venv, ensurepip' >/dev/null 2>&1 || la_die "python3 still cannot create virtualenvs after installing ${pkgs[*]}"
}

la_stamp_value() {
  local py="$1"
  printf '%s\n' "${LOCAL_AWS_REQUIREMENTS[@]}" "python=$("$py" -c 'import sys; print(sys.version.split()[0])')"
}

# Create/refresh the virtualenv. Idempotent, cheap when up to date (only reads the stamp),
# and serialised with flock so that parallel `start`s on a fresh machine do not race.
la_ensure_venv() {
  local stamp="$LOCAL_AWS_VENV/.backplan-local-aws-stamp"
  if [ -x "$LOCAL_AWS_PY" ] && [ -f "$stamp" ] \
     && [ "$(cat "$stamp")" = "$(la_stamp_value "$LOCAL_AWS_PY" 2>/dev/null)" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$LOCAL_AWS_VENV")"
  local lock="$LOCAL_AWS_VENV.lock"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$lock"
    flock -w 900 9 || la_die "timed out waiting for the install lock $lock"
  fi
  # Re-check under the lock: another process may have finished the install meanwhile.
  if [ -x "$LOCAL_AWS_PY" ] && [ -f "$stamp" ] \
     && [ "$(cat "$stamp")" = "$(la_stamp_value "$LOCAL_AWS_PY" 2>/dev/null)" ]; then
    la_unlock; return 0
  fi
  local py
  py="$(la_python3)"
  if [ ! -x "$LOCAL_AWS_PY" ] || ! "$LOCAL_AWS_PY" -c 'import pip' >/dev/null 2>&1; then
    la_ensure_venv_module "$py"
    la_log "creating virtualenv $LOCAL_AWS_VENV"
    rm -rf "$LOCAL_AWS_VENV"
    "$py" -m venv "$LOCAL_AWS_VENV" >&2 || la_die "python3 -m venv $LOCAL_AWS_VENV failed"
  fi
  la_log "installing ${LOCAL_AWS_REQUIREMENTS[*]} into $LOCAL_AWS_VENV (from PyPI)"
  rm -f "$stamp"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$LOCAL_AWS_PY" -m pip install --quiet "${LOCAL_AWS_REQUIREMENTS[@]}" >&2 \
    || la_die "pip install failed (is https://pypi.org reachable?)"
  la_stamp_value "$LOCAL_AWS_PY" > "$stamp"
  la_unlock
}

la_unlock() {
  if command -v flock >/dev/null 2>&1; then flock -u 9 2>/dev/null || true; exec 9>&-; fi
}

# True when PID is alive and its command line mentions STATE (guards against PID reuse).
la_pid_is_ours() {
  local pid="$1" state="$2"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$state"
  else
    ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$state"
  fi
}

# Terminate the processes recorded in STATE/*.pid (TERM, then KILL after a grace period).
la_stop_state() {
  local state="$1" f pid pids=()
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null || true)"
    if la_pid_is_ours "$pid" "$state"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  [ "${#pids[@]}" -eq 0 ] && return 0
  local i
  for i in $(seq 1 50); do
    local alive=0 p
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      la_log "pid $p did not exit on SIGTERM; sending SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

la_tail_log() {
  local log="$1"
  if [ -f "$log" ]; then
    printf -- '----- last lines of %s -----\n' "$log" >&2
    tail -n "${2:-40}" "$log" >&2
    printf -- '-----\n' >&2
  else
    printf 'local-aws: (no log at %s)\n' "$log" >&2
  fi
}
