#!/usr/bin/env bash
# The one entry point for the peer tests: install the real peer libraries (PyPI, npm), lint the
# peer test target, run it. Exits non-zero, naming what is missing, if a peer cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/peers/setup.sh
cargo clippy -p advisory-tests --test peers -- -D warnings
cargo test -p advisory-tests --test peers -- "$@"
