#!/usr/bin/env bash
# Installs what the lab, the tests and the benchmarks need from Debian, npm
# and PyPI, once; later runs only check.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in ip iptables iptables-legacy nsenter setsid setpriv tcpdump h2load promtool prometheus curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "deps: installing Debian packages for: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q iproute2 iptables util-linux tcpdump nghttp2-client prometheus curl procps >/dev/null
fi

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
