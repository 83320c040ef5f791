# The two commands a newcomer needs: `make demo` and `make test`.
# Both must run as root (the lab makes network namespaces and iptables rules).

.PHONY: demo test bench check deps

# Builds everything and runs the guided demo on the lab.
demo: deps
	cargo build --release --workspace --bins
	target/release/strait-lab demo

# Formatting, lints, then every test (unit, golden, in-process, and on the lab).
test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo nextest run --workspace --no-fail-fast

# The benchmarks (not part of the tests): see bench/README.md.
bench: deps
	cargo build --release --workspace --bins
	target/release/strait-bench run

# What the lab and the tests need from the system.
deps:
	@./scripts/deps.sh
