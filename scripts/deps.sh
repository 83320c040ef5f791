#!/usr/bin/env bash
# Installs what the lab, the tests and the benchmarks need from Debian,
# PyPI and npm, once; later runs only check.
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
