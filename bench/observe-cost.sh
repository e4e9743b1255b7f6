#!/usr/bin/env bash
# bench/observe-cost.sh: what observability costs per message, as the
# ratio of wsgate's CPU per echoed message with the access log on and
# /metrics scraped every second, against the same binary with the access
# log off, in one interleaved run (off, on, off, on, ...):
#
#   bench/observe-cost.sh                 # 5 pairs of 10 s runs at 20,000 msg/s
#   PAIRS=3 DURATION=5s bench/observe-cost.sh
#   OUT=bench/results/observe-cost.md bench/observe-cost.sh   # also write the table
#
# The machine's speed drifts between minutes, so each "on" run is compared
# with the "off" run right before it, and the result is the median of those
# per-pair ratios (each pair's ratio is printed too). The per-message
# metrics (per-tunnel counters summed at close and at scrape) cannot be
# switched off, so both arms have them: what this measures is the access
# log and the scrapes. The access log writes a line when a session ends,
# which a fixed-rate run does only at its end; its per-session cost is
# counted by `bench/callgrind.sh off=BIN on=BIN,extra.yaml` instead.
#
# Needs release builds: cargo build --release -p wsgate -p backend-example -p wsgate-bench
# Only loopback traffic; every process it starts is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-5}
RATE=${RATE:-20000}
CONNS=${CONNS:-200}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-}
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_release wsgate chat-backend wsgate-bench

port=26180
admin=26190
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
{
    echo_config "$port" 26100
    echo "admin: { address: \"127.0.0.1:$admin\", token_file: $work/token }"
} >"$work/off.yaml"
cp "$work/off.yaml" "$work/on.yaml"
echo "access_log: { to: $work/access.log, format: json }" >>"$work/on.yaml"
start_echo_backends 26100 taskset -c "$LOAD_CPU"

# run ARM: one fixed-rate run against a fresh wsgate with ARM's config;
# prints wsgate's CPU per echoed message in µs.
run() {
    local arm=$1
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$release/wsgate" run -c "$work/$arm.yaml" >"$work/wsgate.log" 2>&1 &
    local p=$!
    pids+=("$p")
    for _ in $(seq 300); do
        ss -Hltn "sport = :$port" | grep -q . && break
        sleep 0.1
    done
    local scraper=
    if [[ $arm == on ]]; then
        (while kill -0 "$p" 2>/dev/null; do
            curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$work/token")" \
                "http://127.0.0.1:$admin/metrics" || true
            sleep 1
        done) &
        scraper=$!
    fi
    local out
    out=$(taskset -c "$LOAD_CPU" timeout --signal=INT 120 "$release/wsgate-bench" --threads 1 --no-progress \
        --pid "$p" rate --url "ws://127.0.0.1:$port/echo?user={user}" -c "$CONNS" -r "$RATE" \
        --size 64 -d "$DURATION" --warmup "$WARMUP" 2>"$work/bench.err" | tail -1)
    kill -INT "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    [[ -n $scraper ]] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
    printf '%s' "$out" | python3 -c '
import json, sys
s = json.load(sys.stdin)
def find(v):
    if isinstance(v, dict):
        if "cpu_us_per_msg" in v:
            return v["cpu_us_per_msg"]
        for x in v.values():
            r = find(x)
            if r is not None:
                return r
    return None
r = find(s)
if not s.get("ok") or r is None:
    sys.exit("the run failed: " + json.dumps(s)[:400])
print(r)'
}

rows=()
ratios=()
for i in $(seq "$PAIRS"); do
    off=$(run off)
    on=$(run on)
    ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
    lines=$(wc -l <"$work/access.log" 2>/dev/null || echo 0)
    echo "pair $i: off $off µs, on $on µs per message, on/off $ratio (access log lines so far: $lines)" >&2
    rows+=("| $i | $off | $on | $ratio |")
    ratios+=("$ratio")
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
table=$(
    echo "Measured $(date -u +%F) on commit $(git rev-parse --short HEAD) by \`bench/observe-cost.sh\`:"
    echo "wsgate's CPU per echoed 64-byte message at $RATE msg/s over $CONNS plain ws connections,"
    echo "one worker thread, $PAIRS interleaved pairs of $DURATION runs; \"on\" adds the JSON access log to"
    echo "a file and a /metrics scrape every second. Median on/off ratio: **$median**."
    echo
    echo "| pair | off (µs/msg) | on (µs/msg) | on/off |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
)
echo "$table"
if [[ -n $OUT ]]; then
    echo "$table" >"$OUT"
fi
