#!/usr/bin/env bash
# Makes strait-proxy's profile for profile-guided optimisation,
# proxy/pgo/strait-proxy.profdata, which scripts/images.sh builds the release
# binaries with. Run it as root (the bench runs a lab) after changing the
# proxy's hot path: a stale profile still builds (rustc may warn of the
# functions whose code changed), but those functions lose their profile and
# compile as without one.
#
#   1. builds strait-proxy with -C profile-generate into target/pgo;
#   2. runs it as the bench's baseline pair (mutual TLS, gRPC unary, closed
#      loop: 1 connection x 100 streams and 64 connections x 2 streams), its
#      two proxies each writing a raw profile as they exit;
#   3. merges the two, leaving out what never ran (--sparse), so code the
#      training load does not reach (HTTP/1, opaque TCP) is not taken for
#      cold and compiles as without a profile.
#
# llvm-profdata comes from Debian's llvm-19; a rustc whose LLVM writes a raw
# profile format it cannot read makes step 3 fail, saying so.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "pgo: run as root (the bench runs a lab)" >&2; exit 1; }
llvm_profdata=/usr/lib/llvm-19/bin/llvm-profdata
if [[ ! -x $llvm_profdata ]]; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q llvm-19 >&2
fi

# The bench and the lab's images, as `make bench` builds them.
make images
# strait-proxy alone, with its own features, as scripts/images.sh builds it.
# (Build scripts and proc macros run instrumented too; their profiles land
# in target/pgo/build-profiles and are not used.)
CARGO_TARGET_DIR=$PWD/target/pgo RUSTFLAGS="-C profile-generate=$PWD/target/pgo/build-profiles" \
  cargo build --release --locked -p strait-proxy --bins
raw=$PWD/target/pgo/profiles
rm -rf "$raw"
target/release/strait-bench run --quick --only baseline --out target/pgo/report \
  --baseline target/pgo/release/strait-proxy --baseline-profiles "$raw"
shopt -s nullglob
profiles=("$raw"/*.profraw)
if ((${#profiles[@]} != 2)); then
  echo "pgo: expected a profile from each of the 2 baseline proxies in $raw, found ${#profiles[@]}" >&2
  exit 1
fi
mkdir -p proxy/pgo
"$llvm_profdata" merge --sparse -o proxy/pgo/strait-proxy.profdata "${profiles[@]}"
"$llvm_profdata" show proxy/pgo/strait-proxy.profdata | sed -n 's/^/pgo: /p' >&2
# This tree's binaries and images, now with the new profile.
make images
