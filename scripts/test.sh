#!/usr/bin/env bash
# The whole test suite, from a fresh machine: dependencies, the sample modules,
# formatting and lints, one build, then every test (unit tests against a real etcd and
# a real OCI registry, end-to-end tests with the real binary, etcd, kubectl, node agents
# running the samples, and the Python client).
set -euo pipefail
cd "$(dirname "$0")/.."
# A CI run builds once in a fresh clone: incremental state (half of target/, ~8 GB) would
# only be written, never reused, and a full disk makes etcd die at start in every test.
[ -z "${CI:-}" ] || export CARGO_INCREMENTAL=0

bash scripts/deps.sh
# The sample WASI modules the end-to-end tests run as pods.
WASMKUBE_SAMPLES_INSTALL= bash scripts/build-samples.sh >/dev/null

cargo fmt --all -- --check
cargo fmt --manifest-path samples/Cargo.toml --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
cargo test --workspace -- --test-threads=4
# The samples' own unit tests (their toolbox commands), built for the host.
cargo test --manifest-path samples/Cargo.toml --workspace
