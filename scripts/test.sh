#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, unit tests, end-to-end tests
# with real processes on loopback, Python interop tests, browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests start these binaries as real processes.
cargo build --workspace --bins
cargo test --workspace
python3 -m pytest -q tests/python
# Headless Chromium through wsgate over wss (saves tests/artifacts/chat-browser.png).
node --test tests/browser/chat.test.mjs
