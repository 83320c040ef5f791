#!/usr/bin/env bash
# Builds strait-proxy (release) at another git revision, for the bench's
# same-run A/B (`strait-bench run --baseline <binary>`): a worktree of that
# revision, built into a target directory of its own so this tree's build
# stays as it is. Prints the binary's path.
#
#   scripts/baseline.sh origin/main
#   target/release/strait-bench run --only baseline --baseline "$(scripts/baseline.sh main)"
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
rev=${1:?usage: scripts/baseline.sh <git revision>}
git=(git -c safe.directory="$PWD")
commit=$("${git[@]}" rev-parse --verify "$rev^{commit}")
tree=target/baseline/src-$commit
out=target/baseline/strait-proxy-$commit
if [[ ! -x $out ]]; then
  [[ -d $tree ]] || "${git[@]}" worktree add --detach "$tree" "$commit" >&2
  # With the profile that revision has, as scripts/images.sh builds it, so
  # an A/B between revisions does not count profile-guided optimisation as
  # part of the change.
  pgo=$(scripts/profile-flags.sh "$tree" "$PWD/target/baseline/target")
  RUSTFLAGS=${RUSTFLAGS:+$RUSTFLAGS }$pgo CARGO_TARGET_DIR=$PWD/target/baseline/target \
    cargo build --release --locked -p strait-proxy --manifest-path "$tree/Cargo.toml" >&2
  cp target/baseline/target/release/strait-proxy "$out"
  "${git[@]}" worktree remove --force "$tree" >&2
fi
realpath "$out"
