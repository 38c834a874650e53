"""``ivr run``: the controller beside a real (or simulated) Asterisk, until stopped."""

from __future__ import annotations

import argparse
import asyncio
import sys
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
    from ivr.storage.spool import SpoolError

    try:
        config = load_config(args.config)
        controller = Controller(config)
    except ConfigError as exc:
        print(f"ivr run: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(controller.run_forever())
    except (OSError, SpoolError) as exc:
        # What an operator can fix at once: a port in use, a spool another controller
        # holds, a path without write access. One line, no traceback.
        print(f"ivr run: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
