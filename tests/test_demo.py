"""``ivr demo`` and the simulated callers of the shipped profiles: in overload, callbacks happen.

The ``overflow`` profile of ``ivr/sim/product.toml`` has part of its callers take the callback
they are offered (``[traffic] callback_share``/``callback_keys``); a short demo run of it --
simulator, controller, dispatcher and an embedded Redis, fast -- reports callbacks requested
and completed in its KPI block.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ivr.demo import run_demo
from ivr.sim.conf_loader import product_config
from ivr.sim.config import DEFAULT_CALLBACK_KEYS
from ivr.sim.engine import Simulator
from ivr.sim.traffic import PlannedCall, TrafficGenerator

START = 1_800_000_000.0


def _plans(profile: str, count: int, **traffic: object) -> list[PlannedCall]:
    cfg = product_config(profile)
    cfg.traffic = replace(cfg.traffic, **traffic)  # type: ignore[arg-type]
    gen = TrafficGenerator(Simulator(cfg, seed=5, speed=float("inf"), start_epoch=START), seed=5)
    return [gen.plan(0.0) for _ in range(count)]


def test_overflow_callers_take_callbacks_in_the_configured_share() -> None:
    cfg = product_config("overflow")
    assert cfg.traffic.callback_share == 0.6 and cfg.traffic.callback_keys == DEFAULT_CALLBACK_KEYS
    plans = _plans("overflow", 1000)
    takers = [p for p in plans if p.accepts_callback]
    assert 0.55 < len(takers) / len(plans) < 0.65
    assert all(p.digits.endswith(DEFAULT_CALLBACK_KEYS) for p in takers)
    assert not any(p.digits.endswith("1WW") for p in plans if not p.accepts_callback)
    # the normal profile's callers wait instead
    assert not any(p.accepts_callback for p in _plans("normal", 300))


def test_without_the_keys_the_same_seed_places_the_same_calls() -> None:
    """``callback_keys = ""``: the same draws, nothing pressed -- a fair run without callbacks."""
    taking = _plans("overflow", 300)
    waiting = _plans("overflow", 300, callback_keys="")
    assert [replace(p, digits=p.digits.removesuffix(DEFAULT_CALLBACK_KEYS)) for p in taking] == waiting


async def test_a_short_overflow_demo_reports_callbacks_requested_and_completed() -> None:
    # 600 simulated seconds of the overflow profile in 6 real ones.
    args = argparse.Namespace(duration=6.0, seed=1, speed=100.0, profile="overflow", config=None, web_port=0)
    report = await run_demo(args)
    assert report is not None
    overall = report["kpi"]["overall"]
    callbacks = overall["callbacks"]
    assert overall["calls"] > 30
    assert callbacks["offered"] >= callbacks["requested"] > 0
    assert callbacks["completed"] > 0
