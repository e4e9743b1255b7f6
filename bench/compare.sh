#!/usr/bin/env bash
# bench/compare.sh: wsgate, HAProxy and NGINX side by side on this machine,
# written up in BENCHMARKS.md (table of medians, ratios against HAProxy next
# to each goal, a chart in bench/results/).
#
#   bench/compare.sh                  # full run: 3 repetitions (about 20 min on 2 cores)
#   REPS=5 bench/compare.sh           # more repetitions
#   REPS=1 QUICK=1 bench/compare.sh   # smoke run: small counts, short runs (~3 min)
#
# What it does:
#   1. installs HAProxy and NGINX from Debian's packages if missing (and
#      python3 for the report), builds wsgate, the echo backend and
#      wsgate-bench in release mode, makes one ECDSA P-256 certificate;
#   2. starts three echo backends, pinned with the load generator to
#      LOAD_CPU (0); each proxy runs pinned to PROXY_CPU (1) with one thread
#      or worker, a fresh process for every measurement;
#   3. for each repetition, for each proxy (order rotated every repetition):
#      fixed-rate echo over ws and wss, idle connections over ws and wss
#      (RSS per connection, all verified after the hold), handshake churn over ws and wss
#      (full TLS handshakes), and for wsgate and HAProxy (`alpn h2,http/1.1`;
#      NGINX has no RFC 8441) the h2 mode: handshake CPU and idle memory per
#      WebSocket over HTTP/2 streams against wss, in one run; per repetition
#      also the direct (no proxy) baseline and a wsgate drain of all
#      connections over the drain window;
#   4. reads each proxy's CPU time and RSS from /proc (wsgate-bench --pid),
#      appends every summary to bench/results/compare-raw.jsonl and writes
#      BENCHMARKS.md with bench/compare/report.py.
#
# Environment (defaults in parentheses): REPS (3), QUICK (0), PROXY_CPU (1),
# LOAD_CPU (0), BASE_PORT (24000: ports BASE+80..82, BASE+443..445,
# BASE+1001..1003 for the backends, BASE+1900 for the admin API),
# NO_BUILD (0: 1 uses the binaries already in target/release),
# NO_INSTALL (0), OUT (BENCHMARKS.md), KEEP_WORKDIR (0); sizes: RATE_DURATION,
# RATE_WARMUP, IDLE_CONNS, IDLE_HOLD, HS_DURATION, DRAIN_CONNS, DRAIN_WINDOW_S,
# H2_HANDSHAKES, H2_CONNS.
#
# Only loopback traffic; every run is bounded (timeout); every process this
# script starts is stopped by its PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REPS=${REPS:-3}
QUICK=${QUICK:-0}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-24000}
NO_BUILD=${NO_BUILD:-0}
NO_INSTALL=${NO_INSTALL:-0}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
NOFILE=20000
SOURCE_IPS=127.0.0.2-127.0.0.40

# Sizes and durations. The full run keeps the counts the targets name
# (9,000 connections, 20,000 msg/s over 200 connections, a 30 s drain).
RATE=20000
RATE_CONNS=200
MSG_SIZE=64
if [[ $QUICK == 1 ]]; then
    d_rate=4s d_warm=1s d_idle=1000 d_hold=3s d_hs=3s d_drain=1000 d_window=5 d_sys=3s
    d_h2hs=400 d_h2c=1000
else
    d_rate=10s d_warm=2s d_idle=9000 d_hold=15s d_hs=8s d_drain=9000 d_window=30 d_sys=5s
    # The h2 mode holds both sets at once (wss and h2): 2 x 4,000 stays
    # under HAProxy's maxconn and the descriptor limit.
    d_h2hs=2000 d_h2c=4000
fi
# Each can be set on its own too, e.g. QUICK=1 IDLE_CONNS=9000.
RATE_DURATION=${RATE_DURATION:-$d_rate}
SYSCALLS_DURATION=${SYSCALLS_DURATION:-$d_sys}
RATE_WARMUP=${RATE_WARMUP:-$d_warm}
IDLE_CONNS=${IDLE_CONNS:-$d_idle}
IDLE_HOLD=${IDLE_HOLD:-$d_hold}
HS_DURATION=${HS_DURATION:-$d_hs}
DRAIN_CONNS=${DRAIN_CONNS:-$d_drain}
DRAIN_WINDOW_S=${DRAIN_WINDOW_S:-$d_window}
H2_HANDSHAKES=${H2_HANDSHAKES:-$d_h2hs}
H2_CONNS=${H2_CONNS:-$d_h2c}
HS_CONCURRENCY=4

PROXIES=(wsgate haproxy nginx)
declare -A PORT_WS=([wsgate]=$((BASE_PORT + 80)) [haproxy]=$((BASE_PORT + 81)) [nginx]=$((BASE_PORT + 82)))
declare -A PORT_WSS=([wsgate]=$((BASE_PORT + 443)) [haproxy]=$((BASE_PORT + 444)) [nginx]=$((BASE_PORT + 445)))
BACKEND_PORTS=($((BASE_PORT + 1001)) $((BASE_PORT + 1002)) $((BASE_PORT + 1003)))
PORT_ADMIN=$((BASE_PORT + 1900))

BIN=$ROOT/target/release
WSGATE=$BIN/wsgate
BACKEND=$BIN/chat-backend
BENCH=$BIN/wsgate-bench
CHART=$BIN/wsgate-bench-chart
RESULTS=$ROOT/bench/results
RAW=$RESULTS/compare-raw.jsonl

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# Every PID this script starts goes into STARTED; the trap stops each one
# that is still running, by its PID.
STARTED=()
WORK=""
# forget PID...: stopped processes leave STARTED, so a PID the kernel hands
# out again later is never signalled.
forget() {
    local keep=() p
    for p in "${STARTED[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    STARTED=("${keep[@]}")
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${STARTED[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${STARTED[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $status != 0 || $KEEP_WORKDIR == 1 ]]; then
            log "logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup
install_packages() {
    local missing=()
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v python3 >/dev/null || missing+=(python3)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v cmake >/dev/null || missing+=(cmake) # pingora's libz-ng-sys
    command -v perf >/dev/null || missing+=(linux-perf) # system calls per message
    command -v cargo >/dev/null || [[ $NO_BUILD == 1 ]] || die "cargo is missing: install Rust (rustup) first"
    [[ ${#missing[@]} == 0 ]] && return
    [[ $NO_INSTALL == 1 ]] && die "missing: ${missing[*]} (NO_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root"
    log "installing ${missing[*]} from Debian's packages"
    # The packages' postinst would start HAProxy and NGINX as system
    # services; a policy-rc.d that says 101 stops that (Docker images ship
    # one). Created only if absent, and removed again.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ $made_policy == 1 ]] && rm -f "$policy"
    return 0
}

check_machine() {
    local cpus
    cpus=$(nproc --all)
    ((cpus >= 2)) || die "needs 2 CPUs (proxy on one, load on the other); this machine has $cpus"
    ulimit -n "$NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $NOFILE (ulimit -Hn: $(ulimit -Hn))"
    local port
    for port in "${PORT_WS[@]}" "${PORT_WSS[@]}" "${BACKEND_PORTS[@]}" "$PORT_ADMIN"; do
        if [[ -n $(ss -Hltn "sport = :$port") ]]; then
            die "port $port is already taken; pick other ports with BASE_PORT=..."
        fi
    done
}

build() {
    if [[ $NO_BUILD == 1 ]]; then
        log "NO_BUILD=1: using the binaries in target/release"
    else
        log "building wsgate, chat-backend, wsgate-bench (release)"
        cargo build --release --locked -p wsgate -p backend-example -p wsgate-bench 2>&1 | tail -n 3 >&2
    fi
    local b
    for b in "$WSGATE" "$BACKEND" "$BENCH" "$CHART"; do
        [[ -x $b ]] || die "$b is missing (build it, or drop NO_BUILD=1)"
    done
}

# fill TEMPLATE OUT: replaces the @VARS@ of a bench/compare template.
fill() {
    sed -e "s|@PORT_WS@|$3|g" -e "s|@PORT_WSS@|$4|g" \
        -e "s|@BACKEND_1@|${BACKEND_PORTS[0]}|g" -e "s|@BACKEND_2@|${BACKEND_PORTS[1]}|g" \
        -e "s|@BACKEND_3@|${BACKEND_PORTS[2]}|g" -e "s|@PORT_ADMIN@|$PORT_ADMIN|g" \
        -e "s|@CERT@|$WORK/cert.pem|g" -e "s|@KEY@|$WORK/key.pem|g" \
        -e "s|@CERT_BUNDLE@|$WORK/cert-key.pem|g" -e "s|@DIR@|$5|g" \
        "$ROOT/bench/compare/$1" >"$2"
}

configure() {
    "$WSGATE" gen-cert --cert "$WORK/cert.pem" --key "$WORK/key.pem" >/dev/null
    cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/cert-key.pem" # HAProxy wants both in one file
    mkdir -p "$WORK/wsgate" "$WORK/haproxy" "$WORK/nginx"
    fill wsgate.yaml.in "$WORK/wsgate/wsgate.yaml" "${PORT_WS[wsgate]}" "${PORT_WSS[wsgate]}" "$WORK/wsgate"
    fill wsgate-drain.yaml.in "$WORK/wsgate/drain.yaml" "${PORT_WS[wsgate]}" "${PORT_WSS[wsgate]}" "$WORK/wsgate"
    fill haproxy.cfg.in "$WORK/haproxy/haproxy.cfg" "${PORT_WS[haproxy]}" "${PORT_WSS[haproxy]}" "$WORK/haproxy"
    fill nginx.conf.in "$WORK/nginx/nginx.conf" "${PORT_WS[nginx]}" "${PORT_WSS[nginx]}" "$WORK/nginx"
    "$WSGATE" check -c "$WORK/wsgate/wsgate.yaml" >/dev/null
    "$WSGATE" check -c "$WORK/wsgate/drain.yaml" >/dev/null
    haproxy -c -q -f "$WORK/haproxy/haproxy.cfg"
    nginx -t -q -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf"
}

# ---------------------------------------------------------------- processes
# wait_listen PORT PID SECONDS: until PID itself listens on PORT (another
# program on a shared machine may hold the port; then this fails rather
# than measure the wrong process).
wait_listen() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        [[ $(ss -Hltnp "sport = :$1") == *"pid=$2,"* ]] && return 0
        sleep 0.1
    done
    return 1
}

start_backends() {
    local i
    for i in 0 1 2; do
        taskset -c "$LOAD_CPU" "$BACKEND" --listen "127.0.0.1:${BACKEND_PORTS[$i]}" --id "echo-$((i + 1))" \
            >"$WORK/backend-$((i + 1)).log" 2>&1 &
        STARTED+=($!)
        BACKEND_PIDS+=($!)
        wait_listen "${BACKEND_PORTS[$i]}" $! 10 ||
            die "echo backend on ${BACKEND_PORTS[$i]} did not start: $(tail -n 3 "$WORK/backend-$((i + 1)).log")"
    done
}

PROXY_PIDS=() # the measured PIDs of the running proxy
BACKEND_PIDS=()
PROXY_MAIN="" # the PID we started (and stop)

start_proxy() { # NAME [wsgate config]
    local name=$1 cfg=${2:-$WORK/wsgate/wsgate.yaml}
    START_SEQ=$((START_SEQ + 1))
    local logf=$WORK/$name/start-$START_SEQ.log
    case $name in
    wsgate)
        WSGATE_THREADS=1 RUST_LOG=warn taskset -c "$PROXY_CPU" "$WSGATE" run -c "$cfg" >"$logf" 2>&1 &
        ;;
    haproxy)
        # -db: foreground, no daemon; no -W: no master, one process.
        taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$logf" 2>&1 &
        ;;
    nginx)
        # daemon off: the master stays in the foreground; it forks one worker.
        taskset -c "$PROXY_CPU" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" >"$logf" 2>&1 &
        ;;
    esac
    PROXY_MAIN=$!
    STARTED+=("$PROXY_MAIN")
    wait_listen "${PORT_WS[$name]}" "$PROXY_MAIN" 15 && wait_listen "${PORT_WSS[$name]}" "$PROXY_MAIN" 15 ||
        die "$name did not start listening on its ports (log: $logf): $(tail -n 5 "$logf")"
    PROXY_PIDS=("$PROXY_MAIN")
    if [[ $name == nginx ]]; then
        # Measure the master and its worker: the worker does the work, the
        # master sleeps (its CPU stays ~0; RSS per connection is a difference).
        local worker="" i
        for ((i = 0; i < 50; i++)); do
            worker=$(pgrep -P "$PROXY_MAIN" nginx | head -n 1 || true)
            [[ -n $worker ]] && break
            sleep 0.1
        done
        [[ -n $worker ]] || die "nginx started no worker"
        PROXY_PIDS+=("$worker")
        STARTED+=("$worker")
    fi
}

stop_proxy() {
    local pid
    [[ -n $PROXY_MAIN ]] || return 0
    # wsgate: SIGINT exits at once (SIGTERM would wait its shutdown window);
    # HAProxy -db and NGINX: SIGTERM is a fast stop.
    kill -INT "$PROXY_MAIN" 2>/dev/null || true
    for pid in "${PROXY_PIDS[@]}"; do
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            [[ $i == 20 ]] && kill -TERM "$pid" 2>/dev/null
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done
    wait "$PROXY_MAIN" 2>/dev/null || true
    forget "${PROXY_PIDS[@]}"
    PROXY_MAIN=""
    PROXY_PIDS=()
}

# ---------------------------------------------------------------- measuring
RUN_SEQ=0
START_SEQ=0

# CPU ticks (1/100 s) of PIDs, summed; 0 for any that has exited. FIELDS
# picks them: 12 + 13 (user + system, the default), 12 (user) or 13 (system).
ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk "{print ${FIELDS:-\$12 + \$13}}") || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# Busy ticks of the whole machine (all CPUs) from /proc/stat.
busy_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

# Around each run the script counts the whole machine's busy CPU and that of
# the proxy and the backends; with the generator's own CPU, what is left is
# other programs' load on this (possibly shared) machine, reported per run.
load_begin() {
    L_BUSY=$(busy_ticks)
    L_PROXY=$(ticks "${PROXY_PIDS[@]}")
    L_PROXY_SYS=$(FIELDS='$13' ticks "${PROXY_PIDS[@]}")
    L_BACKENDS=$(ticks "${BACKEND_PIDS[@]}")
    L_T=$(date +%s.%N)
}

load_json() {
    local busy proxy proxy_sys backends t
    busy=$(busy_ticks)
    proxy=$(ticks "${PROXY_PIDS[@]}")
    proxy_sys=$(FIELDS='$13' ticks "${PROXY_PIDS[@]}")
    backends=$(ticks "${BACKEND_PIDS[@]}")
    t=$(date +%s.%N)
    printf '{"wall_s":%s,"busy_s":%s,"proxy_s":%s,"proxy_sys_s":%s,"syscalls":%s,"backends_s":%s,"loadavg":"%s"}' \
        "$(awk -v a="$L_T" -v b="$t" 'BEGIN {printf "%.3f", b - a}')" \
        "$(awk -v a="$L_BUSY" -v b="$busy" 'BEGIN {printf "%.2f", (b - a) / 100}')" \
        "$(awk -v a="$L_PROXY" -v b="$proxy" 'BEGIN {printf "%.2f", (b - a) / 100}')" \
        "$(awk -v a="$L_PROXY_SYS" -v b="$proxy_sys" 'BEGIN {printf "%.2f", (b - a) / 100}')" \
        "${SYSCALLS:-null}" \
        "$(awk -v a="$L_BACKENDS" -v b="$backends" 'BEGIN {printf "%.2f", (b - a) / 100}')" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# bench REP PROXY TEST TIMEOUT_S MODE ARGS...: runs wsgate-bench pinned to
# LOAD_CPU with one thread, and appends its JSON summary to the raw file.
bench() {
    local rep=$1 proxy=$2 test=$3 limit=$4 mode=$5
    shift 5
    RUN_SEQ=$((RUN_SEQ + 1))
    local out=$WORK/runs/$RUN_SEQ-$proxy-$test
    local pids=() pid status=0
    for pid in "${PROXY_PIDS[@]}"; do pids+=(--pid "$pid"); done
    load_begin
    # Counting system calls puts a tracepoint on each one, which costs the
    # proxy CPU: only the syscalls_* runs count, the CPU runs stay clean.
    local perf_pid=
    SYSCALLS=
    if [[ $test == syscalls_* ]]; then
        perf stat -e raw_syscalls:sys_enter -x, -o "$out.perf" \
            -p "$(IFS=,; echo "${PROXY_PIDS[*]}")" 2>/dev/null &
        perf_pid=$!
        # perf needs a moment to attach; a run that starts before it would
        # count fewer calls than it made.
        sleep 1
    fi
    taskset -c "$LOAD_CPU" timeout --signal=INT --kill-after=10 "$limit" \
        "$BENCH" --threads 1 --no-progress "${pids[@]}" "$mode" "$@" >"$out.out" 2>"$out.err" || status=$?
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        SYSCALLS=$(awk -F, '/raw_syscalls:sys_enter/ {print $1; exit}' "$out.perf" 2>/dev/null)
        [[ $SYSCALLS =~ ^[0-9]+$ ]] || SYSCALLS=
    fi
    local line
    line=$(tail -n 1 "$out.out" 2>/dev/null || true)
    [[ $line == \{* ]] || line=null
    printf '{"rep":%d,"proxy":"%s","test":"%s","exit":%d,"quick":%s,"machine":%s,"summary":%s}\n' \
        "$rep" "$proxy" "$test" "$status" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$(load_json)" "$line" >>"$RAW.tmp"
    python3 "$ROOT/bench/compare/report.py" --brief "$line" "$rep" "$proxy" "$test" "$status" >&2 || true
}

url() { # PROXY ws|wss
    if [[ $1 == direct ]]; then
        echo "ws://127.0.0.1:${BACKEND_PORTS[0]}/echo?user={user}"
    elif [[ $2 == ws ]]; then
        echo "ws://127.0.0.1:${PORT_WS[$1]}/echo?user={user}"
    else
        echo "wss://127.0.0.1:${PORT_WSS[$1]}/echo?user={user}"
    fi
}

rate_run() { # REP PROXY ws|wss
    bench "$1" "$2" "rate_$3" 120 rate --url "$(url "$2" "$3")" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" -c "$RATE_CONNS" -r "$RATE" --size "$MSG_SIZE" \
        -d "$RATE_DURATION" --warmup "$RATE_WARMUP"
}

idle_run() { # REP PROXY ws|wss
    bench "$1" "$2" "idle_$3" 400 idle --url "$(url "$2" "$3")" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" -c "$IDLE_CONNS" --hold "$IDLE_HOLD" --verify
}

handshake_run() { # REP PROXY ws|wss
    bench "$1" "$2" "handshake_$3" 120 handshake --url "$(url "$2" "$3")" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" --concurrency "$HS_CONCURRENCY" -d "$HS_DURATION" --size "$MSG_SIZE"
}

# WebSockets over HTTP/2 (RFC 8441) against wss in one run (`wsgate-bench
# h2`): H2_HANDSHAKES of each, then H2_CONNS of each held idle, 100 streams
# per HTTP/2 connection. wsgate and HAProxy only: NGINX has no RFC 8441.
h2_run() { # REP PROXY
    bench "$1" "$2" h2_wss 300 h2 --url "$(url "$2" wss)" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" -n "$H2_HANDSHAKES" -c "$H2_CONNS" \
        --streams-per-connection 100 --concurrency "$HS_CONCURRENCY" --size "$MSG_SIZE"
}

# A wsgate drain: DRAIN_CONNS wss connections on a pool of one backend,
# which `wsgate drain --window` closes; the generator records closes per
# second until every connection is closed.
drain_run() { # REP
    local rep=$1 ready=$WORK/drain-ready
    rm -f "$ready"
    start_proxy wsgate "$WORK/wsgate/drain.yaml"
    RUN_SEQ=$((RUN_SEQ + 1))
    local out=$WORK/runs/$RUN_SEQ-wsgate-drain
    local pids=() pid
    for pid in "${PROXY_PIDS[@]}"; do pids+=(--pid "$pid"); done
    load_begin
    taskset -c "$LOAD_CPU" timeout --signal=INT --kill-after=10 400 \
        "$BENCH" --threads 1 --no-progress "${pids[@]}" idle --url "$(url wsgate wss)" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" -c "$DRAIN_CONNS" --hold "$((DRAIN_WINDOW_S * 3 + 30))s" --until-closed \
        --ready-file "$ready" >"$out.out" 2>"$out.err" &
    local gen=$!
    STARTED+=("$gen")
    local i
    for ((i = 0; i < 3000; i++)); do
        [[ -e $ready ]] && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.1
    done
    local drain_status=0
    if [[ -e $ready ]]; then
        taskset -c "$LOAD_CPU" timeout 300 "$WSGATE" drain echo/echo-1 --window "${DRAIN_WINDOW_S}s" \
            --wait --timeout "$((DRAIN_WINDOW_S * 3 + 30))s" -c "$WORK/wsgate/drain.yaml" \
            >"$out.drain" 2>&1 || drain_status=$?
    else
        drain_status=99
    fi
    local status=0
    wait "$gen" || status=$?
    forget "$gen"
    local line
    line=$(tail -n 1 "$out.out" 2>/dev/null || true)
    [[ $line == \{* ]] || line=null
    printf '{"rep":%d,"proxy":"wsgate","test":"drain","exit":%d,"drain_exit":%d,"window_s":%d,"quick":%s,"machine":%s,"summary":%s}\n' \
        "$rep" "$status" "$drain_status" "$DRAIN_WINDOW_S" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$(load_json)" "$line" >>"$RAW.tmp"
    python3 "$ROOT/bench/compare/report.py" --brief "$line" "$rep" wsgate drain "$status" >&2 || true
    stop_proxy
}

# The fixed-rate echo again, shorter, with the proxy's system calls counted
# (perf's raw_syscalls tracepoint): once per proxy and transport, in the
# first repetition.
syscalls_run() { # REP PROXY ws|wss
    bench "$1" "$2" "syscalls_$3" 60 rate --url "$(url "$2" "$3")" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" -c "$RATE_CONNS" -r "$RATE" --size "$MSG_SIZE" \
        -d "$SYSCALLS_DURATION" --warmup 1s
}

# The plain ws handshake churn again, shorter, with the proxy's system calls
# counted: where a handshake's CPU goes (user, system, calls) for each proxy.
syscalls_hs_run() { # REP PROXY
    bench "$1" "$2" syscalls_hs 60 handshake --url "$(url "$2" ws)" --ca "$WORK/cert.pem" \
        --source-ips "$SOURCE_IPS" --concurrency "$HS_CONCURRENCY" -d "$SYSCALLS_DURATION" --size "$MSG_SIZE"
}

measure_proxy() { # REP PROXY: each measurement on a fresh proxy process
    local rep=$1 p=$2 t tests=(rate_ws rate_wss idle_ws idle_wss handshake_wss handshake_ws)
    if [[ $rep == 1 ]] && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
        tests+=(syscalls_ws syscalls_wss syscalls_hs)
    fi
    [[ $p == nginx ]] || tests+=(h2_wss)
    for t in "${tests[@]}"; do
        start_proxy "$p"
        case $t in
        rate_ws) rate_run "$rep" "$p" ws ;;
        rate_wss) rate_run "$rep" "$p" wss ;;
        syscalls_ws) syscalls_run "$rep" "$p" ws ;;
        syscalls_wss) syscalls_run "$rep" "$p" wss ;;
        syscalls_hs) syscalls_hs_run "$rep" "$p" ;;
        idle_ws) idle_run "$rep" "$p" ws ;;
        idle_wss) idle_run "$rep" "$p" wss ;;
        handshake_wss) handshake_run "$rep" "$p" wss ;;
        handshake_ws) handshake_run "$rep" "$p" ws ;;
        h2_wss) h2_run "$rep" "$p" ;;
        esac
        stop_proxy
        sleep 1 # let closing connections settle before the next process
    done
}

# ---------------------------------------------------------------- main
main() {
    local started_at
    started_at=$(date +%s)
    install_packages
    check_machine
    WORK=$(mktemp -d /tmp/wsgate-compare.XXXXXX)
    mkdir -p "$WORK/runs" "$RESULTS"
    # What the binaries are built from: the commit, and any uncommitted
    # changes to tracked files at build time (both go into BENCHMARKS.md).
    local commit
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    git status --porcelain --untracked-files=no >"$WORK/dirty.txt" 2>/dev/null || true
    [[ -s $WORK/dirty.txt ]] && log "warning: uncommitted changes in tracked files; BENCHMARKS.md will say so"
    build
    configure
    : >"$RAW.tmp"
    log "work dir $WORK; reps=$REPS quick=$QUICK; proxy on CPU $PROXY_CPU, load on CPU $LOAD_CPU"
    local load1
    load1=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load1" 'BEGIN {exit !(l > 0.5)}'; then
        log "warning: load average $load1: something else is running; the numbers will be disturbed (BENCHMARKS.md shows how much)"
    fi
    start_backends

    local rep k i
    for ((rep = 1; rep <= REPS; rep++)); do
        log "repetition $rep/$REPS"
        rate_run "$rep" direct ws
        # Rotate the order each repetition, so no proxy always goes first.
        for ((k = 0; k < 3; k++)); do
            i=$(((k + rep - 1) % 3))
            log "rep $rep: ${PROXIES[$i]}"
            measure_proxy "$rep" "${PROXIES[$i]}"
        done
        log "rep $rep: wsgate drain of $DRAIN_CONNS connections over ${DRAIN_WINDOW_S}s"
        drain_run "$rep"
    done

    mv "$RAW.tmp" "$RAW"
    local elapsed=$(($(date +%s) - started_at))
    log "measured in ${elapsed}s; writing $OUT"
    python3 "$ROOT/bench/compare/report.py" --raw "$RAW" --out "$OUT" \
        --chart-spec "$WORK/chart.json" --chart "$RESULTS/compare.png" --chart-bin "$CHART" \
        --elapsed "$elapsed" --reps "$REPS" --quick "$QUICK" --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" \
        --idle-conns "$IDLE_CONNS" --idle-hold "$IDLE_HOLD" --rate "$RATE" --rate-conns "$RATE_CONNS" \
        --rate-duration "$RATE_DURATION" --rate-warmup "$RATE_WARMUP" --size "$MSG_SIZE" \
        --hs-duration "$HS_DURATION" --hs-concurrency "$HS_CONCURRENCY" \
        --drain-conns "$DRAIN_CONNS" --drain-window "$DRAIN_WINDOW_S" --workdir "$WORK" \
        --h2-handshakes "$H2_HANDSHAKES" --h2-conns "$H2_CONNS" \
        --commit "$commit" --dirty-file "$WORK/dirty.txt" --no-build "$NO_BUILD"
    log "done: $OUT"
}

main "$@"
