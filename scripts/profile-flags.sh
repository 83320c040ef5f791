#!/usr/bin/env bash
# Prints the rustc flag that optimises a release build of <tree> with the
# proxy's profile (profile-guided: scripts/pgo.sh makes it), or nothing when
# <tree> has none. The profile is copied under <target dir>/pgo-use to a path
# named by its content, so a new profile is a new flag: cargo rebuilds, and
# rustc's incremental cache, which knows the profile only by its path, cannot
# hand back code optimised with the old one.
#
#   scripts/profile-flags.sh <tree> <target dir>
set -euo pipefail
tree=${1:?usage: scripts/profile-flags.sh <tree> <target dir>}
target=${2:?usage: scripts/profile-flags.sh <tree> <target dir>}
profile=$tree/proxy/pgo/strait-proxy.profdata
[[ -f $profile ]] || exit 0
sum=$(sha256sum "$profile" | cut -c1-16)
copy=$target/pgo-use/strait-proxy-$sum.profdata
if [[ ! -f $copy ]]; then
  mkdir -p "$target/pgo-use"
  cp "$profile" "$copy.partial"
  mv "$copy.partial" "$copy"
fi
echo "-C profile-use=$(realpath "$copy")"
