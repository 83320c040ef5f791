#!/usr/bin/env bash
# Installs what the lab, the tests and the benchmarks need from Debian, npm
# and PyPI, once; later runs only check.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in ip iptables iptables-legacy nsenter setsid setpriv tcpdump h2load promtool prometheus curl haproxy nginx iperf3 \
  buildah skopeo umoci mmdebstrap setcap ncat perf; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
# The benchmark report's plots draw their text with DejaVu.
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
# The lab's pods get their network from the CNI project's plugins.
for plugin in bridge host-local loopback; do
  [[ -x /usr/lib/cni/$plugin ]] || missing+=("cni-$plugin")
done
if ((${#missing[@]})); then
  echo "deps: installing Debian packages for: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # buildah, skopeo, umoci, mmdebstrap and setcap build strait's images
  # (scripts/images.sh); the lab pulls and unpacks them with skopeo and umoci.
  # containernetworking-plugins wire the lab's pods (bridge, host-local, loopback).
  # linux-perf samples the proxy for the benchmark's profile scenario.
  apt-get install -y -q iproute2 iptables util-linux tcpdump nghttp2-client prometheus curl procps \
    haproxy nginx iperf3 fonts-dejavu-core buildah skopeo umoci mmdebstrap libcap2-bin ncat python3-venv \
    containernetworking-plugins linux-perf >/dev/null
fi
# The packaged services must not run on the host: the lab starts its own.
for service in haproxy nginx iperf3; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  fi
done

# helm renders the control plane's chart for the lab and the chart tests.
if [[ ! -x .tools/bin/helm ]]; then
  installer=../shared/tools/install-helm.sh
  [[ -x $installer ]] || { echo "deps: $installer is missing; it installs helm" >&2; exit 1; }
  command -v npm >/dev/null || apt-get install -y -q npm >/dev/null
  "$installer" .tools/bin >/dev/null
fi

# kubernetes-validate checks rendered and injected objects against the
# Kubernetes schemas.
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install -q --root-user-action=ignore kubernetes-validate >/dev/null
fi

# The real-world case peers (tests/cases: raw HTTP/1, grpcio, TCP resets)
# where the case manifests run them, with a venv holding grpcio.
cases=/opt/strait-cases
mkdir -p "$cases"
cp tests/cases/*.py "$cases"/
if ! "$cases/venv/bin/python" -c 'import grpc' 2>/dev/null; then
  python3 -c 'import ensurepip' 2>/dev/null || apt-get install -y -q python3-venv >/dev/null
  python3 -m venv "$cases/venv"
  "$cases/venv/bin/pip" install -q grpcio
fi
