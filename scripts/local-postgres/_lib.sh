# Shared helpers for scripts/local-postgres/{start,stop,with-postgres}. Sourced, not run.

lp_log() { printf 'local-postgres: %s\n' "$*" >&2; }
lp_die() { lp_log "error: $*"; exit 1; }

# The newest Debian PostgreSQL server binaries folder (with initdb), or nothing.
lp_find_bin() {
  if [ -n "${BACKPLAN_PG_BIN:-}" ] && [ -x "$BACKPLAN_PG_BIN/initdb" ]; then
    printf '%s\n' "$BACKPLAN_PG_BIN"; return 0
  fi
  local dir best=""
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] || continue
    best="$(printf '%s\n%s\n' "$best" "$dir" | sed '/^$/d' | sort -V | tail -n 1)"
  done
  [ -n "$best" ] && printf '%s\n' "$best"
}

# Installs Debian's PostgreSQL packages: as root directly, otherwise through `sudo -n`.
lp_install() {
  local run=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || lp_die "PostgreSQL is not installed and neither root nor sudo is available to install it (apt-get install postgresql)"
    run=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || lp_die "PostgreSQL is not installed and apt-get is missing: install the PostgreSQL server binaries (initdb, pg_ctl) by hand"
  lp_log "installing PostgreSQL (apt-get install postgresql)..."
  export DEBIAN_FRONTEND=noninteractive
  "${run[@]}" apt-get update -qq >&2 || lp_die "apt-get update failed"
  "${run[@]}" apt-get install -y -qq --no-install-recommends postgresql postgresql-client >&2 \
    || lp_die "apt-get install postgresql failed"
}

# Runs a command as the server's user: directly when that is us, otherwise through runuser.
lp_as_server_user() {
  local user="$1"; shift
  if [ "$(id -un)" = "$user" ]; then
    "$@"
  else
    runuser -u "$user" -- "$@"
  fi
}

# The user the server runs as: the caller, or when the caller is root (initdb refuses root) the
# `postgres` user Debian's packages create, else a `backplan-pg` system user made for it.
lp_server_user() {
  if [ "$(id -u)" != 0 ]; then id -un; return 0; fi
  if [ -n "${BACKPLAN_PG_USER:-}" ]; then printf '%s\n' "$BACKPLAN_PG_USER"; return 0; fi
  if id postgres >/dev/null 2>&1; then printf 'postgres\n'; return 0; fi
  if ! id backplan-pg >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin backplan-pg >&2 \
      || lp_die "cannot create the backplan-pg user to run PostgreSQL as"
  fi
  printf 'backplan-pg\n'
}

# Stops the server recorded in STATE (fast shutdown, then the recorded PID if it still runs).
lp_stop_state() {
  local state="$1" pid="" user bin watcher
  [ -d "$state" ] || return 0
  watcher="$(cat "$state/watcher.pid" 2>/dev/null || true)"
  case "$watcher" in
    ''|*[!0-9]*) ;;
    "$$"|"$PPID") ;;   # stop run by the watcher itself
    *) if tr '\0' ' ' <"/proc/$watcher/cmdline" 2>/dev/null | grep -qF "$state"; then
         kill -TERM "$watcher" 2>/dev/null || true
       fi ;;
  esac
  bin="$(cat "$state/bin" 2>/dev/null || true)"
  user="$(cat "$state/user" 2>/dev/null || true)"
  if [ -n "$bin" ] && [ -n "$user" ] && [ -f "$state/data/postmaster.pid" ]; then
    lp_as_server_user "$user" "$bin/pg_ctl" -D "$state/data" -m fast -w -t 20 stop >/dev/null 2>&1 || true
  fi
  pid="$(cat "$state/postgres.pid" 2>/dev/null || true)"
  case "$pid" in ''|*[!0-9]*) return 0 ;; esac
  # Only a process whose command line names this state folder is ours.
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$state"; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}
