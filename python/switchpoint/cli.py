"""`switchpoint serve | config check`: the command-line front."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from switchpoint.config import Config, default_config_path, load_config
from switchpoint.engine import Engine
from switchpoint.errors import ConfigError, SwitchpointError
from switchpoint.server import create_server

log = logging.getLogger("switchpoint")


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
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    config = commands.add_parser("config", help="config tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    return parser


async def _serve(config: Config, address: str | None) -> None:
    sidecar, port = await create_server(config, address)
    try:
        await sidecar.start()
        _announce(sidecar.engine, (address or config.server.grpc_address), port)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("stopping: draining in-flight calls for up to %ss", config.server.graceful_stop_s)
    finally:
        await sidecar.stop()


def _announce(engine: Engine, address: str, port: int) -> None:
    host = address.rsplit(":", 1)[0]
    models = ", ".join(m.name for m in engine.registry.models)
    print(f"switchpoint: gRPC on {host}:{port} (switchpoint.v1.Router, grpc.health.v1, reflection)")
    print(f"switchpoint: models enabled: {models}")
    for name, why in engine.registry.disabled.items():
        print(f"switchpoint: model {name} disabled: {why}")
    sys.stdout.flush()


def _serve_command(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    config = load_config(path)
    asyncio.run(_serve(config, args.grpc_address))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.routing.stages)} stages)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO, health polls included; our own logs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return _serve_command(args)
        return _config_check(args)
    except SwitchpointError as exc:
        print(f"switchpoint: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"switchpoint: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
