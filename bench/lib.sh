# bench/lib.sh: what the single-proxy bench scripts (callgrind.sh,
# observe-cost.sh) share; sourced, not run. Defines `release`, `work` (a
# scratch directory removed on exit), `pids` (stopped by PID on exit), and:
#   need_release NAME...        exit unless target/release/NAME exist
#   echo_config PORT BASE       a wsgate config on stdout: one plain ws listener
#                               on PORT, pool `echo` of 127.0.0.1:BASE+1..3
#   start_echo_backends BASE [taskset -c CPU]
#                               the three chat-backends that pool points at
# shellcheck shell=bash

release=target/release

need_release() {
    local b
    for b in "$@"; do
        [ -x "$release/$b" ] || { echo "$(basename "$0"): build $release/$b first" >&2; exit 1; }
    done
}

work=$(mktemp -d)
pids=()
bench_cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap bench_cleanup EXIT

echo_config() {
    local port=$1 base=$2
    cat <<YAML
listeners:
  - { name: ws, address: "127.0.0.1:$port" }
routes:
  - { path_prefix: /, pool: echo, sticky_key: [ "query:user" ] }
pools:
  echo:
    backends:
      - { id: echo-1, address: "127.0.0.1:$((base + 1))" }
      - { id: echo-2, address: "127.0.0.1:$((base + 2))" }
      - { id: echo-3, address: "127.0.0.1:$((base + 3))" }
runtime: { threads: 1, shutdown_window: 1s, upgrade_sock: "$work/up.sock" }
YAML
}

start_echo_backends() {
    local base=$1 i
    shift
    for i in 1 2 3; do
        "$@" "$release/chat-backend" --listen "127.0.0.1:$((base + i))" --id "echo-$i" >/dev/null 2>&1 &
        pids+=($!)
    done
}
