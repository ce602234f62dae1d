"""`switchpoint serve | stats | route | bench | eval | config check | keys`: the command-line
front.

`stats` and `route` are thin gRPC clients of a running sidecar (a sync channel: one call, print,
exit). Exit codes: 0 ok, 1 the sidecar or the config said no, 2 the sidecar could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from switchpoint.cli_auth import (
    add_client_security_options,
    add_keys_parser,
    call_metadata,
    client_channel,
    keys_command,
)
from switchpoint.cli_format import render_route, render_stats
from switchpoint.config import Config, default_config_path, load_config
from switchpoint.errors import ConfigError, SwitchpointError
from switchpoint.evaluation.loading import load_hooks
from switchpoint.logs import configure_logging, unconfigure_logging
from switchpoint.routing.replay.command import add_eval_parser, eval_command
from switchpoint.security.keys import load_tenant_keys
from switchpoint.security.secrets import config_secrets
from switchpoint.server import Sidecar, create_server
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc

if TYPE_CHECKING:
    from switchpoint.v1.router_pb2_grpc import RouterStub

log = logging.getLogger("switchpoint")

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Clear the screen and home the cursor: a redraw, not a scroll, for `stats --watch`.
_CLEAR = "\x1b[2J\x1b[H"

MessageT = TypeVar("MessageT", bound=Message)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchpoint", description="LLM routing sidecar")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar")
    serve.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: the embedded default)"
    )
    serve.add_argument(
        "--grpc-address", default=None, help="HOST:PORT, overrides server.grpc_address"
    )
    serve.add_argument(
        "--http-address",
        default=None,
        help="HOST:PORT, overrides server.http_address (the OpenAI-compatible HTTP front)",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--log-format",
        default="json",
        choices=["json", "text"],
        help="json: one JSON object per line (default); text: for reading in a terminal",
    )
    _add_stats_parser(commands)
    _add_route_parser(commands)
    bench = commands.add_parser(
        "bench", help="measure switchpoint's own overhead against baselines run alongside"
    )
    bench.add_argument("--quick", action="store_true", help="a tenth of the iterations")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_eval_parser(commands)
    config = commands.add_parser("config", help="config tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a config file: every error with its path, exit code 1"
    )
    check.add_argument("file", type=Path)
    add_keys_parser(commands)
    return parser


def _client_options(parser: argparse.ArgumentParser, helps: Mapping[str, str]) -> None:
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"sidecar HOST:PORT (default {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=5.0, metavar="S", help="RPC deadline (5s)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw message as JSON")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        default=[],
        metavar="M",
        help=helps["model"],
    )
    parser.add_argument("--tenant", default=None, metavar="T", help=helps["tenant"])
    parser.add_argument("--stage", default=None, metavar="S", help=helps["stage"])
    add_client_security_options(parser)


def _add_stats_parser(commands: Any) -> None:
    stats = commands.add_parser(
        "stats", help="per-model requests, errors, latency percentiles, tokens, cost, breakers"
    )
    _client_options(
        stats,
        {
            "model": "only this model (repeat for more; default all)",
            "tenant": "count only this tenant's calls (latency stays per model)",
            "stage": "count only this stage's calls (latency stays per model)",
        },
    )
    stats.add_argument(
        "--watch",
        type=_positive(float),
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )


def _add_route_parser(commands: Any) -> None:
    route = commands.add_parser(
        "route", help="show which model would serve a prompt, with scores and reasons"
    )
    route.add_argument("prompt", help='the user message ("-" reads it from stdin)')
    _client_options(
        route,
        {
            "model": "choose among these models only (repeat for more)",
            "tenant": "route as this tenant",
            "stage": "a stage from routing.stages",
        },
    )
    route.add_argument(
        "--strategy",
        default="",
        metavar="S",
        help="cost-first, latency-first, quality-first, balanced, or one from routing.strategies",
    )
    route.add_argument(
        "--max-tokens",
        type=_positive(int),
        default=None,
        metavar="N",
        help="output token limit (also the output estimate routing uses)",
    )


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


class _Unreachable(Exception):
    """The sidecar did not answer: nothing listening, or no answer within the deadline."""


class _RpcFailed(Exception):
    """The sidecar answered with an error status (bad argument, unknown model, ...)."""


def _call(method: Callable[..., MessageT], request: object, args: argparse.Namespace) -> MessageT:
    """One RPC; unreachable -> _Unreachable (exit 2), any other status -> _RpcFailed (exit 1), so
    no grpc traceback ever reaches the operator."""
    try:
        return method(request, timeout=args.timeout, metadata=call_metadata(args))
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else "") or code.name
        details = " ".join(details.split())  # one line, whatever the transport said
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise _Unreachable(
                f"cannot reach switchpoint at {args.address}: {code.name}: {details}"
            ) from None
        raise _RpcFailed(details) from None


def _client(args: argparse.Namespace, action: Callable[[RouterStub], int]) -> int:
    try:
        with client_channel(args) as channel:
            return action(router_pb2_grpc.RouterStub(channel))
    except _Unreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    except _RpcFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _as_json(message: Message, *, indent: int | None = 2) -> str:
    # Zero-valued fields are printed too: a machine reading "requests" must not find it missing.
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(data, indent=indent)


def _width() -> int:
    """The terminal's width when printing to one; 100 columns into a pipe or file."""
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((100, 24)).columns)
    return 100


def _stats_request(args: argparse.Namespace) -> pb.StatsRequest:
    request = pb.StatsRequest(models=args.models)
    # Optional fields: set only when given, so "" (the default tenant) stays distinguishable.
    if args.tenant is not None:
        request.tenant = args.tenant
    if args.stage is not None:
        request.stage = args.stage
    return request


def _stats_command(args: argparse.Namespace) -> int:
    request = _stats_request(args)

    def render(stub: RouterStub, indent: int | None = 2) -> str:
        stats = _call(stub.GetStats, request, args)
        if args.json:
            return _as_json(stats, indent=indent)
        return render_stats(stats, address=args.address, max_width=_width())

    def once(stub: RouterStub) -> int:
        print(render(stub))
        return 0

    def watch(stub: RouterStub) -> int:
        # JSON while watching: one compact object per line, no screen control codes.
        frame = partial(render, stub, None) if args.json else partial(render, stub)
        return watch_loop(frame, args.watch, clear=not args.json)

    return _client(args, once if args.watch is None else watch)


def watch_loop(
    frame: Callable[[], str],
    interval: float,
    *,
    clear: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Redraw until Ctrl-C. A sidecar that goes away (restart, rollout) is shown and retried
    rather than ending the watch; an error status (unknown model) ends it, retrying cannot help."""
    try:
        while True:
            try:
                text = frame()
            except _Unreachable as exc:
                text = str(exc)
            stamp = datetime.now().strftime("%H:%M:%S")
            if clear:
                footer = f"\n\n{stamp}, every {interval:g}s, Ctrl-C to stop"
                sys.stdout.write(f"{_CLEAR}{text}{footer}\n")
            else:
                sys.stdout.write(f"{text}\n")
            sys.stdout.flush()
            sleep(interval)
    except KeyboardInterrupt:
        return 0


def _route_request(args: argparse.Namespace) -> pb.RouteRequest:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = pb.GenerationParams()
    if args.max_tokens is not None:
        params.max_tokens = args.max_tokens
    return pb.RouteRequest(
        messages=[pb.Message(role="user", content=prompt)],
        routing=pb.RoutingOptions(
            models=args.models,
            stage=args.stage or "",
            strategy=args.strategy,
            tenant=args.tenant or "",
        ),
        params=params,
    )


def _route_command(args: argparse.Namespace) -> int:
    request = _route_request(args)

    def route(stub: RouterStub) -> int:
        decision = _call(stub.Route, request, args)
        print(_as_json(decision) if args.json else render_route(decision, max_width=_width()))
        return 0

    return _client(args, route)


async def _serve(
    config: Config, address: str | None, config_path: Path | None, http_address: str | None
) -> None:
    sidecar, port = await create_server(
        config, address, config_path=config_path, http_address=http_address
    )
    try:
        await sidecar.start()
        # Everything built so far (config, tokenizer tables, protobuf descriptors, the embedding
        # model) lives as long as the process: frozen, it is no longer rescanned by every full
        # garbage collection that request garbage triggers (a few percent of a Route call's CPU).
        gc.freeze()
        _announce(sidecar, (address or config.server.grpc_address), port)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        sidecar.install_reload_signal(loop)
        await stopping.wait()
        log.info(
            "stopping: draining in-flight calls for up to %ss",
            sidecar.config.server.graceful_stop_s,
        )
    finally:
        await sidecar.stop()


def _announce(sidecar: Sidecar, address: str, port: int) -> None:
    engine = sidecar.engine
    host = address.rsplit(":", 1)[0]
    models = ", ".join(m.name for m in engine.registry.models)
    print(f"switchpoint: gRPC on {host}:{port} (switchpoint.v1.Router, grpc.health.v1, reflection)")
    if sidecar.http_port is not None:
        http_host = sidecar.http_address.rsplit(":", 1)[0]
        print(
            f"switchpoint: HTTP on {http_host}:{sidecar.http_port} "
            "(OpenAI-compatible /v1/chat/completions, /v1/models, /healthz)"
        )
    if sidecar.metrics_port is not None:
        metrics_host = (engine.config.telemetry.metrics_address or "").rsplit(":", 1)[0]
        print(
            f"switchpoint: Prometheus metrics on http://{metrics_host}:{sidecar.metrics_port}/metrics"
        )
    print(f"switchpoint: models enabled: {models}")
    for _, note in sidecar.security_notes():
        print(f"switchpoint: {note}")
    for name, why in engine.registry.disabled.items():
        print(f"switchpoint: model {name} disabled: {why}")
    sys.stdout.flush()


def _serve_command(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    config = load_config(path)
    # Again, now that the config names the variables holding secrets.
    configure_logging(
        args.log_level, json=args.log_format == "json", secrets=config_secrets(config, os.environ)
    )
    asyncio.run(_serve(config, args.grpc_address, args.config, args.http_address))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        # The key file and variable too: a key line that cannot be read refuses the config.
        load_tenant_keys(config, os.environ)
        # And the hooks, which a start would import (running their modules' top level).
        load_hooks(config.evaluation.hooks, str(args.file))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.routing.stages)} stages)"
    )
    return 0


def _bench_command(args: argparse.Namespace) -> int:
    # Imported here: the bench pulls in the server stack only for this command.
    from switchpoint.bench import figures as bench  # noqa: PLC0415

    # Measured as the sidecar runs by default, a JSON request line per call at INFO; the lines
    # go to the null device rather than drown the figures.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(os.devnull, "w") as sink:
        root.handlers.clear()
        configure_logging("INFO", stream=sink)
        try:
            figures = bench.run(quick=args.quick, progress=None if args.json else sys.stderr)
        finally:
            unconfigure_logging()
            root.handlers[:] = handlers
            root.setLevel(level)
    if args.json:
        print(json.dumps(bench.as_dicts(figures), indent=2))
    else:
        print(bench.render(figures))
        print("\nfull suites (open-loop load, pinned processes, plots): make bench")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        # Before the config is loaded, so loading problems are logged in the chosen format too.
        configure_logging(args.log_level, json=args.log_format == "json")
    else:
        logging.basicConfig(
            level=getattr(args, "log_level", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # httpx logs every request at INFO, health polls included; our own logs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return _serve_command(args)
        if args.command == "stats":
            return _stats_command(args)
        if args.command == "route":
            return _route_command(args)
        if args.command == "bench":
            return _bench_command(args)
        if args.command == "eval":
            return eval_command(args)
        if args.command == "keys":
            return keys_command(args)
        return _config_check(args)
    except SwitchpointError as exc:
        print(f"switchpoint: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"switchpoint: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
