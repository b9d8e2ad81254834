# Cyclotron: the README's commands. Every target that needs the toolchain, torch or data runs setup first.
SHELL := /bin/bash
ENV := . scripts/env.sh &&
BIN := bin/cyclotron

.PHONY: setup build demo quick test lint unit bench clean

setup:
	@scripts/setup.sh

build: setup
	@$(ENV) cargo build --release -p cyclotron
	@mkdir -p bin && $(ENV) ln -sf "$$CARGO_TARGET_DIR/release/cyclotron" $(BIN)

## the main job on a local cluster (a coordinator and 2 worker processes, data-parallel):
## Fashion-MNIST, lr_find → SGDR with snapshots → ensemble (results and logs in runs/demo/)
demo: build
	$(BIN) local --workers 2 examples/fashion_mnist.toml --out runs/demo

## the small version of the demo (under two minutes on 2 cores)
quick: build
	$(BIN) train examples/quick.toml --out runs/quick

lint: setup
	@$(ENV) cargo fmt --all -- --check
	@$(ENV) cargo clippy --release --workspace --all-targets -- -D warnings
	@# the GPU path must keep compiling on CPU-only machines (NCCL is loaded at run time)
	@$(ENV) cargo check --release -p cyclotron-worker --features nccl

## unit tests of every crate, then the end-to-end tests in tests/ that spawn the built binary
unit: setup
	@$(ENV) cargo build --release -p cyclotron
	@$(ENV) cargo nextest run --release --workspace --no-fail-fast

test: lint unit

## every benchmark against its peer (see scripts/bench.sh; on a quiet machine: the figures are ratios)
bench: setup
	@scripts/bench.sh

clean:
	@$(ENV) cargo clean
	rm -rf bin runs
