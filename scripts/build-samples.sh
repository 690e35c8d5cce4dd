#!/usr/bin/env bash
# Builds the sample WASI programs in samples/ (their own Cargo workspace) in release mode:
# the preview 1 samples for wasm32-wasip1 (core modules), the preview 2 ones for
# wasm32-wasip2 (components). Copies every module to samples/target/modules/<name>.wasm
# and, unless WASMKUBE_SAMPLES_INSTALL is set to the empty string, installs them into
# /opt/wasmkube/samples (or the directory WASMKUBE_SAMPLES_INSTALL names), where the
# sample manifests' file:///opt/wasmkube/samples/<name>.wasm images point. Prints the
# modules built. Idempotent: cargo rebuilds only what changed and files are copied only
# when their content differs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
manifest="$root/samples/Cargo.toml"
target_dir="$root/samples/target"
out="$target_dir/modules"

p1=(hello writer reader config-reader crasher memory-hog spinner)
p2=(hello-p2 http-echo udp-echo)

installed_targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

build() {
  local target=$1
  shift
  local pkgs=()
  for p in "$@"; do pkgs+=(-p "$p"); done
  # The samples' own target dir, whatever CARGO_TARGET_DIR the caller uses for the main
  # workspace: the modules' location must be predictable.
  CARGO_TARGET_DIR="$target_dir" cargo build --quiet --release \
    --manifest-path "$manifest" --target "$target" "${pkgs[@]}"
}

# Copies $1 to $2 unless $2 already has the same bytes, so mtimes (and the agent's
# caches keyed on them) stay put when nothing changed.
copy_if_changed() {
  if ! cmp -s "$1" "$2"; then
    install -m 0644 "$1" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
  fi
}

build wasm32-wasip1 "${p1[@]}"
build wasm32-wasip2 "${p2[@]}"

mkdir -p "$out"
for name in "${p1[@]}"; do
  copy_if_changed "$target_dir/wasm32-wasip1/release/$name.wasm" "$out/$name.wasm"
done
for name in "${p2[@]}"; do
  copy_if_changed "$target_dir/wasm32-wasip2/release/$name.wasm" "$out/$name.wasm"
done

install_dir=${WASMKUBE_SAMPLES_INSTALL-/opt/wasmkube/samples}
installed=""
if [ -n "$install_dir" ]; then
  if mkdir -p "$install_dir" 2>/dev/null && [ -w "$install_dir" ]; then
    for name in "${p1[@]}" "${p2[@]}"; do
      copy_if_changed "$out/$name.wasm" "$install_dir/$name.wasm"
    done
    installed=" (installed in $install_dir)"
  else
    echo "note: $install_dir is not writable; modules not installed there" >&2
  fi
fi

echo "sample modules in $out$installed:"
for name in "${p1[@]}" "${p2[@]}"; do
  kind="preview 1"
  [[ " ${p2[*]} " == *" $name "* ]] && kind="preview 2"
  printf '  %-20s %8d bytes  %s\n' "$name.wasm" "$(stat -c %s "$out/$name.wasm")" "$kind"
done
