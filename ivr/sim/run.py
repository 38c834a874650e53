"""Run the simulated PBX as a service: engine + AMI front-end (+ generated traffic).

This is what ``ivr sim --config PATH [--seed N] [--speed X]`` runs (the command line
itself lives in ``ivr.sim.cli``)::

    await run_sim("sim.toml", seed=1, speed=60, ami_port=5038, secret="secret")

:func:`run_sim` returns when ``duration`` virtual seconds have passed, when the generated
traffic is done and every call has ended (``until_idle``), or when it is cancelled; the
engine and the AMI server are always stopped cleanly. :func:`start_sim` gives the running
pieces to a caller that wants to drive them itself (the demo, integration tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ivr.sim.config import SimConfig, default_config, load_config
from ivr.sim.engine import Simulator
from ivr.sim.traffic import TrafficGenerator

if TYPE_CHECKING:
    from ivr.sim.ami_server import AMIServer
    from ivr.sim.manager_conf import EventFilter

__all__ = ["RunningSim", "run_sim", "start_sim"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RunningSim:
    """A started simulator with its AMI server and (optional) traffic task."""

    sim: Simulator
    ami: AMIServer | None
    traffic: asyncio.Task[object] | None

    async def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.cancel()
            await asyncio.gather(self.traffic, return_exceptions=True)
        if self.ami is not None:
            await self.ami.stop()
        await self.sim.stop()


async def start_sim(
    config: SimConfig | str | Path | None = None,
    *,
    seed: int = 0,
    speed: float = 1.0,
    ami_host: str = "127.0.0.1",
    ami_port: int | None = 5038,
    username: str = "ivr",
    secret: str = "secret",
    queue_log: str | Path | None = None,
    traffic: bool | None = None,
    start_epoch: float | None = None,
    event_filters: Iterable[EventFilter] = (),
) -> RunningSim:
    """Start the engine, the AMI server (unless ``ami_port`` is None) and the traffic.

    ``traffic=None`` follows the config's ``[traffic] enabled``. ``event_filters`` are the
    AMI user's eventfilters, e.g. ``load_manager_user("asterisk-conf/manager.conf",
    "ivr").filters`` for the stream a production controller gets (default: none, the
    whole stream, as the recordings were made).
    """
    cfg = (
        config
        if isinstance(config, SimConfig)
        else load_config(config)
        if config is not None
        else default_config()
    )
    sim = Simulator(cfg, seed=seed, speed=speed, queue_log_path=queue_log, start_epoch=start_epoch)
    await sim.start()
    ami: AMIServer | None = None
    try:
        if ami_port is not None:
            from ivr.sim.ami_server import AMIServer

            ami = AMIServer(sim, ami_host, ami_port, username, secret=secret, event_filters=event_filters)
            await ami.start()
        task: asyncio.Task[object] | None = None
        if traffic if traffic is not None else cfg.traffic.enabled:
            task = asyncio.get_running_loop().create_task(TrafficGenerator(sim).run(), name="sim traffic")
    except BaseException:
        if ami is not None:
            await ami.stop()
        await sim.stop()
        raise
    log.info("sim.running", ami_port=ami.port if ami is not None else None, seed=seed, speed=speed)
    return RunningSim(sim, ami, task)


async def run_sim(
    config_path: str | Path | None,
    seed: int = 0,
    speed: float = 1.0,
    ami_port: int | None = 5038,
    *,
    ami_host: str = "127.0.0.1",
    username: str = "ivr",
    secret: str = "secret",
    queue_log: str | Path | None = None,
    duration: float | None = None,
    until_idle: bool = False,
    traffic: bool | None = None,
    event_filters: Iterable[EventFilter] = (),
) -> Simulator:
    """Run the simulator until ``duration`` (virtual s), traffic end + idle, or cancellation."""
    running = await start_sim(
        config_path,
        seed=seed,
        speed=speed,
        ami_host=ami_host,
        ami_port=ami_port,
        username=username,
        secret=secret,
        queue_log=queue_log,
        traffic=traffic,
        event_filters=event_filters,
    )
    sim = running.sim
    try:
        if duration is not None:
            await sim.run_for(duration)
        elif until_idle and running.traffic is not None:
            await running.traffic
            await sim.idle()
        else:
            await asyncio.Event().wait()
    finally:
        await running.stop()
    return sim
