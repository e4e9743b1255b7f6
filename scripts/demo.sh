#!/usr/bin/env bash
# The demo: wsgate with TLS on https://localhost:8443 in front of three
# example chat backends (127.0.0.1:9001-9003), with a generated dev
# certificate. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
cargo build --release -p wsgate -p backend-example

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# With Redis the three backends share rooms, presence and history; without
# it each backend keeps its own rooms in memory (see backend-example/README.md).
if [ -z "${CHAT_REDIS_URL:-}" ] && command -v redis-server >/dev/null; then
  redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  pids+=($!)
  export CHAT_REDIS_URL=redis://127.0.0.1:6390
fi
for i in 1 2 3; do
  target/release/chat-backend --listen "127.0.0.1:900$i" --id "chat-$i" &
  pids+=($!)
done
target/release/wsgate run -c config/demo.yaml &
pids+=($!)

cat <<'MSG'

  wsgate demo is starting. Open:

      https://localhost:8443/?user=alice

  (the certificate is self-signed: accept the browser warning, or trust
   certs/dev.crt). Ctrl-C stops the proxy and the backends.

MSG
wait
