"""Evaluation hooks through a real gRPC server to a loopback OpenAI server: a hook that scores
(its scores become outcomes), one that vetoes (the call escalates), one that raises, one that hangs
(the answer still arrives, the hook's failure is logged and counted), and what ChatStream does."""

from __future__ import annotations

from typing import Any

import pytest

from switchpoint.engine.path import Engine
from switchpoint.providers.base import ChatMessage
from switchpoint.v1 import router_pb2 as pb
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import ok
from tests.sidecar_harness import running_sidecar, user
from tests.support.evaluation_hooks import (
    PATH,
    BadScore,
    HangsInThread,
    HangsOnLoop,
    RecordedOutcome,
    RecordingOutcomes,
    Rendezvous,
    Scorer,
)
from tests.support.log_records import recorded
from tests.support.waiting import wait_until
from tests.test_cascade_rpc import KEYS, cascade_config

# Far longer than any answer here takes, so a test never races a budget: a hook that needs its
# budget to end is one that hangs.
PATIENT_MS = 10_000


def _hook(name: str, **fields: Any) -> dict[str, Any]:
    return {"path": f"{PATH}:{name}", "name": name.lower(), "timeout_ms": PATIENT_MS, **fields}


def _chat(text: str, stage: str = "ranked", tenant: str = "") -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text), routing=pb.RoutingOptions(stage=stage, tenant=tenant)
    )


def _failures(engine: Engine) -> dict[tuple[str, str, str], int]:
    return dict(engine.evaluation.runner.failures)


async def test_a_scoring_hook_records_outcomes(openai_server: OpenAIServer) -> None:
    config = cascade_config(
        openai_server.base_url, hooks=[_hook("Scorer", options={"score": 0.25, "final": 0.75})]
    )
    openai_server.script.push(ok("Paris."))
    outcomes = RecordingOutcomes()
    async with running_sidecar(config, KEYS) as sidecar:
        sidecar.sidecar.engine.outcomes = outcomes
        reply = await sidecar.stub.Chat(_chat("capital of France?"))
        failures = _failures(sidecar.sidecar.engine)
    asked = (ChatMessage("user", "capital of France?"),)
    assert outcomes.outcomes == [
        RecordedOutcome(asked, "large", 0.25, ""),  # after the attempt
        RecordedOutcome(asked, "large", 0.75, ""),  # after the response
    ]
    scorer = Scorer.latest()
    assert [e.request_id for e in scorer.routed] == [reply.request_id]
    assert scorer.routed[0].candidates == ("large", "medium", "small")
    assert [(e.model, e.content, e.tier) for e in scorer.answered] == [("large", "Paris.", 1)]
    assert [(e.model, e.rejected) for e in scorer.responded] == [("large", False)]
    assert failures == {}


async def test_a_veto_escalates_to_the_next_model(openai_server: OpenAIServer) -> None:
    veto = _hook("Veto", options={"model": "small", "reason": "too terse"})
    config = cascade_config(openai_server.base_url, hooks=[veto])
    openai_server.script.push(ok("Yes."), ok("Yes, because the sky scatters blue light."))
    outcomes = RecordingOutcomes()
    async with running_sidecar(config, KEYS) as sidecar:
        sidecar.sidecar.engine.outcomes = outcomes
        reply = await sidecar.stub.Chat(_chat("is the sky blue?", stage="tiers", tenant="t1"))
    assert (reply.model, reply.content) == ("medium", "Yes, because the sky scatters blue light.")
    assert [(a.model, a.error_class, a.error_message) for a in reply.attempts] == [
        ("small", "rejected", "vetoed by hook 'veto': too terse"),
        ("medium", "", ""),
    ]
    # The veto's score is an outcome too: the small model got this prompt wrong.
    assert [(o.model, o.score, o.tenant) for o in outcomes.outcomes] == [("small", 0.0, "t1")]


async def test_a_veto_escalates_along_the_ranked_chain_too(openai_server: OpenAIServer) -> None:
    config = cascade_config(
        openai_server.base_url, hooks=[_hook("Veto", options={"model": "large", "reason": "no"})]
    )
    async with running_sidecar(config, KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything"))
    assert [(a.model, a.error_class) for a in reply.attempts] == [
        ("large", "rejected"),
        ("medium", ""),
    ]


@pytest.mark.parametrize(("hook", "kind"), [("Raises", "error"), ("BadScore", "bad_verdict")])
async def test_a_failing_hook_is_logged_counted_and_ignored(
    openai_server: OpenAIServer, hook: str, kind: str
) -> None:
    config = cascade_config(openai_server.base_url, hooks=[_hook(hook)])
    openai_server.script.push(ok("fine"))
    outcomes = RecordingOutcomes()
    with recorded("switchpoint.evaluation") as logs:
        async with running_sidecar(config, KEYS) as sidecar:
            sidecar.sidecar.engine.outcomes = outcomes
            reply = await sidecar.stub.Chat(_chat("anything"))
            failures = _failures(sidecar.sidecar.engine)
    # Served as if the hook were not there: the first answer, unvetoed, nothing recorded.
    assert (reply.content, [a.error_class for a in reply.attempts]) == ("fine", [""])
    assert failures == {(hook.lower(), "after_attempt", kind): 1}
    assert outcomes.outcomes == []
    [line] = [r for r in logs.records if r.getMessage() == "evaluation hook failed"]
    assert (line.__dict__["hook"], line.__dict__["failure"]) == (hook.lower(), kind)
    assert line.__dict__["request_id"] == reply.request_id
    if hook == "BadScore":
        assert BadScore.latest() is not None
        assert "outside 0..1" in line.__dict__["error"]


async def test_a_hook_hanging_in_a_thread_costs_only_its_budget(
    openai_server: OpenAIServer,
) -> None:
    config = cascade_config(openai_server.base_url, hooks=[_hook("HangsInThread", timeout_ms=50)])
    openai_server.script.push(ok("fine"))
    async with running_sidecar(config, KEYS) as sidecar:
        hook = HangsInThread.latest()
        try:
            reply = await sidecar.stub.Chat(_chat("anything"), timeout=30)
            # The answer arrived while the hook was still stuck in it.
            assert hook.entered.is_set()
            assert not hook.finished.is_set()
            failures = _failures(sidecar.sidecar.engine)
        finally:
            hook.release.set()
        assert hook.finished.wait(timeout=10)
        # Its late veto changed nothing.
        assert (reply.content, [a.error_class for a in reply.attempts]) == ("fine", [""])
        assert failures == {("hangsinthread", "after_attempt", "timeout"): 1}


async def test_a_hook_hanging_on_the_loop_is_cancelled_at_its_budget(
    openai_server: OpenAIServer,
) -> None:
    config = cascade_config(openai_server.base_url, hooks=[_hook("HangsOnLoop", timeout_ms=50)])
    openai_server.script.push(ok("fine"))
    async with running_sidecar(config, KEYS) as sidecar:
        reply = await sidecar.stub.Chat(_chat("anything"), timeout=30)
        hook = HangsOnLoop.latest()
        await wait_until(lambda: hook.cancelled)
        failures = _failures(sidecar.sidecar.engine)
    assert hook.entered
    assert reply.content == "fine"
    assert failures == {("hangsonloop", "after_attempt", "timeout"): 1}


async def test_a_hook_that_keeps_hanging_holds_at_most_max_pending_runs(
    openai_server: OpenAIServer,
) -> None:
    config = cascade_config(
        openai_server.base_url, hooks=[_hook("HangsInThread", timeout_ms=20, max_pending=1)]
    )
    async with running_sidecar(config, KEYS) as sidecar:
        hook = HangsInThread.latest()
        try:
            for _ in range(3):
                await sidecar.stub.Chat(_chat("anything"), timeout=30)
            failures = _failures(sidecar.sidecar.engine)
        finally:
            hook.release.set()
    assert failures == {
        ("hangsinthread", "after_attempt", "timeout"): 1,
        ("hangsinthread", "after_attempt", "busy"): 2,
    }


async def test_a_stream_is_observed_after_it_ends_and_never_vetoed(
    openai_server: OpenAIServer,
) -> None:
    hooks = [
        _hook("Scorer", options={"score": 0.5, "final": 1.0}),
        _hook("Veto", options={"model": "large", "reason": "no"}),
    ]
    config = cascade_config(openai_server.base_url, hooks=hooks)
    openai_server.script.push(ok("streamed answer"))
    outcomes = RecordingOutcomes()
    async with running_sidecar(config, KEYS) as sidecar:
        sidecar.sidecar.engine.outcomes = outcomes
        chunks = [chunk async for chunk in sidecar.stub.ChatStream(_chat("anything"))]
    final = chunks[-1]
    assert "".join(c.delta for c in chunks) == "streamed answer"
    # The client had the answer as it came: the veto cannot take it back and does not escalate.
    assert [(a.model, a.error_class) for a in final.attempts] == [("large", "")]
    scorer = Scorer.latest()
    assert [(e.streamed, e.content) for e in scorer.answered] == [(True, "streamed answer")]
    assert [e.streamed for e in scorer.responded] == [True]
    assert sorted((o.model, o.score) for o in outcomes.outcomes) == [
        ("large", 0.0),
        ("large", 0.5),
        ("large", 1.0),
    ]


async def test_hooks_run_at_the_same_time(openai_server: OpenAIServer) -> None:
    """Each of two hooks waits for the other to have started: run one after the other, the first
    would wait out its budget; run together, both answer."""
    Rendezvous.arrived.clear()
    pair = [
        {**_hook("Rendezvous", options={"me": "a", "peer": "b"}), "name": "a"},
        {**_hook("Rendezvous", options={"me": "b", "peer": "a"}), "name": "b"},
    ]
    config = cascade_config(openai_server.base_url, hooks=pair)
    outcomes = RecordingOutcomes()
    async with running_sidecar(config, KEYS) as sidecar:
        sidecar.sidecar.engine.outcomes = outcomes
        await sidecar.stub.Chat(_chat("anything"), timeout=30)
        failures = _failures(sidecar.sidecar.engine)
    assert failures == {}
    assert [o.score for o in outcomes.outcomes] == [1.0, 1.0]
