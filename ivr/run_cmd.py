"""``ivr run``: the controller beside a real (or simulated) Asterisk, until stopped."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the controller (AMI client, FastAGI IVR server, event log, dashboard)",
        description="Run the controller until SIGINT/SIGTERM, then stop gracefully.",
    )
    p.add_argument("--config", required=True, help="configuration file (TOML)")
    return p


def run(args: argparse.Namespace) -> int:
    from ivr.config import ConfigError, load_config
    from ivr.controller import Controller

    try:
        config = load_config(args.config)
        controller = Controller(config)
    except ConfigError as exc:
        print(exc)
        return 2
    asyncio.run(controller.run_forever())
    return 0
