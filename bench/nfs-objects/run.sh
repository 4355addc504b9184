#!/usr/bin/env bash
# Benchmark of the nfs-objects engine against restic, rustic, borg, rsync and rclone (issue 3).
# `backplan` is a plaintext repository, `backplan-enc` an encrypted one (format version 2,
# passphrase); restic, rustic and borg (repokey) encrypt too, so `enc/peer` compares like with
# like.
#
# Builds the reproducible dataset (../shared/bench/gen_dataset.py), then for each of RUNS rounds
# runs every tool side by side, phase by phase: full backup into an empty repository, no-change
# incremental, incremental after `gen_dataset.py mutate`, full restore into an empty folder, full
# verify. Before every timed command the page cache is dropped and the command's inputs are read
# once (see ../shared/bench/README.md). Prints per phase each tool's median wall time, CPU time
# (user + system) and peak RSS, and the ratio backplan/peer.
#
# Environment: BENCH_DIR (work folder, default /tmp/backplan-bench), RUNS (3), SMALL_FILES
# (20000; use 500000 for the memory scale test), TOOLS (default: all), INSTALL (1: install
# missing peers with apt-get and `cargo install rustic-rs`), ENGINE (a prebuilt engine example;
# skips the build). Needs root (drop_caches).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GEN=${GEN:-$ROOT/../shared/bench/gen_dataset.py}
BENCH_DIR=${BENCH_DIR:-/tmp/backplan-bench}
RUNS=${RUNS:-3}
SMALL_FILES=${SMALL_FILES:-20000}
TOOLS=${TOOLS:-backplan backplan-enc restic rustic borg rsync rclone}
INSTALL=${INSTALL:-1}
PHASES="full nochange mutated restore verify"

DATA=$BENCH_DIR/data-$SMALL_FILES
REPOS=$BENCH_DIR/repos
OUT=$BENCH_DIR/restore
TIMES=$BENCH_DIR/times-$SMALL_FILES.tsv
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

log() { printf '== %s\n' "$*" >&2; }

install_peers() {
    local missing=()
    command -v restic >/dev/null || missing+=(restic)
    command -v borg >/dev/null || missing+=(borgbackup)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v rclone >/dev/null || missing+=(rclone)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    if ! command -v rustic >/dev/null; then
        log "installing rustic-rs from crates.io (slow: ~10 min on 2 cores)"
        cargo install --locked rustic-rs >/dev/null 2>&1 || log "rustic could not be installed; skipped"
    fi
}

build_backplan() {
    if [[ -n ${ENGINE:-} ]]; then return; fi
    log "building backplan (release)"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
        -p backplan-plugin-nfs-objects --example engine
    ENGINE=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/engine
}

# The only place that knows how to drive backplan: phase -> command. To switch to the real
# binary, emit e.g. `backplan run --plan $BENCH_DIR/plan.toml` / `backplan restore ...` here.
backplan_command() {
    case $1 in
    init) echo "true" ;;
    full | nochange | mutated) echo "$ENGINE backup $REPOS/backplan $DATA" ;;
    restore) echo "$ENGINE restore $REPOS/backplan $OUT/backplan" ;;
    verify) echo "$ENGINE verify $REPOS/backplan" ;;
    esac
}

# The same engine on an encrypted repository (AES-256-GCM, argon2id passphrase key).
backplan_enc_command() {
    local run="env ENGINE_PASSPHRASE=bench $ENGINE"
    case $1 in
    init) echo "true" ;;
    full | nochange | mutated) echo "$run backup $REPOS/backplan-enc $DATA" ;;
    restore) echo "$run restore $REPOS/backplan-enc $OUT/backplan-enc" ;;
    verify) echo "$run verify $REPOS/backplan-enc" ;;
    esac
}

# Peers: phase -> command ("" when the tool has no such phase).
peer_command() {
    local tool=$1 phase=$2 repo=$REPOS/$1 out=$OUT/$1
    case $tool:$phase in
    restic:init) echo "restic -q -r $repo init" ;;
    restic:full | restic:nochange | restic:mutated) echo "restic -q -r $repo backup $DATA" ;;
    restic:restore) echo "restic -q -r $repo restore latest --target $out" ;;
    restic:verify) echo "restic -q -r $repo check --read-data" ;;
    rustic:init) echo "rustic -r $repo --password bench init" ;;
    rustic:full | rustic:nochange | rustic:mutated) echo "rustic -r $repo --password bench backup $DATA" ;;
    rustic:restore) echo "rustic -r $repo --password bench restore latest $out" ;;
    rustic:verify) echo "rustic -r $repo --password bench check --read-data" ;;
    borg:init) echo "borg init -e repokey $repo" ;;
    borg:full | borg:nochange | borg:mutated) echo "borg create $repo::{now:%s%f} $DATA" ;;
    borg:restore) echo "sh -c 'mkdir -p $out && cd $out && borg extract $repo::\$(borg list --last 1 --short $repo)'" ;;
    borg:verify) echo "borg check --verify-data $repo" ;;
    rsync:init) echo "mkdir -p $repo" ;;
    rsync:full | rsync:nochange | rsync:mutated) echo "rsync -aH --delete $DATA/ $repo/" ;;
    rsync:restore) echo "rsync -aH $repo/ $out/" ;;
    rclone:init) echo "mkdir -p $repo" ;;
    rclone:full | rclone:nochange | rclone:mutated) echo "rclone sync --links $DATA $repo" ;;
    rclone:restore) echo "rclone copy --links $repo $out" ;;
    *) echo "" ;;
    esac
}

command_for() {
    case $1 in
    backplan) backplan_command "$2" ;;
    backplan-enc) backplan_enc_command "$2" ;;
    *) peer_command "$1" "$2" ;;
    esac
}

available() {
    [[ $1 == backplan || $1 == backplan-enc ]] || command -v "$1" >/dev/null
}

# Drop the page cache, then read the phase's inputs once, the same way for every tool.
reset_cache() {
    local tool=$1 phase=$2
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local input=$DATA
    [[ $phase == restore || $phase == verify ]] && input=$REPOS/$tool
    find "$input" -type f -print0 | xargs -0 cat >/dev/null
}

timed() {
    local tool=$1 phase=$2 run=$3 cmd
    cmd=$(command_for "$tool" "$phase")
    [[ -n $cmd ]] || return 0
    reset_cache "$tool" "$phase"
    local stats
    stats=$(mktemp)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$stats" sh -c "$cmd" >/dev/null 2>"$stats.err"; then
        log "$tool $phase failed: $(tail -n 3 "$stats.err")"
        rm -f "$stats" "$stats.err"
        return 0
    fi
    read -r wall user sys rss <"$stats"
    rm -f "$stats" "$stats.err"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$phase" "$run" "$wall" \
        "$(echo "$user + $sys" | bc)" "$rss" >>"$TIMES"
    log "$(printf '%-9s %-9s run %s: %6.2f s wall' "$tool" "$phase" "$run" "$wall")"
}

summarize() {
    python3 - "$TIMES" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, phase, run, wall, cpu, rss = line.split("\t")
    rows[(phase, tool)].append((float(wall), float(cpu), int(rss)))
phases = ["full", "nochange", "mutated", "restore", "verify"]
tools = sorted({t for _, t in rows}, key=lambda t: (not t.startswith("backplan"), t))
print(f"{'phase':9} {'tool':12} {'wall s':>8} {'cpu s':>8} {'rss MB':>8} {'backplan/peer':>14} {'enc/peer':>9}")
for phase in phases:
    ours = rows.get((phase, "backplan"))
    ours_wall = statistics.median(w for w, _, _ in ours) if ours else None
    enc = rows.get((phase, "backplan-enc"))
    enc_wall = statistics.median(w for w, _, _ in enc) if enc else None
    for tool in tools:
        runs = rows.get((phase, tool))
        if not runs:
            continue
        wall = statistics.median(w for w, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        rss = max(r for _, _, r in runs) / 1024
        ratio = f"{ours_wall / wall:.2f}" if ours_wall and tool != "backplan" and wall else ""
        versus = f"{enc_wall / wall:.2f}" if enc_wall and not tool.startswith("backplan") and wall else ""
        print(f"{phase:9} {tool:12} {wall:8.2f} {cpu:8.2f} {rss:8.1f} {ratio:>14} {versus:>9}")
PY
}

main() {
    [[ $(id -u) == 0 ]] || { echo "run as root (drop_caches)" >&2; exit 1; }
    [[ $INSTALL == 1 ]] && install_peers
    build_backplan
    mkdir -p "$BENCH_DIR"
    if [[ ! -d $DATA ]]; then
        log "generating dataset with $SMALL_FILES small files"
        python3 "$GEN" generate "$DATA" "$SMALL_FILES" >&2
    fi
    : >"$TIMES"
    local tools=()
    for tool in $TOOLS; do available "$tool" && tools+=("$tool") || log "$tool not installed; skipped"; done
    for run in $(seq 1 "$RUNS"); do
        rm -rf "$REPOS" "$OUT"
        mkdir -p "$REPOS" "$OUT"
        for tool in "${tools[@]}"; do sh -c "$(command_for "$tool" init)" >/dev/null; done
        for phase in $PHASES; do
            [[ $phase == mutated ]] && python3 "$GEN" mutate "$DATA" >&2
            # Alternate the order between runs so no tool always goes first.
            local order=("${tools[@]}")
            ((run % 2 == 0)) && order=($(printf '%s\n' "${tools[@]}" | tac))
            for tool in "${order[@]}"; do timed "$tool" "$phase" "$run"; done
        done
    done
    summarize
}

main "$@"
