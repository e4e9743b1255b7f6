#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see fuzz/README.md), one after the
# other, each in one process.
#
#   scripts/fuzz.sh                    # every target for 60 s
#   scripts/fuzz.sh --time 600 config  # one target for 10 minutes
#   scripts/fuzz.sh --runs 10000000    # every target to 10 million executions
#   scripts/fuzz.sh --smoke            # CI: a few thousand runs of each
#
# libFuzzer needs the nightly toolchain; without it this prints one line and
# exits 0, so CI machines without nightly skip the fuzzing. cargo-fuzz is
# installed if missing. Each target starts from its committed seeds
# (fuzz/corpus/<target>/, read only) plus what earlier runs found
# (fuzz/work/<target>/, ignored by git). A crash stops with exit status 1 and
# leaves its input in fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run -O -a -s none --fuzz-dir fuzz TARGET ARTIFACT
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

targets_all=(frame_tracker handshake sticky_key config backend_answer)
time_s=60
runs=
smoke=false
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=true ;;
        --time) time_s=$2; shift ;;
        --runs) runs=$2; time_s=; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${targets_all[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# -O -a: optimised, with debug assertions and overflow checks. No
# sanitizer by default: wsgate's fuzzed code is safe Rust (the crate denies
# unsafe outside edge::socket, which no target reaches) and ASan halves the
# speed. The YAML parser under the config target (unsafe-libyaml) is not:
# FUZZ_SANITIZER=address scripts/fuzz.sh config runs it under ASan.
build=(-O -a -s "${FUZZ_SANITIZER:-none}" --fuzz-dir "$root/fuzz")
mkdir -p "$root/fuzz/work"
if ! cargo +nightly fuzz build "${build[@]}" >"$root/fuzz/work/build.log" 2>&1; then
    tail -40 "$root/fuzz/work/build.log" >&2
    echo "fuzz: build failed; full log in fuzz/work/build.log" >&2
    exit 1
fi

if $smoke; then
    limits=(-runs=3000 -max_total_time=5)
elif [ -n "$runs" ]; then
    limits=(-runs="$runs")
else
    limits=(-max_total_time="$time_s")
fi

status=0
summary=()
for t in "${targets[@]}"; do
    work=$root/fuzz/work/$t
    mkdir -p "$work" "$root/fuzz/artifacts/$t"
    log=$work.log
    if $smoke; then log=$work-smoke.log; fi
    # Framing bugs need a few headers, not long payloads (lengths are
    # numbers): short inputs run the tracker's four feedings faster.
    case $t in
        frame_tracker) max_len=1024 ;;
        *) max_len=4096 ;;
    esac
    echo "fuzz: $t ${limits[*]}"
    if cargo +nightly fuzz run "${build[@]}" "$t" "$work" "$root/fuzz/corpus/$t" -- \
        -dict="$root/fuzz/dict/$t.dict" -max_len=$max_len -timeout=10 \
        -print_final_stats=1 "${limits[@]}" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        grep -a -E -A2 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
        echo "fuzz: $t failed; full log in $log" >&2
    fi
    stat() { grep -a -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
    summary+=("$(printf '%-14s %-6s %12s runs %9s exec/s %7s new units  (corpus %s)' \
        "$t" "$result" "$(stat number_of_executed_units)" "$(stat average_exec_per_sec)" \
        "$(stat new_units_added)" "$(find "$work" -type f | wc -l)")")
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
