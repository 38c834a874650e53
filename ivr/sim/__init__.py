"""A simulated Asterisk 22 that speaks real AMI and FastAGI (see :mod:`ivr.sim.engine`).

Entry points: :class:`Simulator` (the engine, implementing :class:`ivr.sim.api.Engine`),
:func:`default_config` / :func:`load_config` (the model it interprets),
:class:`TrafficGenerator` (generated callers) and :func:`run_sim` / :func:`start_sim`
(engine + AMI server, what ``ivr sim`` runs).
"""

from ivr.sim.config import SimConfig, SimConfigError, default_config, load_config
from ivr.sim.engine import OriginateRequest, Simulator
from ivr.sim.run import RunningSim, run_sim, start_sim
from ivr.sim.traffic import TrafficGenerator

__all__ = [
    "OriginateRequest",
    "RunningSim",
    "SimConfig",
    "SimConfigError",
    "Simulator",
    "TrafficGenerator",
    "default_config",
    "load_config",
    "run_sim",
    "start_sim",
]
