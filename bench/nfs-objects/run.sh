#!/usr/bin/env bash
# Benchmark of nfs-objects against restic, rustic, borg, rsync and rclone (issues 3 and 16).
#
# Builds the reproducible dataset (../shared/bench/gen_dataset.py), then for each of RUNS rounds
# runs every tool side by side, phase by phase: full backup into an empty repository, no-change
# incremental, incremental after `gen_dataset.py mutate`, full restore into an empty folder, full
# verify. Before every timed command the page cache is dropped and the command's inputs are read
# once (see ../shared/bench/README.md). Prints per phase each tool's median wall time, CPU time
# (user + system) and peak RSS, and the ratio backplan/peer; then what each tool stored (objects
# and bytes) after the last backup.
#
# Two floors, one phase each: `cp` is `cp -a` of the tree itself (restore), `find` is
# `find -newer` over it (no-change: what looking at every file's metadata costs).
#
# Rows: `backplan` is what users run, `backplan run / restore / verify` on a generated plan
# (runner, catalog and plugin host included); `backplan-enc` the same on an encrypted
# repository (format version 2, a passphrase key): restic, rustic and borg (repokey) encrypt
# too, so `enc/peer` compares like with like; `engine` is the engine example alone (the engine
# without the runner), kept as a second row.
#
# STORE=local (default): every tool writes a repository in a local folder. STORE=s3: every tool
# writes to the same local S3 server, s3s-fs 0.14.1 (installed with `cargo install`), restic
# and rustic through their S3 backends and rclone as the mirror peer; borg and rsync have no S3.
# Before the rounds, `store.py rawspeed` PUTs and GETs the dataset 16 at a time to show what
# the server itself can do.
#
# Environment: BENCH_DIR (work folder, default /tmp/backplan-bench), RUNS (3), SMALL_FILES
# (20000; use 500000 for the memory scale test), DATA (a tree to use instead of the generated
# one), TOOLS (default: all that suit STORE), STORE, INSTALL (1: install missing peers with
# apt-get and `cargo install`), BACKPLAN and ENGINE (prebuilt binaries; skip the build),
# S3_PORT (9555), PHASES (default "full nochange mutated restore verify"; leave out `mutated`
# for a DATA tree that is not the generated one), RESTORE_FS (`fresh`, the default: every
# restore goes into a new ext4 filesystem of its own, see `restore_target`; `plain`: into a
# folder of BENCH_DIR). Needs root (drop_caches, mount).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GEN=${GEN:-$ROOT/../shared/bench/gen_dataset.py}
BENCH_DIR=${BENCH_DIR:-/tmp/backplan-bench}
RUNS=${RUNS:-3}
SMALL_FILES=${SMALL_FILES:-20000}
STORE=${STORE:-local}
case $STORE in
local) TOOLS=${TOOLS:-backplan backplan-enc engine restic rustic borg rsync rclone cp find} ;;
s3) TOOLS=${TOOLS:-backplan backplan-enc engine restic rustic rclone cp find} ;;
*) echo "STORE is local or s3" >&2; exit 2 ;;
esac
INSTALL=${INSTALL:-1}
PHASES=${PHASES:-full nochange mutated restore verify}
RESTORE_FS=${RESTORE_FS:-fresh}
S3_PORT=${S3_PORT:-9555}
S3S_FS_VERSION=0.14.1
PYTHON=$ROOT/scripts/local-aws/.venv/bin/python

DATA=${DATA:-$BENCH_DIR/data-$SMALL_FILES}
REPOS=$BENCH_DIR/repos
OUT=$BENCH_DIR/restore
TIMES=$BENCH_DIR/times-$STORE-$SMALL_FILES.tsv
USAGE=$BENCH_DIR/usage-$STORE-$SMALL_FILES.tsv
S3_ROOT=$BENCH_DIR/s3
ENDPOINT=http://127.0.0.1:$S3_PORT
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
# The S3 server's credentials, for every tool (restic, the AWS SDK and boto3 read these).
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1

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
    if [[ $STORE == s3 ]] && ! command -v s3s-fs >/dev/null; then
        log "installing s3s-fs $S3S_FS_VERSION from crates.io"
        cargo install --locked "s3s-fs@$S3S_FS_VERSION" --features binary >/dev/null 2>&1
    fi
    [[ -x $PYTHON ]] || "$ROOT/scripts/local-aws/install" >/dev/null
}

build_backplan() {
    local target
    target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
    if [[ -z ${BACKPLAN:-} ]]; then
        log "building backplan (release)"
        cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p backplan-cli
        BACKPLAN=$target/backplan
    fi
    if [[ -z ${ENGINE:-} ]]; then
        cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
            -p backplan-plugin-nfs-objects --example engine
        ENGINE=$target/examples/engine
    fi
}

# Where a tool's repository is: a folder, or a bucket of the S3 server (one per tool).
repository_of() {
    if [[ $STORE == s3 ]]; then echo "s3://$1/repo"; else echo "$REPOS/$1"; fi
}

# The plans `backplan` and `backplan-enc` run: one nfs-objects step from DATA into the tool's
# repository, each with its own state folder (catalog) under BENCH_DIR. Retention is off: the
# benchmark never prunes.
write_plans() {
    local tool encryption
    for tool in backplan backplan-enc; do
        encryption=""
        [[ $tool == backplan-enc ]] && encryption='encryption = { passphrase_env = "BENCH_PASSPHRASE" }'
        cat >"$BENCH_DIR/$tool.toml" <<TOML
[plan]
name = "$tool"
timeout = "2h"

[[steps]]
id = "artifacts"
plugin = "nfs-objects"
[steps.config]
source = "$DATA"
repository = "$(repository_of "$tool")"
$encryption
TOML
    done
}

# The only place that knows how to drive backplan: (row, phase) -> command.
backplan_command() {
    local tool=$1 plan=$BENCH_DIR/$1.toml
    local backplan="BACKPLAN_STATE_DIR=$BENCH_DIR/state-$tool BENCH_PASSPHRASE=bench $BACKPLAN --quiet --no-progress"
    case $2 in
    init) echo "rm -rf $BENCH_DIR/state-$tool" ;;
    full | nochange | mutated) echo "$backplan run $plan" ;;
    restore) echo "$backplan restore $plan --run latest -o target=$OUT/$tool" ;;
    verify) echo "$backplan verify $plan" ;;
    esac
}

engine_command() {
    local repo
    repo=$(repository_of engine)
    case $1 in
    init) echo "true" ;;
    full | nochange | mutated) echo "$ENGINE backup $repo $DATA" ;;
    restore) echo "$ENGINE restore $repo $OUT/engine" ;;
    verify) echo "$ENGINE verify $repo" ;;
    esac
}

# rustic reaches S3 through OpenDAL, configured by a profile file in the work folder.
write_rustic_profile() {
    cat >"$BENCH_DIR/rustic-s3.toml" <<TOML
[repository]
repository = "opendal:s3"
password = "bench"
[repository.options]
bucket = "rustic"
root = "/repo"
endpoint = "$ENDPOINT"
region = "us-east-1"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
TOML
}

# Peers: phase -> command ("" when the tool has no such phase).
peer_command() {
    local tool=$1 phase=$2 repo=$REPOS/$1 out=$OUT/$1
    [[ $STORE == s3 ]] && { s3_peer_command "$@"; return; }
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

# The same peers against the S3 server: restic's s3 backend, rustic's OpenDAL s3, and rclone
# (a remote defined by environment variables) mirroring the tree into a bucket. rclone gets the
# bucket itself, not a folder in it: given `bucket/folder` it first HEADs the key `folder` to
# see whether it is a file, s3s-fs answers 500 for a key that is a folder on its disk, and rclone
# retries that with back-off for ~95 s before every sync (the "stall" on no-change runs).
# restic 0.14 (minio-go) lists recursively with an empty `delimiter=` parameter, which s3s-fs
# 0.14.1 treats as a delimiter (AWS ignores it): the listing of data/ comes back empty, so
# `restic check` reports every pack missing. Its verify row is failed, not slow.
s3_peer_command() {
    local tool=$1 phase=$2 out=$OUT/$1
    local restic="restic -q -r s3:$ENDPOINT/restic/repo"
    local rustic="rustic -P $BENCH_DIR/rustic-s3"
    case $tool:$phase in
    restic:init) echo "$restic init" ;;
    restic:full | restic:nochange | restic:mutated) echo "$restic backup $DATA" ;;
    restic:restore) echo "$restic restore latest --target $out" ;;
    restic:verify) echo "$restic check --read-data" ;;
    rustic:init) echo "$rustic init" ;;
    rustic:full | rustic:nochange | rustic:mutated) echo "$rustic backup $DATA" ;;
    rustic:restore) echo "$rustic restore latest $out" ;;
    rustic:verify) echo "$rustic check --read-data" ;;
    rclone:init) echo "true" ;;
    rclone:full | rclone:nochange | rclone:mutated) echo "rclone sync --links $DATA bench:rclone" ;;
    rclone:restore) echo "rclone copy --links bench:rclone $out" ;;
    *) echo "" ;;
    esac
}

command_for() {
    case $1 in
    backplan | backplan-enc) backplan_command "$1" "$2" ;;
    engine) engine_command "$2" ;;
    cp) [[ $2 != restore ]] || echo "cp -a $DATA/. $OUT/cp/" ;;
    find)
        case $2 in
        init) echo "touch $BENCH_DIR/find-since" ;;
        nochange) echo "find $DATA -newer $BENCH_DIR/find-since" ;;
        esac
        ;;
    *) peer_command "$1" "$2" ;;
    esac
}

available() {
    [[ $1 == backplan* || $1 == engine ]] || command -v "$1" >/dev/null
}

# Which phases back up (usage is recorded after the last of them).
is_backup() { [[ $1 == full || $1 == nochange || $1 == mutated ]]; }

# Where a tool's stored data sits on this machine's disk (for the S3 server: its bucket folder);
# `cp` copies the tree itself.
stored_folder() {
    if [[ $1 == cp ]]; then echo "$DATA"; elif [[ $STORE == s3 ]]; then echo "$S3_ROOT/$1"; else echo "$REPOS/$1"; fi
}

# Makes the empty folder a restore of `tool` writes into. With RESTORE_FS=fresh it is the root
# of a new ext4 filesystem (a sparse image on a loop device, the default mkfs options, journal
# included) mounted for this one restore: on ext4 without a journal, as on some build machines,
# allocating inodes skips the ones deleted in the last 5 minutes one by one, so a restore into a
# folder right after the previous round's `rm -rf` ran up to twice as long, for whichever tool
# came after it. Falls back to a plain folder (said once) where loop mounts are not allowed.
restore_target() {
    local out=$OUT/$1
    mkdir -p "$out"
    [[ $RESTORE_FS == fresh ]] || return 0
    local image=$BENCH_DIR/restore-$1.img
    if [[ -z ${DATA_BYTES:-} ]]; then
        DATA_BYTES=$(du -sb "$DATA" | cut -f1)
        DATA_ENTRIES=$(find "$DATA" | wc -l)
    fi
    rm -f "$image"
    truncate -s $((DATA_BYTES * 2 + (1 << 30))) "$image"
    if mkfs.ext4 -q -F -N $((DATA_ENTRIES * 2 + 10000)) "$image" >/dev/null 2>&1 &&
        mount -o loop "$image" "$out" 2>/dev/null; then
        rmdir "$out/lost+found"
    else
        rm -f "$image"
        log "cannot mount a fresh filesystem here; restores go into plain folders (RESTORE_FS=plain)"
        RESTORE_FS=plain
    fi
}

# Unmounts and removes what `restore_target` made.
release_target() {
    local out=$OUT/$1
    [[ $RESTORE_FS == fresh ]] || return 0
    umount "$out" && rm -f "$BENCH_DIR/restore-$1.img"
}

# Drop the page cache, then read the phase's inputs once, the same way for every tool.
reset_cache() {
    local tool=$1 phase=$2
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local input=$DATA
    [[ $phase == restore || $phase == verify ]] && input=$(stored_folder "$tool")
    [[ -e $input ]] || return 0
    find "$input" -type f -print0 | xargs -0 cat >/dev/null
}

# Objects and bytes a tool stored, after its last backup of the round.
record_usage() {
    local tool=$1 run=$2 objects bytes
    if [[ $STORE == s3 ]]; then
        read -r objects bytes < <("$PYTHON" "$HERE/store.py" usage "$tool")
    else
        objects=$(find "$REPOS/$tool" -type f | wc -l)
        bytes=$(du -sb "$REPOS/$tool" | cut -f1)
    fi
    printf '%s\t%s\t%s\t%s\n' "$tool" "$run" "$objects" "$bytes" >>"$USAGE"
}

# The S3 server, on a folder of its own, for the whole benchmark; rclone's remote `bench:`.
start_s3() {
    rm -rf "$S3_ROOT"
    mkdir -p "$S3_ROOT"
    s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$S3_ROOT" >"$BENCH_DIR/s3s-fs.log" 2>&1 &
    S3_PID=$!
    for _ in $(seq 1 50); do
        curl -s -o /dev/null "$ENDPOINT" && break
        sleep 0.2
    done
    export AWS_ENDPOINT_URL=$ENDPOINT
    # A CA bundle is for TLS; rclone refuses to start with one on a plain-HTTP endpoint.
    unset AWS_CA_BUNDLE
    export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
    export RCLONE_CONFIG_BENCH_ENDPOINT=$ENDPOINT RCLONE_CONFIG_BENCH_ENV_AUTH=false
    export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
    export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
    write_rustic_profile
    "$PYTHON" "$HERE/store.py" mkbucket raw
    log "the server alone (16 parallel PUTs, then GETs, of the dataset):"
    "$PYTHON" "$HERE/store.py" rawspeed raw "$DATA" >&2
    rm -rf "${S3_ROOT:?}/raw"
}

# Every tool's repository starts empty in each round.
fresh_stores() {
    rm -rf "$REPOS" "$OUT"
    mkdir -p "$REPOS" "$OUT"
    if [[ $STORE == s3 ]]; then
        local tool buckets=()
        # The floors store nothing (and a bucket name has 3 characters at least).
        for tool in "$@"; do [[ $tool == cp || $tool == find ]] || buckets+=("$tool"); done
        for tool in "${buckets[@]}"; do rm -rf "${S3_ROOT:?}/$tool"; done
        "$PYTHON" "$HERE/store.py" mkbucket "${buckets[@]}"
    fi
}

timed() {
    local tool=$1 phase=$2 run=$3 cmd
    cmd=$(command_for "$tool" "$phase")
    [[ -n $cmd ]] || return 0
    [[ $phase == restore ]] && restore_target "$tool"
    reset_cache "$tool" "$phase"
    local stats
    stats=$(mktemp)
    local status=0
    /usr/bin/time -f '%e %U %S %M' -o "$stats" sh -c "$cmd" >/dev/null 2>"$stats.err" || status=$?
    [[ $phase == restore ]] && release_target "$tool"
    if ((status != 0)); then
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
    python3 - "$USAGE" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, run, objects, size = line.split("\t")
    rows[tool].append((int(objects), int(size)))
print()
print(f"{'stored':9} {'tool':9} {'objects':>8} {'MiB':>8} {'backplan/peer':>14}")
ours = rows.get("backplan")
for tool in sorted(rows, key=lambda t: (t != "backplan", t)):
    objects = statistics.median(o for o, _ in rows[tool])
    size = statistics.median(s for _, s in rows[tool])
    ratio = ""
    if ours and tool != "backplan" and size:
        ratio = f"{statistics.median(s for _, s in ours) / size:.2f}"
    print(f"{'':9} {tool:9} {objects:8.0f} {size / 2**20:8.1f} {ratio:>14}")
PY
}

# On the way out, however the script ends: the S3 server stopped, restore filesystems unmounted.
clean_up() {
    [[ -z ${S3_PID:-} ]] || kill "$S3_PID" 2>/dev/null
    local mounted
    for mounted in "$OUT"/*; do mountpoint -q "$mounted" 2>/dev/null && umount "$mounted"; done
    rm -f "$BENCH_DIR"/restore-*.img
}

main() {
    trap clean_up EXIT
    [[ $(id -u) == 0 ]] || { echo "run as root (drop_caches)" >&2; exit 1; }
    [[ $INSTALL == 1 ]] && install_peers
    build_backplan
    mkdir -p "$BENCH_DIR"
    if [[ ! -d $DATA ]]; then
        log "generating dataset with $SMALL_FILES small files"
        python3 "$GEN" generate "$DATA" "$SMALL_FILES" >&2
    fi
    : >"$TIMES"
    : >"$USAGE"
    write_plans
    [[ $STORE == s3 ]] && start_s3
    local tools=() last_backup=""
    for phase in $PHASES; do is_backup "$phase" && last_backup=$phase; done
    for tool in $TOOLS; do available "$tool" && tools+=("$tool") || log "$tool not installed; skipped"; done
    for run in $(seq 1 "$RUNS"); do
        fresh_stores "${tools[@]}"
        for tool in "${tools[@]}"; do sh -c "$(command_for "$tool" init)" >/dev/null; done
        for phase in $PHASES; do
            [[ $phase == mutated ]] && python3 "$GEN" mutate "$DATA" >&2
            # Alternate the order between runs so no tool always goes first.
            local order=("${tools[@]}")
            ((run % 2 == 0)) && order=($(printf '%s\n' "${tools[@]}" | tac))
            for tool in "${order[@]}"; do timed "$tool" "$phase" "$run"; done
            if [[ $phase == "$last_backup" ]]; then
                for tool in "${tools[@]}"; do
                    [[ $tool == cp || $tool == find ]] || record_usage "$tool" "$run"
                done
            fi
        done
    done
    summarize
}

main "$@"
