#!/usr/bin/env bash
# Brings up a single-node wasmkube cluster with the demo objects and leaves it running
# until Ctrl-C. Installs what it needs first.
#   DATA_DIR (default ~/.wasmkube) holds the cluster's state and its kubeconfig.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --bin wasmkube
# The sample modules; the manifests name them under /opt/wasmkube/samples, which needs
# root to write, so the demo is applied with the paths of the fresh build instead.
WASMKUBE_SAMPLES_INSTALL= bash scripts/build-samples.sh >/dev/null
samples="$(pwd)/samples/target/modules"

DATA_DIR=${DATA_DIR:-$HOME/.wasmkube}
mkdir -p "$DATA_DIR"
rm -f "$DATA_DIR/kubeconfig"
./target/debug/wasmkube up --data-dir "$DATA_DIR" 2>"$DATA_DIR/wasmkube.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 300); do
  [ -f "$DATA_DIR/kubeconfig" ] && break
  kill -0 $pid 2>/dev/null || { cat "$DATA_DIR/wasmkube.log" >&2; exit 1; }
  sleep 0.2
done
[ -f "$DATA_DIR/kubeconfig" ] || { echo "wasmkube did not come up; see $DATA_DIR/wasmkube.log" >&2; exit 1; }

export KUBECONFIG="$DATA_DIR/kubeconfig"
sed "s|file:///opt/wasmkube/samples/|file://$samples/|" samples/demo/demo.yaml | kubectl apply -f -
kubectl get nodes
kubectl -n demo rollout status deployment/echo --timeout=60s || true
kubectl -n demo get all,configmaps
echo
echo "The cluster is running. In another shell:"
echo "  export KUBECONFIG=$DATA_DIR/kubeconfig"
echo "  kubectl get all -A"
echo "Logs: $DATA_DIR/wasmkube.log. Press Ctrl-C to stop."
wait $pid
