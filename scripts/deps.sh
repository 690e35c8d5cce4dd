#!/usr/bin/env bash
# Installs what building and testing wasmkube needs on a fresh Debian machine: etcd (the
# control plane's store), protoc (etcd-client's build), and the Python Kubernetes client
# (the e2e tests prove the official client works). Safe to run repeatedly: only what is
# missing is installed.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v kubectl >/dev/null 2>&1 || echo "warning: kubectl is not installed; the e2e tests need it" >&2
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on the default ports; wasmkube never
# uses it (it runs its own on free ports), so keep it from holding 2379/2380.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd >/dev/null 2>&1 || true
fi

if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  echo "installing the Python kubernetes client" >&2
  python3 -m pip install -q kubernetes
fi
