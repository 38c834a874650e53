"""The product on loopback for end-to-end tests: the simulator running the shipped dialplan,
a controller connected to it (as ``ivr demo`` wires them) and a real Redis; and the polling
these tests wait with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr.config import Config, default_config
from ivr.controller import Controller
from ivr.demo import _sim_config, start_with_controller
from ivr.domain.events import CallEvent
from ivr.protocol.ami import Action
from ivr.sim.config import SimConfig
from ivr.sim.engine import Simulator
from ivr.sim.run import RunningSim
from ivr.storage.reader import read_range
from ivr.storage.writer import make_client

#: Simulated seconds per real second: calls of minutes last seconds, timers stay well apart.
SPEED = 40.0


@dataclass
class Rig:
    running: RunningSim
    controller: Controller
    redis_url: str
    #: The queue_log the simulated Asterisk writes.
    queue_log: Path

    @property
    def sim(self) -> Simulator:
        return self.running.sim

    async def stop(self) -> None:
        await self.controller.stop()
        await self.running.stop()


async def start_rig(
    redis_url: str,
    tmp_path: Path,
    *,
    seed: int,
    secret: str,
    config: Config | None = None,
    profile: str = "normal",
    sim_setup: Callable[[SimConfig], None] | None = None,
    web_port: int | None = None,
    **controller_options: Any,
) -> Rig:
    """The simulator (traffic ``profile``, no generated calls yet) and a connected controller.

    ``sim_setup`` may change the simulator's configuration before it starts;
    ``controller_options`` go to :class:`~ivr.controller.Controller`.
    """
    sim_cfg = _sim_config(profile)
    sim_cfg.queue_log = str(tmp_path / "queue_log")
    if sim_setup is not None:
        sim_setup(sim_cfg)
    running, controller = await start_with_controller(
        config or default_config(),
        sim_cfg,
        seed=seed,
        speed=SPEED,
        secret=secret,
        redis_url=redis_url,
        spool_path=str(tmp_path / "spool.jsonl"),
        web_port=web_port,
        connect_timeout_s=10,
        **controller_options,
    )
    return Rig(running, controller, redis_url, Path(sim_cfg.queue_log))


@contextlib.asynccontextmanager
async def running_rig(redis_url: str, tmp_path: Path, **options: Any) -> AsyncIterator[Rig]:
    """:func:`start_rig` (same options), stopped on the way out."""
    rig = await start_rig(redis_url, tmp_path, **options)
    try:
        yield rig
    finally:
        await rig.stop()


async def stored_events(redis_url: str) -> list[CallEvent]:
    """Every event of the stream, oldest first."""
    client = make_client(redis_url)
    try:
        return [e async for e in read_range(client)]
    finally:
        await client.aclose()


async def wait_for(predicate: Callable[[], Any], limit_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a function or a coroutine function) until it is true; fail after ``limit_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def action(name: str, *pairs: tuple[str, str], action_id: str = "t-1") -> Action:
    """An AMI action as a client would send it (the first of a repeated header wins)."""
    headers = (("Action", name), ("ActionID", action_id), *pairs)
    fields: dict[str, str] = {}
    for k, v in headers:
        fields.setdefault(k, v)
    return Action(fields, headers, name=name)
