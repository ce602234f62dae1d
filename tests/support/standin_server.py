"""A stand-in for a local OpenAI-compatible model server, run as a child process by the tests.

It answers `GET /v1/models` like llama.cpp's server does and can misbehave on request, so the
supervisor in `switchpoint.local_model` can be tested without llama.cpp or a model file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ModelsHandler(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        if self.path != "/v1/models" or not self.healthy:
            self.send_error(503 if self.path == "/v1/models" else 404)
            return
        body = json.dumps({"object": "list", "data": [{"id": "standin", "object": "model"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        print(f"standin: {format % args}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--startup-delay", type=float, default=0.0, help="wait before listening")
    parser.add_argument("--never-healthy", action="store_true", help="answer 503 forever")
    parser.add_argument("--exit-after", type=float, help="exit with code 3 after this many seconds")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--pid-file", type=Path, help="write our pid here")
    parser.add_argument("--grandchild-pid-file", type=Path, help="fork a sleeper, write its pid")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"standin: starting, pid {os.getpid()}", flush=True)
    if args.pid_file:
        args.pid_file.write_text(str(os.getpid()))
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild_pid_file:
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        args.grandchild_pid_file.write_text(str(sleeper.pid))
    if args.exit_after is not None:
        threading.Timer(args.exit_after, os._exit, args=(3,)).start()
    time.sleep(args.startup_delay)
    ModelsHandler.healthy = not args.never_healthy
    if args.never_healthy:
        print("standin: refusing to become healthy", flush=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), ModelsHandler)
    print(f"standin: listening on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
