#!/usr/bin/env bash
# Runs the benchmarks (release builds) after installing what they need.
#
#   scripts/bench.sh [--install-only] [NAME…]
#
# NAME is a bench in benches/ (apiserver, scheduler, agent, proxy); without one, every
# bench runs, one after the other. Each bench reads its own knobs from the environment
# (see its module docs), e.g. `WASMKUBE_PROXY_BENCH_SECONDS=10 scripts/bench.sh proxy`.
#
# What is installed (only what is missing; safe to run again): the build and test
# dependencies (scripts/deps.sh: etcd, protoc, …) and, for the proxy bench, the
# reference tools from Debian's packages: haproxy (the userspace proxy it is compared
# with), iperf3 (bulk TCP and UDP), wrk and nginx (HTTP request/response). The system
# services these packages start are stopped: the bench runs its own instances on free
# ports, and idle daemons would only add noise on a small machine.
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=0
names=()
for arg in "$@"; do
  case "$arg" in
    --install-only) install_only=1 ;;
    -h | --help)
      sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "unknown option: $arg" >&2
      exit 2
      ;;
    *) names+=("$arg") ;;
  esac
done

if [ ${#names[@]} -eq 0 ]; then
  for f in benches/*.rs; do
    names+=("$(basename "$f" .rs)")
  done
fi
for n in "${names[@]}"; do
  if [ ! -f "benches/$n.rs" ]; then
    echo "error: no bench named $n (benches/$n.rs)" >&2
    exit 2
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

as_root() {
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "error: not root and no sudo; cannot run: $*" >&2
    return 1
  fi
  $SUDO "$@"
}

bash scripts/deps.sh

# The first of the given packages that Debian offers (a candidate version exists).
first_available() {
  local p c
  for p in "$@"; do
    c=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -n "$c" ] && [ "$c" != "(none)" ]; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  pkgs=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      # The smallest nginx build serves static files, which is all the bench needs.
      nginx) p=$(first_available nginx-light nginx) || p="" ;;
      *) p=$(first_available "$tool") || p="" ;;
    esac
    if [ -z "$p" ]; then
      echo "warning: no Debian package provides $tool; the proxy bench skips its rows" >&2
    else
      pkgs+=("$p")
    fi
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing: ${pkgs[*]}" >&2
    # iperf3 asks whether to run a system-wide server; it must not.
    echo "iperf3 iperf3/start_daemon boolean false" | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
fi

# Stops a system service these packages may have started (systemd, or a SysV script
# where no systemd runs, as in containers).
stop_service() {
  local svc=$1
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      as_root systemctl stop "$svc" >/dev/null 2>&1 || true
    fi
  elif [ -x "/etc/init.d/$svc" ]; then
    if "/etc/init.d/$svc" status >/dev/null 2>&1; then
      as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  fi
}
for svc in nginx haproxy iperf3; do
  stop_service "$svc"
done

if [ "$install_only" -eq 1 ]; then
  exit 0
fi

# Many idle connections need file descriptors: take the whole hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for n in "${names[@]}"; do
  echo "=== cargo bench --bench $n" >&2
  cargo bench --bench "$n"
done
