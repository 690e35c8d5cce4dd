#!/usr/bin/env bash
# The whole test suite, from a fresh machine: dependencies, formatting and lints, one
# build, then every test (unit tests against a real etcd, end-to-end tests with the real
# binary, etcd, kubectl and the Python client).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
cargo test --workspace -- --test-threads=4
