# The two commands a newcomer needs:
#   make demo   set up, start a throwaway etcd on 127.0.0.1, take backups into a local store, list them
#   make test   the whole test suite (format, lints, unit and integration tests on real etcd)
.PHONY: deps build demo test lint bench

deps:
	bash scripts/install-deps.sh

build: deps
	cargo build --release --locked

demo:
	bash scripts/install-deps.sh demo
	bash scripts/demo.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

test: deps lint
	cargo test --locked --all-targets --no-fail-fast

bench: deps
	bash scripts/bench.sh
