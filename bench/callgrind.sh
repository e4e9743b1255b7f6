#!/usr/bin/env bash
# Instructions per forwarded message and per plain-ws handshake, counted by
# callgrind, for one or more wsgate binaries in the same run:
#
#   bench/callgrind.sh OLD_WSGATE NEW_WSGATE [...]
#   bench/callgrind.sh before=OLD_WSGATE after=NEW_WSGATE   # labelled rows
#   bench/callgrind.sh off=WSGATE on=WSGATE,extra.yaml   # one binary, two configs:
#       a row's YAML file is appended to the config (e.g. `access_log: ...`)
#   bench/callgrind.sh wsgate=WSGATE haproxy=/usr/sbin/haproxy   # a binary named
#       haproxy runs HAProxy with bench/compare/haproxy.cfg.in (plain ws only) as a
#       reference: the same load, its instructions in the same run
#   OUT=bench/results/instructions.md bench/callgrind.sh ...  # also write the
#       table there, with the date and commit; bench/compare.sh's report
#       (BENCHMARKS.md) includes that file
#
# Instruction counts do not depend on what else the machine is doing, so an
# A/B on a shared box is repeatable where CPU seconds are not. Each binary
# runs twice per workload, for a short and a long period; the difference of
# the two totals divided by the difference of the work done cancels start-up
# and the first connections. The remaining spread between runs (about 1%)
# comes from how messages coalesce into reads, which timing still affects:
# compare binaries measured in the same run, as ratios.
#
# Needs valgrind, and release builds of chat-backend and wsgate-bench
# (cargo build --release -p backend-example -p wsgate-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_release chat-backend wsgate-bench

port=26080
echo_config "$port" 26000 >"$work/w.yaml"
start_echo_backends 26000
# The HAProxy reference: the comparison's config, without its TLS bind.
sed -e "s|@PORT_WS@|$port|" -e '/@PORT_WSS@/d' -e '/ssl-default-bind/d' \
    -e "s|@BACKEND_1@|26001|" -e "s|@BACKEND_2@|26002|" -e "s|@BACKEND_3@|26003|" \
    bench/compare/haproxy.cfg.in >"$work/haproxy.cfg"

# Runs wsgate BINARY under callgrind while wsgate-bench ARGS... runs for
# SECONDS; prints "instructions work", work being what FIELD of the
# bench's JSON summary says was done.
measure() {
    local bin=$1 seconds=$2 field=$3; shift 3
    rm -f "$work"/cg.out.*
    local run=("$bin" run -c "$config") stop=INT
    if [[ $(basename "$bin") == haproxy ]]; then
        # One process and thread (-db, nbthread 1), as bench/compare.sh runs
        # it; under valgrind it stops on TERM, not INT.
        run=("$bin" -db -f "$work/haproxy.cfg") stop=TERM
    fi
    WSGATE_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind \
        --callgrind-out-file="$work/cg.out.%p" "${run[@]}" >"$work/wsgate.log" 2>&1 &
    local p=$!
    for _ in $(seq 300); do
        ss -Hltn "sport = :$port" | grep -q . && break
        sleep 0.1
    done
    local out
    out=$(timeout 180 "$release/wsgate-bench" "$@" -d "${seconds}s" --no-progress --threads 1 2>/dev/null | tail -1)
    kill -"$stop" "$p"
    wait "$p" 2>/dev/null || true
    local ir
    ir=$(grep -h "^summary:" "$work"/cg.out.* | awk '{s += $2} END {print s}')
    local n
    n=$(printf '%s' "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$field'])")
    echo "$ir $n"
}

per_unit() {
    local bin=$1 short=$2 long=$3 field=$4; shift 4
    read -r ir1 n1 < <(measure "$bin" "$short" "$field" "$@")
    read -r ir2 n2 < <(measure "$bin" "$long" "$field" "$@")
    python3 -c "print(round(($ir2 - $ir1) / ($n2 - $n1)))"
}

table=$work/table.md
printf '| binary | instructions per echoed message | instructions per handshake |\n|---|---|---|\n' | tee "$table"
for arg in "$@"; do
    label=${arg%%=*} bin=${arg#*=}
    config=$work/w.yaml
    if [[ $bin == *,* ]]; then
        extra=${bin#*,} bin=${bin%%,*}
        config=$work/w-$label.yaml
        cat "$work/w.yaml" "$extra" >"$config"
        # Paths in the extra YAML are relative to the config's folder.
        mkdir -p "$work/logs"
    fi
    msg=$(per_unit "$bin" 4 12 received rate --url "ws://127.0.0.1:$port/echo?user={user}" \
        -c 20 -r 400 --size 64 --warmup 1s)
    hs=$(per_unit "$bin" 4 16 completed handshake --url "ws://127.0.0.1:$port/echo?user={user}" \
        --concurrency 2 --size 64)
    printf '| %s | %s | %s |\n' "$label" "$msg" "$hs" | tee -a "$table"
done
if [[ -n ${OUT:-} ]]; then
    {
        printf 'Measured %s on commit %s by `bench/callgrind.sh` (valgrind %s): plain ws through\n' \
            "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(valgrind --version)"
        printf 'one worker thread; a message is one 64-byte echo (client to backend and back), a\n'
        printf 'handshake is TCP connect, upgrade, one echo and close. Same binary and input give\n'
        printf 'the same count within about 1%%; compare rows measured in the same run. Under\n'
        printf 'valgrind, SHA-1 (the accept check) runs in software: about 2,800 of wsgate'"'"'s\n'
        printf 'instructions per handshake that the SHA extensions do in a few hundred on the CPU.\n\n'
        cat "$table"
    } >"$OUT"
fi
