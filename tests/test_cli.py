"""`switchpoint stats` and `switchpoint route` against a real sidecar, plus the exit codes.

The CLI uses a blocking gRPC channel, so main() runs in a worker thread while the sidecar keeps
serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from switchpoint import cli
from switchpoint.bench import figures as bench
from switchpoint.bench.figures import python_score, scoring_setup
from switchpoint.cli import main, watch_loop
from switchpoint.cli_format import Column, render_route, render_table, truncate
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar

MODELS = ("cheap", "fast", "strong", "tiny")


@pytest.fixture
async def sidecar() -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(routing_config()) as running:
        yield running


def _address(sidecar: RunningSidecar) -> str:
    return f"127.0.0.1:{sidecar.sidecar.port}"


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def _closed_port() -> int:
    """A loopback port nothing listens on: bound then closed, so it was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_route_prints_the_choice_candidates_and_reasons(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli(
        "route", "Say hello", "--address", _address(sidecar), "--strategy", "cost-first"
    )
    out = capsys.readouterr().out
    assert code == 0
    # cost-first over the four models picks the free one.
    assert out.splitlines()[0].split() == ["model", "tiny"]
    assert "strategy  cost-first (cost " in out
    assert "level     auto" in out
    for model in MODELS:
        assert model in out
    assert "\nreasons\n  - " in out
    assert all(len(line) <= 100 for line in out.splitlines())


async def test_route_json_is_the_decision(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli(
        "route",
        "Design the system",
        "--address",
        _address(sidecar),
        "--stage",
        "architecture",
        "--max-tokens",
        "200",
        "--json",
    )
    decision = json.loads(capsys.readouterr().out)
    assert code == 0
    assert decision["model"] == "strong"
    assert decision["level"] == "DECISION_LEVEL_STAGE"
    assert decision["estimated_output_tokens"] == 200
    assert [c["model"] for c in decision["candidates"]] == ["strong", "fast"]
    assert decision["reasons"]


async def test_route_model_override(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli(
        "route", "hi", "--address", _address(sidecar), "--model", "fast", "--model", "cheap"
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "level     override" in out
    assert "strong" not in out.split("candidates")[1].split("reasons")[0]


async def test_route_bad_strategy_exits_1_naming_the_field(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli("route", "hi", "--address", _address(sidecar), "--strategy", "yolo")
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.startswith("error: routing.strategy")
    assert "yolo" in captured.err
    assert "Traceback" not in captured.err


async def test_stats_prints_a_row_per_model(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli("stats", "--address", _address(sidecar))
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split()[:6] == ["model", "reqs", "err%", "p50", "p95", "p99"]
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(MODELS)]]
    assert [r[0] for r in rows] == list(MODELS)
    # Nothing called yet: zero requests, no error rate, no latency samples, breakers closed.
    assert all(r[1] == "0" and r[2] == "-" and r[3] == "-" and "closed" in r for r in rows)
    assert all(len(line) <= 100 for line in lines)


async def test_stats_filters_and_json(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stats", "--address", _address(sidecar), "--model", "fast", "--json"]
    code = await _cli(*argv, "--tenant", "acme", "--stage", "architecture")
    stats = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [m["model"] for m in stats["models"]] == ["fast"]
    # Zero-valued fields are present, not omitted (uint64 is a string in proto JSON).
    assert stats["models"][0]["requests"] == "0"
    assert stats["models"][0]["breaker_state"] == "closed"


async def test_stats_unknown_model_exits_1(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _cli("stats", "--address", _address(sidecar), "--model", "ghost")
    assert code == 1
    assert capsys.readouterr().err == "error: models[0]: unknown model 'ghost'\n"


@pytest.mark.parametrize("command", [["stats"], ["route", "hello"]])
async def test_unreachable_sidecar_exits_2_with_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    code = await _cli(*command, "--address", address, "--timeout", "3")
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith(f"cannot reach switchpoint at {address}: ")
    assert captured.err.count("\n") == 1


def test_watch_redraws_until_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    frames = iter(["first", "second"])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    assert watch_loop(lambda: next(frames), 0.5, clear=True, sleep=sleep) == 0
    out = capsys.readouterr().out
    assert out.count("\x1b[2J\x1b[H") == 2
    assert "first" in out
    assert "second" in out
    assert sleeps == [0.5, 0.5]


async def test_stats_watch_json_survives_then_stops(
    sidecar: RunningSidecar, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        raise KeyboardInterrupt

    # Only the watch loop's sleep: patching time.sleep itself would hit grpc's threads too.
    monkeypatch.setattr(cli, "watch_loop", partial(watch_loop, sleep=sleep))
    code = await _cli("stats", "--address", _address(sidecar), "--watch", "1", "--json")
    out = capsys.readouterr().out
    assert code == 0
    assert calls == [1.0]
    # JSON while watching: one compact object per line, no screen control codes.
    assert len(json.loads(out.strip())["models"]) == len(MODELS)
    assert "\x1b" not in out


def test_bad_flags_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["stats", "--watch", "0"])
    assert exited.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(routing_config()))
    assert main(["config", "check", str(good)]) == 0
    assert "ok (1 providers, 4 models, 1 stages)" in capsys.readouterr().out
    data = routing_config()
    data["models"][0]["quality"] = 2
    data["models"][1]["context_window"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "models[0].quality: must be <= 1" in err
    assert "models[1].context_window: must be >= 1" in err
    data = routing_config()
    data["evaluation"] = {"hooks": [{"path": "no_such_module_here:Hook"}]}
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(bad)]) == 1
    assert "evaluation.hooks[0].path: cannot import module" in capsys.readouterr().err


def test_table_truncates_the_model_column_to_fit() -> None:
    columns = [Column("model", "<", shrink=True), Column("n")]
    rows = [["a-very-long-model-name-that-goes-on", "1"], ["short", "22"]]
    table = render_table(columns, rows, max_width=16)
    lines = table.splitlines()
    assert all(len(line) <= 16 for line in lines)
    assert lines[1] == "a-very-long…   1"
    assert lines[2].startswith("short")
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 4) == "abc"


def test_route_table_renders_observed_latency_marker() -> None:
    decision = pb.RouteDecision(
        model="m",
        level=pb.DECISION_LEVEL_AUTO,
        strategy="balanced",
        candidates=[pb.Candidate(model="m", provider="p", score=0.9, latency_observed=True)],
        reasons=["a reason " * 30],
    )
    text = render_route(decision, max_width=80)
    assert "* latency from live samples" in text
    assert all(len(line) <= 80 for line in text.splitlines())


async def test_stats_shows_cache_budgets_left_and_split_arms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = routing_config()
    config["cache"] = {"enabled": True}
    config["routing"]["splits"] = {
        "trial": {
            "sticky": "tenant",
            "arms": [
                {"name": "thrift", "weight": 1, "strategy": "cost-first"},
                {"name": "off", "weight": 0},
            ],
        }
    }
    config["budgets"] = [
        {"name": "tenant-day", "match": {"tenant": "*"}, "window": "day", "limit_usd": 12.5}
    ]
    async with running_sidecar(config) as sidecar:
        # Routing a tenant's request creates its budget instance.
        await sidecar.stub.Route(
            pb.RouteRequest(
                messages=[pb.Message(role="user", content="hi")],
                routing=pb.RoutingOptions(tenant="acme"),
            )
        )
        code = await _cli("stats", "--address", _address(sidecar))
    out = capsys.readouterr().out
    assert code == 0
    assert "cache: 0 entries, hit rate 0% (0 exact, 0 semantic, 0 misses)" in out
    assert "budget tenant-day[tenant=acme] (day): $12.5 left of $12.5" in out
    assert "split trial arm thrift (100%): 1 reqs, 0 errors, $0" in out
    assert "split trial arm off (0%): 0 reqs, 0 errors, $0" in out


async def test_bench_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = await _cli("bench", "--quick", "--json")
    out, err = capsys.readouterr()
    figures = json.loads(out)
    # The in-process sidecar wrote its request lines, to the null device, not here.
    assert "request_id" not in out + err
    assert code == 0
    assert [f["name"] for f in figures] == [
        "score 10 candidates",
        "score 100 candidates",
        "score 1000 candidates",
        "gate reserve + settle",
        "latency record",
        *(
            f"Route RPC {q}, {case}"
            for case in ("50 B, estimate", "20 KB, o200k_base", "100 KB, cl100k_base")
            for q in ("p50", "p99")
        ),
        "Chat via sidecar p50",
        "Chat via sidecar p99",
        "cache lookup (200 entries) p50",
    ]
    assert all(f["value_us"] > 0 and f["baseline_us"] > 0 and f["ratio"] > 0 for f in figures)
    # Both Chat paths really waited for the provider: neither is a short-circuit.
    provider_us = bench.CHAT_PROVIDER_DELAY_S * 1e6
    for chat in figures[11:13]:
        assert chat["value_us"] >= provider_us
        assert chat["baseline_us"] >= provider_us


def test_bench_baseline_scores_like_the_rust_core() -> None:
    # The speedup compares like with like only if both rank the same candidates the same way.
    for n in (10, 100, 1000):
        setup = scoring_setup(n)
        ranked, input_tokens, output_tokens = setup.ranked()
        assert output_tokens == bench.OUTPUT_TOKENS
        assert len(ranked) == n - len(range(0, n, 7))  # every 7th model's window is too small
        assert ranked == python_score(setup.specs, input_tokens, output_tokens, bench.WEIGHTS)
