"""python -m runner.gateway CONFIG.json [--host 127.0.0.1] [--port 8080] [--log FILE]

Runs the gateway with uvicorn; request logs go to --log (JSON lines) or stdout."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import uvicorn

from runner.gateway.app import build


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m runner.gateway")
    ap.add_argument("config")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    handler = logging.FileHandler(a.log) if a.log else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("forge.gateway")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    with open(a.config) as f:
        app = build(json.load(f))
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
