"""Spans and metrics of library calls go through the application's own OpenTelemetry providers
when it installed some: the request span is a child of the application's current span, and the
request counter is read by the application's metric reader. Run in a child process, since global
providers can be set once per process."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.sidecar_harness import one_model_config

APPLICATION = """
import asyncio, json, sys

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import switchpoint

spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


async def main() -> None:
    config = json.loads(sys.argv[1])
    async with switchpoint.Router.from_config(config, environ={"K": sys.argv[2]}) as router:
        with trace.get_tracer("app").start_as_current_span("app.handler") as handler:
            await router.chat([{"role": "user", "content": "hello"}], max_tokens=5)
            trace_id = handler.get_span_context().trace_id
    names = [
        metric.name
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    ]
    print(json.dumps({
        "spans": {s.name: s.context.trace_id == trace_id for s in spans.get_finished_spans()},
        "metrics": names,
    }))


asyncio.run(main())
"""


async def test_library_calls_are_traced_and_counted_by_the_applications_providers(
    openai_server: OpenAIServer,
) -> None:
    config = one_model_config(openai_server.base_url, api_key_env="K")
    # No exporter of the config's own: without the application's providers no span is recorded.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        APPLICATION,
        json.dumps(config),
        OPENAI_TEST_KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert child.returncode == 0, err.decode()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    # Every switchpoint span of the call is in the application's trace.
    assert seen["spans"]["switchpoint.request"] is True
    assert seen["spans"]["switchpoint.provider.call"] is True
    assert seen["spans"]["app.handler"] is True
    assert "switchpoint.requests" in seen["metrics"]
    assert "switchpoint.tokens" in seen["metrics"]
