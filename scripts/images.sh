#!/usr/bin/env bash
# Builds strait's four container images (images/Containerfile) on a machine
# with no container daemon and no registry: the release binaries, minimal root
# filesystems extracted from Debian packages (mmdebstrap), then one buildah
# build per image (vfs storage, chroot isolation). Writes, for each image,
# target/images/<image>-<version>.oci.tar (OCI archive) and .docker.tar
# (docker archive: `podman load`, `kind load image-archive`, `ctr images
# import`), tagged <registry>/<image>:<version>, with version the chart's
# appVersion, and target/images/images.tsv listing each image's reference,
# manifest digest and compressed size.
#
#   scripts/images.sh                 # all four
#   scripts/images.sh --context-only  # only target/images/context, for docker/podman
#   REGISTRY=registry.example.com/strait scripts/images.sh
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/.."

images=(strait-proxy strait-init strait-injector strait-cni)
out=target/images
context=$out/context
registry=${REGISTRY:-ghcr.io/strait-mesh}
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/strait/Chart.yaml)
[[ -n $version ]] || { echo "images: no appVersion in charts/strait/Chart.yaml" >&2; exit 1; }
# As root in a tree another user owns, git would refuse to answer.
git=(git -c safe.directory="$PWD")
revision=$("${git[@]}" rev-parse HEAD 2>/dev/null || echo unknown)
"${git[@]}" diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml)

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    echo "images: missing ${missing[*]}; run scripts/deps.sh (or apt-get install buildah skopeo umoci mmdebstrap libcap2-bin)" >&2
    exit 1
  fi
}
need mmdebstrap setcap python3
. /etc/os-release
if [[ ${ID:-} != debian || -z ${VERSION_CODENAME:-} ]]; then
  echo "images: the base layers are made from the host release's Debian packages; this host is ${PRETTY_NAME:-unknown}, not Debian" >&2
  exit 1
fi
[[ ${1:-} == --context-only ]] || need buildah skopeo
[[ $(id -u) == 0 ]] || { echo "images: run as root (mmdebstrap and buildah write root-owned files)" >&2; exit 1; }

# The whole workspace, as `make demo` and `make bench` build it, optimised
# with the proxy's profile (profile-guided optimisation: scripts/pgo.sh makes
# it, scripts/profile-flags.sh gives the flag). The proxy is built on its own,
# with the features it was profiled with: a profile is found by the names of
# the functions it was taken from, and those name the features their crate
# was built with. Both steps pass the same flags, or the crates they share
# would be rebuilt back and forth on every run; in the first, dependencies
# the proxy also uses but with other features match nothing in the profile
# and compile as without it.
pgo=$(scripts/profile-flags.sh "$PWD" "$PWD/target")
[[ -n $pgo ]] || echo "images: no proxy/pgo/strait-proxy.profdata (scripts/pgo.sh makes it): building without it" >&2
flags=${RUSTFLAGS:+$RUSTFLAGS }$pgo
release() {
  if [[ -n $flags ]]; then
    RUSTFLAGS=$flags cargo build --release --locked "$@"
  else
    cargo build --release --locked "$@"
  fi
}
release --workspace --bins --exclude strait-proxy
release -p strait-proxy --bins
# strait-cni runs on the nodes, under each node's own loader and C library
# (whatever its distribution and glibc): it is linked statically, in a build
# of its own, in the lighter `plugin` profile (Cargo.toml: it runs for
# milliseconds when a pod's network is set up).
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile plugin --locked -p strait-cni --bins --target "$host"

# A root filesystem of Debian packages (with their dependencies) from the
# host's release, so the binaries find the C library they were linked
# against. Only the packages' files: no maintainer scripts, no dpkg, no
# shell unless a package brings one. Rebuilt when the package list or this
# script changes.
base() {
  local name=$1 packages=$2
  local dir=$context/base-$name
  local stamp
  stamp="$VERSION_CODENAME $packages $(sha256sum <"$script")"
  if [[ -f $dir.stamp && $(cat "$dir.stamp") == "$stamp" ]]; then return; fi
  rm -rf "$dir" "$dir.stamp"
  mmdebstrap --quiet --mode=root --variant=extract --include="$packages" \
    "$VERSION_CODENAME" "$dir" "deb http://deb.debian.org/debian $VERSION_CODENAME main"
  # What a container needs none of: device nodes (the runtime makes /dev),
  # apt's state, documentation other than the licences, locales, gconv.
  find "$dir/dev" -mindepth 1 -delete
  rm -rf "$dir"/etc/{apt,dpkg,fstab} "$dir"/var/{cache,lib,log} \
    "$dir"/usr/share/{man,info,locale,lintian,bug,bash-completion} "$dir"/usr/lib/*/gconv
  find "$dir/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
  find "$dir/usr/share/doc" -type l -delete 2>/dev/null || true
  mkdir -p "$dir/tmp" "$dir/etc" "$dir/run" && chmod 1777 "$dir/tmp"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'strait-proxy:x:2102:2102:strait proxy:/nonexistent:/sbin/nologin' \
    'strait-injector:x:2103:2103:strait control plane:/nonexistent:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$dir/etc/passwd"
  printf '%s\n' 'root:x:0:' 'strait-proxy:x:2102:' 'strait-injector:x:2103:' 'nogroup:x:65534:' >"$dir/etc/group"
  : >"$dir/etc/hosts"; : >"$dir/etc/hostname"; : >"$dir/etc/resolv.conf"
  echo "$stamp" >"$dir.stamp"
}

mkdir -p "$context/bin"
base cc libc6,libgcc-s1
base iptables iptables
# The alternatives Debian's postinst would set: plain iptables is the nft
# backend. The xtables binaries get the capabilities strait-init's rules need.
for tool in iptables ip6tables; do
  for suffix in "" -save -restore; do
    ln -sfn "xtables-nft-multi" "$context/base-iptables/usr/sbin/$tool$suffix"
  done
done
rm -f "$context/base-iptables/usr/sbin/iptables-apply" "$context/base-iptables/usr/sbin/ip6tables-apply"
setcap cap_net_admin,cap_net_raw+ep "$context/base-iptables/usr/sbin/xtables-nft-multi"
setcap cap_net_admin,cap_net_raw+ep "$context/base-iptables/usr/sbin/xtables-legacy-multi"

for image in strait-proxy strait-init strait-injector; do
  install -m 0755 "target/release/$image" "$context/bin/$image"
done
install -m 0755 "target/$host/plugin/strait-cni" "$context/bin/strait-cni"
# strait-init needs the capabilities itself: with no_new_privs, a program it
# runs gets no more than it holds.
setcap cap_net_admin,cap_net_raw+ep "$context/bin/strait-init"
cp LICENSE "$context/LICENSE"

if [[ ${1:-} == --context-only ]]; then
  echo "images: context ready in $context"
  exit 0
fi

# buildah keeps its storage under target/, so the host's is left alone and
# `cargo clean` removes it.
storage=(--root "$PWD/$out/storage" --runroot "$PWD/$out/run" --storage-driver vfs)
printf 'image\treference\tdigest\tcompressed_bytes\n' >"$out/images.tsv"
for image in "${images[@]}"; do
  reference="$registry/$image:$version"
  buildah "${storage[@]}" build --quiet --isolation chroot --timestamp 0 --layers=false \
    --target "$image" -f images/Containerfile -t "$reference" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
    "$context" >/dev/null
  rm -f "$out/$image-$version.oci.tar" "$out/$image-$version.docker.tar"
  buildah "${storage[@]}" push --quiet --disable-compression=false "$reference" \
    "oci-archive:$out/$image-$version.oci.tar:$reference"
  buildah "${storage[@]}" push --quiet "$reference" "docker-archive:$out/$image-$version.docker.tar:$reference"
  buildah "${storage[@]}" rmi "$reference" >/dev/null
  digest=$(skopeo inspect --format '{{.Digest}}' "oci-archive:$out/$image-$version.oci.tar")
  compressed=$(skopeo inspect --raw "oci-archive:$out/$image-$version.oci.tar" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')
  printf '%s\t%s\t%s\t%s\n' "$image" "$reference" "$digest" "$compressed" >>"$out/images.tsv"
done
cat "$out/images.tsv"
