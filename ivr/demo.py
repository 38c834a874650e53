"""``ivr demo``: the whole product on one machine, with nothing to install.

An embedded Redis, the Asterisk simulator (real AMI and FastAGI over loopback), the
controller (AMI client, IVR, event log, live KPIs) and the dashboard. With
``--duration S`` it runs S seconds, stops everything gracefully, prints the same JSON
object as ``ivr report --json`` computed from what reached Redis, and exits 0: a smoke
test of the product that anyone can run.

The simulated clock starts on a past working morning so that the services are open and
every Asterisk timestamp stays behind the wall clock (stream ids follow Asterisk time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ivr.logs import get_logger
from ivr.shutdown import wait_for_stop_signal

if TYPE_CHECKING:
    from ivr.config import Config
    from ivr.controller import Controller
    from ivr.sim.config import SimConfig
    from ivr.sim.run import RunningSim

log = get_logger(__name__)

PROFILES = ("normal", "overflow")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="simulator + controller + dashboard on an embedded Redis",
        description="Run the simulated PBX, the controller and the dashboard on an embedded Redis. "
        "With --duration, print the KPI report (JSON) at the end and exit.",
    )
    p.add_argument("--duration", type=float, default=None, help="run this many seconds, then report and exit")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated traffic (default 1)")
    p.add_argument("--speed", type=float, default=10.0, help="simulated seconds per real second (default 10)")
    p.add_argument("--profile", choices=PROFILES, default="normal", help="traffic profile (default normal)")
    p.add_argument("--config", default=None, help="controller configuration (default: the packaged one)")
    p.add_argument("--web-port", type=int, default=None, help="dashboard port (default: the config's)")
    return p


def start_of_demo_day(now: float, tz: str = "Europe/Paris", hour: int = 9) -> float:
    """The latest working-day morning at ``hour`` that is at least a day before ``now``.

    A past day keeps simulated timestamps behind the wall clock; a weekday morning is
    inside every shipped service's opening hours (holidays aside, which shift a day).
    """
    zone = ZoneInfo(tz)
    day = datetime.fromtimestamp(now, zone) - timedelta(days=1)
    while True:
        start = day.replace(hour=hour, minute=0, second=0, microsecond=0)
        if start.weekday() < 5 and start.timestamp() <= now - 86400:
            return start.timestamp()
        day -= timedelta(days=1)


def _sim_config(profile: str) -> Any:
    """The simulator configuration for a profile: the shipped dialplan when available."""
    from ivr.sim import config as sim_config

    try:
        from ivr.sim.conf_loader import product_config

        return product_config(profile)
    except ImportError:
        return sim_config.load_config(Path(sim_config.__file__).with_name("example.toml"))


async def start_with_controller(
    config: Config,
    sim_cfg: SimConfig,
    *,
    seed: int,
    speed: float,
    secret: str,
    redis_url: str,
    spool_path: str,
    web_port: int | None = None,
    connect_timeout_s: float | None = None,
    **controller_options: Any,
) -> tuple[RunningSim, Controller]:
    """The simulator and a controller wired to it, as ``ivr demo`` runs them.

    The simulator listens for AMI on a free loopback port, its clock starts on a past
    working morning (:func:`start_of_demo_day`) and it generates no calls (the caller
    starts them once the controller is ready, so that none is missed). The controller logs
    in with ``secret``, is connected and resynced on return, and the dialplan's FastAGI
    calls go to its FastAGI server. ``controller_options`` go to :class:`Controller`; on a
    failure everything started is stopped again.
    """
    from ivr.controller import Controller, Endpoints
    from ivr.sim.run import start_sim

    running = await start_sim(
        sim_cfg,
        seed=seed,
        speed=speed,
        ami_port=0,
        username=config.ami.username,
        secret=secret,
        traffic=False,
        start_epoch=start_of_demo_day(time.time(), config.timezone),
    )
    controller: Controller | None = None
    try:
        assert running.ami is not None
        sim = running.sim
        controller = Controller(
            config,
            Endpoints(
                ami_host="127.0.0.1",
                ami_port=running.ami.port,
                ami_secret=secret,
                agi_host="127.0.0.1",
                agi_port=0,
                web_port=web_port,
                redis_url=redis_url,
                spool_path=spool_path,
            ),
            clock=sim.now,
            **controller_options,
        )
        await controller.start()
        await asyncio.wait_for(controller.ami.wait_connected(), connect_timeout_s)
        sim.config.agi_server = f"127.0.0.1:{controller.agi.port}"
        sim.globals["IVR_AGI_HOST"] = "127.0.0.1"
        sim.globals["IVR_AGI_PORT"] = str(controller.agi.port)
    except BaseException:
        if controller is not None:
            await controller.stop()
        await running.stop()
        raise
    return running, controller


async def run_demo(args: argparse.Namespace) -> dict[str, Any] | None:
    from ivr.config import default_config, load_config
    from ivr.domain.kpi import report_document
    from ivr.kpi_cli import report_from_redis
    from ivr.sim.traffic import TrafficGenerator
    from ivr.storage.server import RedisServerProcess
    from ivr.storage.writer import make_client

    config = load_config(args.config) if args.config else default_config()
    workdir = Path(tempfile.mkdtemp(prefix="decroche-demo-"))
    redis = RedisServerProcess()
    redis.start()
    running = None
    controller = None
    traffic: asyncio.Task[Any] | None = None
    try:
        sim_cfg = _sim_config(args.profile)
        sim_cfg.queue_log = str(workdir / "queue_log")
        running, controller = await start_with_controller(
            config,
            sim_cfg,
            seed=args.seed,
            speed=args.speed,
            secret=secrets.token_hex(12),
            redis_url=redis.url,
            spool_path=str(workdir / "spool.jsonl"),
            web_port=args.web_port,
        )
        assert running.ami is not None
        traffic = asyncio.create_task(TrafficGenerator(running.sim).run(), name="demo traffic")
        print(
            f"Décroché demo: dashboard http://{controller.web_host}:{controller.web_port}/ "
            f"(simulated AMI on port {running.ami.port}, speed x{args.speed:g}, profile {args.profile})",
            file=sys.stderr,
        )
        if args.duration is not None:
            await asyncio.sleep(args.duration)
        else:
            await wait_for_stop_signal()
    finally:
        if traffic is not None:
            traffic.cancel()
            await asyncio.gather(traffic, return_exceptions=True)
        if controller is not None:
            await controller.stop()
        if running is not None:
            await running.stop()
    report: dict[str, Any] | None = None
    try:
        if args.duration is not None and controller is not None:
            client = make_client(redis.url)
            try:
                raw = await report_from_redis(
                    client,
                    controller.kpi_settings,
                    include_calls=True,
                    stream_key=controller.stream_key,
                )
            finally:
                await client.aclose()
            report = report_document(raw)
    finally:
        redis.stop()
    return report


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        print("ivr demo: --duration must be positive", file=sys.stderr)
        return 2
    if args.speed <= 0:
        print("ivr demo: --speed must be positive", file=sys.stderr)
        return 2
    report = asyncio.run(run_demo(args))
    if report is not None:
        json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0
