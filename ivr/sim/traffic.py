"""Generated call traffic: Poisson arrivals of callers with patience and DTMF scripts.

Each caller is placed the way the recording rig placed its callers: an Originate of
``Local/<exten>@<context>`` (the inbound call that runs the public dialplan) whose ``;1``
side -- the caller's phone -- runs ``caller_context``/``caller_exten`` with WAIT1, DIGITS
and PATIENCE variables. So generated traffic exercises exactly the paths the recorded
scenarios validated, only more of it.

With ``lines`` (:class:`~ivr.sim.config.TrafficLine`) each caller first draws the public
number it dials, then one of that line's DTMF scripts; ``survey`` draws the key it presses
after talking to an agent (SURVEY). With ``callback_share``, that share of the callers
take the callback they are offered: their DTMF script goes on with ``callback_keys``
(:class:`~ivr.sim.config.TrafficConfig`).

Randomness comes from a ``random.Random`` seeded from the simulator's seed (a stream of
its own, so that changing the traffic does not reshuffle the agents' draws and vice versa);
no global random state is used, and the same seed gives the same calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from ivr.sim.config import TrafficConfig
from ivr.sim.engine import OriginateRequest

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["PlannedCall", "TrafficGenerator"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One generated caller: when, who, how patient, which digits."""

    index: int
    at: float
    number: str
    name: str
    patience: float
    digits: str
    exten: str = ""
    wait_before_digits: float = 0.0
    survey: str = ""
    #: Takes a callback when offered (its digits end with the traffic's ``callback_keys``).
    accepts_callback: bool = False


@dataclass(slots=True)
class TrafficStats:
    placed: int = 0
    planned: list[PlannedCall] = field(default_factory=list)


class TrafficGenerator:
    """Places calls into a running :class:`~ivr.sim.engine.Simulator` per ``TrafficConfig``."""

    def __init__(self, sim: Simulator, cfg: TrafficConfig | None = None, *, seed: int | None = None) -> None:
        self.sim = sim
        self.cfg = cfg if cfg is not None else sim.config.traffic
        base = sim.seed if seed is None else seed
        self.rng = random.Random(base * 1_000_003 + 17)
        self.stats = TrafficStats()

    def plan(self, start: float) -> PlannedCall:
        """Draw the next caller (arrival time, number, patience, digits)."""
        cfg, rng = self.cfg, self.rng
        gap = rng.expovariate(cfg.arrivals_per_hour / 3600.0)
        patience = rng.uniform(*cfg.patience)
        exten, wait = cfg.exten, cfg.wait_before_digits
        if cfg.lines:
            line = rng.choices(cfg.lines, weights=[li.weight for li in cfg.lines])[0]
            exten, wait = line.exten, line.wait_before_digits
            digits = rng.choices(line.digits, weights=line.digit_weights)[0]
        else:
            digits = rng.choices(cfg.digits, weights=cfg.digit_weights)[0]
        survey = rng.choices(cfg.survey, weights=cfg.survey_weights)[0] if cfg.survey else ""
        # Drawn last (and only with a share), so that traffic without callbacks keeps its draws.
        accepts = cfg.callback_share > 0 and rng.random() < cfg.callback_share
        if accepts:
            digits += cfg.callback_keys
        index = len(self.stats.planned) + 1
        return PlannedCall(
            index=index,
            at=start + gap,
            number=f"{cfg.number_prefix}{index:0{max(1, 10 - len(cfg.number_prefix))}d}",
            name=f"Client {index}",
            patience=round(patience, 1),
            digits=digits,
            exten=exten,
            wait_before_digits=wait,
            survey=survey,
            accepts_callback=accepts,
        )

    def place(self, call: PlannedCall) -> None:
        cfg = self.cfg
        variables = [
            ("WAIT1", f"{call.wait_before_digits if call.exten else cfg.wait_before_digits:g}"),
            ("DIGITS", call.digits),
            ("PATIENCE", f"{call.patience:g}"),
        ]
        if cfg.survey:
            variables.append(("SURVEY", call.survey))
        if cfg.queue_timeout > 0:
            variables.append(("QTIMEOUT", str(cfg.queue_timeout)))
        self.sim.originate(
            OriginateRequest(
                f"Local/{call.exten or cfg.exten}@{cfg.context}",
                context=cfg.caller_context,
                exten=cfg.caller_exten,
                priority="1",
                cid_num=call.number,
                cid_name=call.name,
                timeout_ms=cfg.originate_timeout_ms,
                variables=variables,
                action_id=f"traffic-{call.index}",
            )
        )
        self.stats.placed += 1

    async def run(self) -> TrafficStats:
        """Place calls until ``calls`` or ``duration`` is reached (or forever if both are 0)."""
        cfg = self.cfg
        sim = self.sim
        start = sim.now()
        last = start
        while True:
            if cfg.calls and self.stats.placed >= cfg.calls:
                break
            call = self.plan(last)
            if cfg.duration and call.at - start > cfg.duration:
                break
            self.stats.planned.append(call)
            await sim.clock.sleep_until(call.at)
            self.place(call)
            last = call.at
        log.info("sim.traffic_done", placed=self.stats.placed)
        return self.stats
