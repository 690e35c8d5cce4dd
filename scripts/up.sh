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
kubectl get nodes -o wide
kubectl -n demo rollout status deployment/echo --timeout=120s
kubectl -n demo rollout status deployment/udp-echo --timeout=120s
kubectl -n demo get pods -o wide
kubectl -n demo get services

# One request through the Service's ClusterIP (the node's proxy forwards it to one of
# the ready replicas; a repeat usually lands on another), and one UDP datagram.
ip=$(kubectl -n demo get service echo -o jsonpath='{.spec.clusterIP}')
echo
echo "$ curl http://$ip/"
answered=
for _ in $(seq 1 50); do
  if curl -s --max-time 2 "http://$ip/"; then answered=1; break; fi
  sleep 0.2
done
[ -n "$answered" ] || echo "(no answer yet from http://$ip/; see $DATA_DIR/wasmkube.log)"
udp_ip=$(kubectl -n demo get service udp-echo -o jsonpath='{.spec.clusterIP}')
if command -v python3 >/dev/null; then
  echo
  echo "UDP echo through $udp_ip:9090:"
  python3 - "$udp_ip" <<'PY' || true
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for attempt in range(10):
    s.sendto(b"hello over UDP", (sys.argv[1], 9090))
    try:
        print("  " + s.recvfrom(2048)[0].decode(errors="replace").strip())
        break
    except socket.timeout:
        continue
PY
fi
echo
echo "The cluster is running. In another shell:"
echo "  export KUBECONFIG=$DATA_DIR/kubeconfig"
echo "  kubectl get all -A"
echo "  curl http://$ip/                      # the echo Service"
echo "  kubectl -n demo exec deploy/echo -- env     # runs the pod's module with argv env"
echo "  kubectl -n demo exec deploy/echo -- get http://echo/   # a pod calls the Service by name"
echo "  kubectl -n demo exec deploy/echo -- udp udp-echo:9090 hi"
echo "  kubectl -n demo port-forward deploy/echo 8080:8080"
echo "  kubectl -n demo logs -l app=echo"
echo "Logs: $DATA_DIR/wasmkube.log. Press Ctrl-C to stop everything."
wait $pid
