#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, unit tests, end-to-end tests
# with real processes on loopback, Python interop tests, browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

cargo fmt --all -- --check
# The planes' layering: no import cycle, no data-path module importing control.
python3 scripts/module-deps.py >/dev/null
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests start these binaries as real processes.
cargo build --workspace --bins
# A second wsgate with other code generation (CPU-specific instructions,
# e.g. AVX2 in xxh3), in its own target directory: the replica-agreement
# test (tests/e2e/replicas.rs) checks both builds map keys identically.
# Debug and wsgate only, to keep the extra build small.
RUSTFLAGS='-C target-cpu=native' cargo build -p wsgate --bin wsgate \
  --target-dir "${CARGO_TARGET_DIR:-target}/native"
# One test at a time: several end-to-end tests are timing-sensitive (drain
# pacing, health detection, the restart handoff loop), and a 2-core machine
# cannot also run 16 MiB debug-build echoes beside them without starving
# their clients. (Benches are not run: criterion takes no --test-threads.)
cargo test --workspace --tests -- --test-threads=1
python3 -m pytest -q tests/python
# Headless Chromium through wsgate over wss (saves tests/artifacts/chat-browser.png).
node --test tests/browser/chat.test.mjs
# The chat page over HTTP/2; prints which protocol Chromium's WebSocket used.
node --test tests/browser/h2.test.mjs
# The status page on the admin port: log in, watch a drain (saves
# tests/artifacts/status-page.png and status-page-draining.png).
node --test tests/browser/status.test.mjs
# Fuzzing smoke (fuzz/README.md): a few thousand inputs per target, only
# where the nightly toolchain is installed (otherwise one "skipped" line).
scripts/fuzz.sh --smoke
