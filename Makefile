# The two commands a newcomer needs: `make demo` and `make test`.
# Both must run as root (the lab makes network namespaces and iptables rules).

.PHONY: demo test bench images fuzz check deps

# Builds everything and runs the guided demo on the lab.
demo: deps images
	target/release/strait-lab demo

# Formatting, lints, a short run of every fuzz target, then every test
# (unit, golden, in-process, and on the lab, which runs strait's containers
# from the images).
test: deps images
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	./scripts/fuzz.sh 20
	cargo nextest run --workspace --no-fail-fast

# The benchmarks (not part of the tests): see bench/README.md. The report's
# before/after table measures this build's proxy against BENCH_BASELINE's in
# the same run: by default the proxy before the lean data path (issue 19);
# `make bench BENCH_BASELINE=main` compares with another revision.
BENCH_BASELINE ?= f2b1705
bench: deps images
	target/release/strait-bench run --baseline "$$(scripts/baseline.sh $(BENCH_BASELINE))"

# strait's container images (proxy, init, injector, cni), built with buildah and
# no daemon into target/images/ as OCI and docker archives: see images/.
images: deps
	./scripts/images.sh

# Longer fuzzing: `make fuzz FUZZ_SECONDS=600` runs each target for ten minutes.
FUZZ_SECONDS ?= 300
fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# What the lab and the tests need from the system.
deps:
	@./scripts/deps.sh
