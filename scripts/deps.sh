#!/usr/bin/env bash
# Installs what building and testing wasmkube needs on a fresh Debian machine: etcd (the
# control plane's store), protoc (etcd-client's build), an OCI registry (module pulls in
# the tests), iproute2 (network namespaces for the two-node Service test), curl, the
# WebAssembly targets the samples are built for, and the Python Kubernetes client (the
# e2e tests prove the official client works). Safe to run repeatedly: only what is
# missing is installed.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v kubectl >/dev/null 2>&1 || echo "warning: kubectl is not installed; the e2e tests need it" >&2
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's etcd-server and docker-registry packages start system services on default
# ports; wasmkube never uses them (it and its tests run their own on free ports), so keep
# them from holding 2379/2380 and 5000.
if command -v systemctl >/dev/null 2>&1; then
  for svc in etcd docker-registry; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

# The samples are Rust programs built for WASI preview 1 (core modules) and preview 2
# (components).
installed_targets=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  echo "installing the Python kubernetes client" >&2
  python3 -m pip install -q kubernetes
fi
