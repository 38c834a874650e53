"""``ivr sim``: the simulated Asterisk alone -- AMI server, the shipped dialplan, generated calls.

Without ``--config`` it runs the product configuration (:data:`ivr.sim.conf_loader.PRODUCT_TOML`):
the dialplan of ``dialplans/`` and the queues of ``asterisk-conf/queues.conf`` with
simulated agents, callers and customers. A controller (``ivr run``) connects to its AMI
port like to a real Asterisk, and the dialplan's ``AGI()`` calls reach the controller's
FastAGI server at ``IVR_AGI_HOST:IVR_AGI_PORT`` (``--agi`` overrides them)::

    ivr sim --profile overflow --speed 10 --ami-port 5038 --secret s3cret --agi 127.0.0.1:4573

A configuration that cannot be used (missing file, bad TOML, unknown profile, a dialplan
line the simulator cannot read) is reported on stderr with exit status 2; a port that
cannot be bound exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "parse_agi", "run"]

#: The controller's default AMI secret (ivr/data/default.toml), so that ``ivr run`` with the
#: default configuration logs in to ``ivr sim`` with its defaults.
DEFAULT_SECRET = "decroche-demo"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="simulated Asterisk (AMI + FastAGI client) running the shipped dialplan",
        description="Run the simulated Asterisk: an AMI server on --ami-port, the dialplan of "
        "dialplans/ (or --config), generated calls of a traffic profile.",
    )
    p.add_argument("--config", default=None, help="simulator config (default: the packaged product.toml)")
    p.add_argument("--profile", default=None, help="traffic profile of the config: normal, overflow ...")
    p.add_argument("--seed", type=int, default=1, help="seed of every random draw (default 1)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--ami-host", default="127.0.0.1", help="AMI listen address (default 127.0.0.1)")
    p.add_argument("--ami-port", type=int, default=5038, help="AMI port, 0 = any free one (default 5038)")
    p.add_argument("--username", default="ivr", help="AMI user name (default ivr)")
    p.add_argument("--secret", default=DEFAULT_SECRET, help=f"AMI secret (default {DEFAULT_SECRET!r})")
    p.add_argument("--duration", type=float, default=None, help="stop after this many simulated seconds")
    p.add_argument("--agi", default=None, metavar="HOST:PORT", help="FastAGI server (IVR_AGI_HOST/PORT)")
    p.add_argument("--queue-log", default=None, help="write Asterisk's queue_log to this file")
    p.add_argument("--no-traffic", action="store_true", help="no generated calls (Originate over AMI only)")
    return p


def parse_agi(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError with a clear message."""
    host, sep, port_s = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"--agi must be HOST:PORT with a port 1-65535, got {value!r}")
    return host, int(port_s)


def _error(message: str) -> int:
    print(f"ivr sim: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ivr.sim.conf_loader import load_product
    from ivr.sim.config import SimConfigError

    if not (args.speed > 0 and math.isfinite(args.speed)):
        return _error("--speed must be a positive number")
    if args.duration is not None and not args.duration > 0:
        return _error("--duration must be positive")
    if not 0 <= args.ami_port < 65536:
        return _error("--ami-port must be 0-65535")
    if not args.secret:
        return _error("--secret must not be empty")
    agi: tuple[str, int] | None = None
    if args.agi is not None:
        try:
            agi = parse_agi(args.agi)
        except ValueError as exc:
            return _error(str(exc))
    try:
        cfg = load_product(Path(args.config) if args.config else None, args.profile)
    except SimConfigError as exc:
        return _error(str(exc))
    if agi is not None:
        cfg.globals["IVR_AGI_HOST"], cfg.globals["IVR_AGI_PORT"] = agi[0], str(agi[1])
    if args.queue_log:
        cfg.queue_log = args.queue_log
    try:
        return asyncio.run(_serve(cfg, args))
    except OSError as exc:
        print(f"ivr sim: cannot start: {exc}", file=sys.stderr)
        return 1


async def _serve(cfg: Any, args: argparse.Namespace) -> int:
    from ivr.shutdown import wait_for_stop_signal
    from ivr.sim.run import start_sim

    running = await start_sim(
        cfg,
        seed=args.seed,
        speed=args.speed,
        ami_host=args.ami_host,
        ami_port=args.ami_port,
        username=args.username,
        secret=args.secret,
        traffic=False if args.no_traffic else None,
    )
    sim = running.sim
    assert running.ami is not None
    agi = f"{sim.globals.get('IVR_AGI_HOST', '?')}:{sim.globals.get('IVR_AGI_PORT', '?')}"
    print(
        f"ivr sim: AMI on {args.ami_host}:{running.ami.port} (user {args.username}), FastAGI to {agi}, "
        f"speed x{args.speed:g}, seed {args.seed}",
        file=sys.stderr,
    )
    try:
        if args.duration is not None:
            await sim.run_for(args.duration)
        else:
            await wait_for_stop_signal()
    finally:
        await running.stop()
    print(
        f"ivr sim: {sim.calls_originated} calls originated, {sim.events_emitted} AMI events",
        file=sys.stderr,
    )
    return 0
