"""What every RPC leaves behind: the root span (continuing the caller's W3C trace context), the
request and overhead metrics, and the one structured log line. The servicers wrap each call in
`RequestObserver.observe` and report the result or the failure on the observation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import Token
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from switchpoint._native import Routed
from switchpoint.engine.calls import ChatResult
from switchpoint.instruments import MetricsSink, NullMetrics, records_spans
from switchpoint.limits import shown
from switchpoint.request import ChatInput
from switchpoint.request_log import RequestLog
from switchpoint.routing import Decision
from switchpoint.splits.assign import Assignment
from switchpoint.splits.book import SplitBook
from switchpoint.telemetry import SPAN_REQUEST, Telemetry

# The outcome of a call its client abandoned: no status was sent, so no status code names it.
CANCELLED = "cancelled"


@dataclass(slots=True)
class Observation:
    """Filled in by the RPC handler as the call goes."""

    span: Span
    decision: Decision | None = None
    result: ChatResult | None = None
    # The request's place in an A/B split, set by the handler when a split takes it.
    split: Assignment | None = None
    outcome: str = "ok"
    # Time the call spent waiting on providers, backoffs and queues: not switchpoint's overhead.
    waited_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def ended_by(self, exc: BaseException | None) -> None:
        """The call's handler ended with `exc`: a cancellation means the client went away
        (cancelled, or its deadline passed) before an answer or a status, which is not "ok"."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.outcome = CANCELLED

    def failed(self, code: grpc.StatusCode, message: str) -> None:
        self.outcome = code.name.lower()
        self.span.set_status(Status(StatusCode.ERROR, message[:200]))
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])


# What a call is observed from: a gRPC call's context, an HTTP call's headers as metadata, or
# None for an in-process library call (its parent is the caller's current trace context).
Caller = grpc.aio.ServicerContext[object, object] | Sequence[tuple[str, str]] | None


class RequestObserver:
    def __init__(self, telemetry: Telemetry | None, request_log: RequestLog) -> None:
        self._telemetry = telemetry
        self._tracer: Tracer = telemetry.tracer if telemetry else trace.NoOpTracer()
        self._records_spans = records_spans(self._tracer)
        self._metrics: MetricsSink = telemetry.metrics if telemetry else NullMetrics()
        # Where the Rust router counts and times the Route calls it answers alone (`routed`).
        self.route_tally = telemetry.metrics.route_tally if telemetry else None
        self._request_log = request_log
        # What each split's arms served, across config reloads (GetStats reads it).
        self.splits = SplitBook()

    def observe(
        self,
        rpc: str,
        context: Caller,
        request: ChatInput,
        *,
        calls_providers: bool = True,
    ) -> AbstractContextManager[Observation]:
        if not self._records_spans:
            # No span is recorded. A call that reaches providers still carries the caller's trace
            # context on, so that is attached; a no-op root span would carry it unchanged, and
            # building one (with its context swaps) costs a Chat CPU for nothing. Without providers
            # nothing reads the context, so a Route call skips extracting and attaching it.
            parent = self._parent(context) if calls_providers else None
            return _Unspanned(self, rpc, request, parent)
        return self._spanned(rpc, context, request)

    def _parent(self, context: Caller) -> otel_context.Context:
        """The caller's trace context (W3C `traceparent`, baggage) from the call's metadata."""
        if self._telemetry is None or context is None:
            return otel_context.get_current()
        if isinstance(context, Sequence):
            return self._telemetry.extract(context)
        return self._telemetry.extract(context.invocation_metadata() or ())

    @contextmanager
    def _spanned(self, rpc: str, context: Caller, request: ChatInput) -> Iterator[Observation]:
        # Attached (not only passed as the parent) so incoming baggage follows outgoing calls.
        token = otel_context.attach(self._parent(context))
        try:
            with self._tracer.start_as_current_span(
                SPAN_REQUEST,
                kind=trace.SpanKind.SERVER,
                attributes={
                    "rpc.system": _system(context),
                    "rpc.service": "switchpoint.v1.Router",
                    "rpc.method": rpc,
                    "switchpoint.request_id": shown(request.request_id),
                    "switchpoint.tenant": shown(request.routing.tenant),
                    "switchpoint.stage": shown(request.routing.stage),
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                observation = Observation(span)
                try:
                    yield observation
                except BaseException as exc:
                    observation.ended_by(exc)
                    raise
                finally:
                    self._finish(rpc, request, observation)
        finally:
            otel_context.detach(token)

    @property
    def light(self) -> bool:
        """Nothing is recorded of a request but its tenant, stage, model and prompt size: no span,
        no prompt in the log. A Route call can then be observed without its `ChatInput`: its
        metrics by the Rust router (`route_tally`), its log line by `routed`."""
        return not self._records_spans and not self._request_log.logs_prompts

    @property
    def logs_requests(self) -> bool:
        return self._request_log.enabled

    def routed(self, routed: Routed, elapsed_s: float, *, split: Assignment | None = None) -> None:
        """The log line of a Route call answered from its bytes (see `light`), and its split's
        figures; its other metrics are the router's (`route_tally`)."""
        arm = self._count_split(split, "ok", None) if split is not None else ""
        if not self._request_log.enabled:
            return
        self._request_log.add(
            request_id=shown(routed.request_id),
            rpc="Route",
            tenant=routed.tenant,
            stage=routed.stage,
            model=routed.model,
            outcome="ok",
            latency_ms=elapsed_s * 1000.0,
            cost_usd=0.0,
            attempts=0,
            prompt=routed.prompt_chars,
            choice_probability=routed.choice_probability,
            split=arm,
        )

    def _finish(self, rpc: str, request: ChatInput, observation: Observation) -> None:
        elapsed_s = time.perf_counter() - observation.started
        result, decision = observation.result, observation.decision
        model = result.model if result else decision.chosen.name if decision else ""
        waited_s = result.waited_s if result else observation.waited_s
        self._metrics.routing_overhead(rpc=rpc, seconds=max(elapsed_s - waited_s, 0.0))
        # A refused request's strings may be of any length: shown cut, like in its error.
        tenant, stage = shown(request.routing.tenant), shown(request.routing.stage)
        self._metrics.request(model=model, outcome=observation.outcome, tenant=tenant, stage=stage)
        split = observation.split
        arm = (
            self._count_split(split, observation.outcome, observation.result)
            if split is not None
            else ""
        )
        self._request_log.add(
            request_id=shown(request.request_id),
            rpc=rpc,
            tenant=tenant,
            stage=stage,
            model=model,
            outcome=observation.outcome,
            latency_ms=elapsed_s * 1000.0,
            cost_usd=result.cost_usd if result else 0.0,
            attempts=len(result.attempts) if result else 0,
            prompt=request.messages,  # (role, content) pairs already
            choice_probability=decision.choice_probability if decision else 1.0,
            split=arm,
        )

    def _count_split(self, split: Assignment, outcome: str, result: ChatResult | None) -> str:
        """The request in its arm's figures; its "SPLIT/ARM" for the log line ("" when the
        split did not apply)."""
        if not split.applied:
            return ""
        cost = result.cost_usd if result else 0.0
        self.splits.record(
            split,
            ok=outcome == "ok",
            input_tokens=result.input_tokens if result else 0,
            output_tokens=result.output_tokens if result else 0,
            cost_usd=cost,
        )
        self._metrics.split(split=split.split, arm=split.arm, outcome=outcome, usd=cost)
        return f"{split.split}/{split.arm}"


def _system(context: Caller) -> str:
    """An HTTP call is observed from its headers (a sequence), a gRPC call from its context, a
    library call from nothing."""
    if context is None:
        return "in-process"
    return "http" if isinstance(context, Sequence) else "grpc"


class _Unspanned:
    """`observe` without a span, as a plain context manager (a generator-based one costs a call
    a few microseconds more); with `parent`, that trace context is current inside the block."""

    __slots__ = ("_observation", "_observer", "_parent", "_request", "_rpc", "_token")

    def __init__(
        self,
        observer: RequestObserver,
        rpc: str,
        request: ChatInput,
        parent: otel_context.Context | None,
    ) -> None:
        self._observer = observer
        self._rpc = rpc
        self._request = request
        self._parent = parent
        self._token: Token[otel_context.Context] | None = None
        self._observation = Observation(trace.INVALID_SPAN)

    def __enter__(self) -> Observation:
        if self._parent is not None:
            self._token = otel_context.attach(self._parent)
            self._observation.span = trace.get_current_span()
        return self._observation

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._observation.ended_by(exc)
        try:
            self._observer._finish(self._rpc, self._request, self._observation)
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
