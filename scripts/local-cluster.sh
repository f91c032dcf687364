#!/usr/bin/env bash
# Run a local PrkDB cluster in the background, one process per node, with PID files.
#
#   scripts/local-cluster.sh start           # 3 nodes from conf/cluster-3 (8080-8082);
#                                            # returns once every partition has a leader
#   scripts/local-cluster.sh status          # which nodes run, then `prkctl status`
#   scripts/local-cluster.sh stop            # SIGTERM all (leaders hand off), wait
#   scripts/local-cluster.sh start-node 2    # (re)start one node; returns once it listens
#                                            # (and, with a quorum up, all partitions lead)
#   scripts/local-cluster.sh stop-node 2     # SIGTERM one node and wait for its exit
#
# Environment:
#   CLUSTER_DIR  where PID files, logs and (relative) data dirs live
#                (default ./prkdb-local). If CLUSTER_DIR/node*.toml exist they are
#                used as they are; otherwise conf/cluster-3/node*.toml are copied there.
#   PRKDB        how to run the daemon (default: `prkdb`, or `python3 -m prkdb`)
#   PRKCTL       how to run prkctl (default: `prkctl`, or `python3 -m prkctl`)
#   STOP_TIMEOUT seconds to wait for a node to exit after SIGTERM (default 30)
#   START_TIMEOUT seconds `start`/`start-node` wait for the nodes to listen and
#                every partition to have a leader (default 60); 0 = do not wait
#
# Files in CLUSTER_DIR: nodeN.toml, nodeN.pid, nodeN.log, prkdb-data/nodeN/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
dir="${CLUSTER_DIR:-prkdb-local}"
stop_timeout="${STOP_TIMEOUT:-30}"
start_timeout="${START_TIMEOUT:-60}"

if [[ -n "${PRKDB:-}" ]]; then read -r -a prkdb <<<"$PRKDB"
elif command -v prkdb >/dev/null; then prkdb=(prkdb)
else prkdb=(python3 -m prkdb); fi
if [[ -n "${PRKCTL:-}" ]]; then read -r -a prkctl <<<"$PRKCTL"
elif command -v prkctl >/dev/null; then prkctl=(prkctl)
else prkctl=(python3 -m prkctl); fi

die() { echo "local-cluster: $*" >&2; exit 1; }

configs() {
    mkdir -p "$dir"
    if ! compgen -G "$dir/node*.toml" >/dev/null; then
        cp "$repo"/conf/cluster-3/node*.toml "$dir"/
    fi
    local f
    for f in "$dir"/node*.toml; do
        basename "$f" .toml | sed 's/^node//'
    done | sort -n
}

pid_of() {  # prints the PID of node $1 if it runs, else nothing
    local pidfile="$dir/node$1.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

start_node() {
    local i="$1" pid
    [[ -f "$dir/node$i.toml" ]] || die "no config $dir/node$i.toml"
    pid="$(pid_of "$i")"
    if [[ -n "$pid" ]]; then echo "node $i already runs (pid $pid)"; return 0; fi
    # Run in CLUSTER_DIR so relative data_dir values land there.
    (cd "$dir" && exec "${prkdb[@]}" serve --config "node$i.toml" \
        >>"node$i.log" 2>&1 </dev/null) &
    echo $! >"$dir/node$i.pid"
    echo "node $i started (pid $!, log $dir/node$i.log)"
}

seeds() {  # every config lists all peers: their client addresses are the seeds
    local first
    first="$(compgen -G "$dir/node*.toml" | head -n 1)"
    sed -n 's/^client = "\(.*\)"/\1/p' "$first" | paste -sd, -
}

client_addr() {  # node $1's client host:port, from its own config's [[peers]]
    awk -v n="$1" '/^id *=/ { id = $3 } /^client *=/ { gsub(/"/, "", $3); if (id == n) print $3 }' \
        "$dir/node$1.toml"
}

listens() {  # true if host:port $1 accepts a TCP connection (bash's /dev/tcp)
    local host="${1%:*}" port="${1##*:}"
    host="${host#[}"; host="${host%]}"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

node_died() {  # node $1 is not running any more: say why and where to look
    echo "local-cluster: node $1 exited while starting; the end of $dir/node$1.log:" >&2
    tail -n 5 "$dir/node$1.log" | sed 's/^/  /' >&2
    exit 1
}

# Wait until nodes "$@" listen, then (if a quorum runs) until every partition
# has a leader, so `prkctl status` right after `start` answers. Polls every
# 0.2 s; gives up after START_TIMEOUT s pointing at the logs.
wait_ready() {
    if (( start_timeout <= 0 )); then return 0; fi
    local deadline=$((SECONDS + start_timeout)) i out running=0 total=0
    local -a waiting
    echo -n "waiting for node(s) $* to listen "
    while :; do
        waiting=()
        for i in "$@"; do
            if [[ -z "$(pid_of "$i")" ]]; then echo; node_died "$i"; fi
            listens "$(client_addr "$i")" || waiting+=("$i")
        done
        if (( ${#waiting[@]} == 0 )); then break; fi
        if (( SECONDS >= deadline )); then
            echo
            die "node(s) ${waiting[*]} not listening after ${start_timeout}s; see $dir/node${waiting[0]}.log"
        fi
        echo -n .
        sleep 0.2
    done
    echo " ok"
    for i in $(configs); do
        total=$((total + 1))
        if [[ -n "$(pid_of "$i")" ]]; then running=$((running + 1)); fi
    done
    if (( running * 2 <= total )); then
        echo "only $running of $total nodes run: no quorum, so no leaders yet"
        return 0
    fi
    echo -n "waiting for a leader of every partition "
    while ! out="$("${prkctl[@]}" --seeds "$(seeds)" --timeout 2 status 2>&1)"; do
        for i in "$@"; do
            if [[ -z "$(pid_of "$i")" ]]; then echo; node_died "$i"; fi
        done
        if (( SECONDS >= deadline )); then
            echo
            echo "$out" >&2
            die "no leader for every partition after ${start_timeout}s; see $dir/node*.log"
        fi
        echo -n .
        sleep 0.2
    done
    echo " ok (prkctl status is healthy)"
}

stop_node() {
    local i="$1" pid waited=0
    pid="$(pid_of "$i")"
    if [[ -z "$pid" ]]; then echo "node $i is not running"; rm -f "$dir/node$i.pid"; return 0; fi
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= stop_timeout * 10 )); then
            echo "node $i (pid $pid) did not exit in ${stop_timeout}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$dir/node$i.pid"
    echo "node $i stopped"
}

cmd="${1:-}"
case "$cmd" in
    start)
        nodes=($(configs))
        for i in "${nodes[@]}"; do start_node "$i"; done
        wait_ready "${nodes[@]}"
        ;;
    stop)
        for i in $(configs); do stop_node "$i"; done
        ;;
    start-node)
        [[ -n "${2:-}" ]] || die "usage: $0 start-node N"
        configs >/dev/null
        start_node "$2"
        wait_ready "$2"
        ;;
    stop-node)
        [[ -n "${2:-}" ]] || die "usage: $0 stop-node N"
        stop_node "$2"
        ;;
    status)
        for i in $(configs); do
            pid="$(pid_of "$i")"
            if [[ -n "$pid" ]]; then echo "node $i: running (pid $pid)"
            else echo "node $i: stopped"; fi
        done
        exec "${prkctl[@]}" --seeds "$(seeds)" status
        ;;
    *)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        [[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help ]] || exit 2
        ;;
esac
