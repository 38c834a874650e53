"""The merged line (callers ∪ callbacks by join time) and the overflow policy: pure logic."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.callbacks.ordering import (
    merged_line,
    position_in_line,
    select_for_dispatch,
    snapshot_from_state,
)
from ivr.callbacks.policy import QueueLoad, RecentHandleTimes, decide, estimated_wait
from ivr.config import QueueConfig
from ivr.domain.calls import CALLBACK, Call
from ivr.domain.state import Member, QueueState, Waiter

# -- merged line --------------------------------------------------------------------------------


def test_callbacks_and_callers_are_served_by_join_time() -> None:
    line = merged_line([("c1", 100.0), ("c2", 130.0)], [("cb1", 90.0), ("cb2", 120.0), ("cb3", 140.0)])
    assert [e.key for e in line] == ["cb1", "c1", "cb2", "c2", "cb3"]
    assert position_in_line(line, "cb2") == 3
    assert position_in_line(line, "nope") is None


def test_one_free_agent_dials_only_the_head_of_the_line() -> None:
    line = merged_line([("c1", 100.0)], [("cb1", 90.0), ("cb2", 120.0)])
    assert select_for_dispatch(line, 1) == ["cb1"]
    # the caller who joined at 100 is served before the callback of 120
    line = merged_line([("c1", 100.0)], [("cb2", 120.0)])
    assert select_for_dispatch(line, 1) == []
    assert select_for_dispatch(line, 2) == ["cb2"]
    assert select_for_dispatch(line, 0) == []


def test_a_tie_goes_to_the_caller() -> None:
    line = merged_line([("c1", 100.0)], [("cb1", 100.0)])
    assert [e.key for e in line] == ["c1", "cb1"]
    assert select_for_dispatch(line, 1) == []


@given(
    callers=st.lists(st.floats(0, 1e6, allow_nan=False), max_size=30),
    callbacks=st.lists(st.floats(0, 1e6, allow_nan=False), max_size=30),
    free=st.integers(0, 10),
)
def test_a_callback_is_never_dialled_ahead_of_an_earlier_waiting_caller(
    callers: list[float], callbacks: list[float], free: int
) -> None:
    waiting = [(f"c{i}", ts) for i, ts in enumerate(callers)]
    cbs = [(f"cb{i}", ts) for i, ts in enumerate(callbacks)]
    chosen = select_for_dispatch(merged_line(waiting, cbs), free)
    joined = dict(cbs)
    assert len(chosen) <= free
    for cid in chosen:
        earlier_callers = sum(1 for _, ts in waiting if ts <= joined[cid])
        earlier_callbacks = sum(1 for other, ts in cbs if (ts, other) < (joined[cid], cid))
        # everyone ahead gets an agent first: there are enough free agents for them all
        assert earlier_callers + earlier_callbacks < free
    # and the earliest callbacks go first
    ordered = [cid for cid, _ in sorted(cbs, key=lambda x: (x[1], x[0]))]
    assert chosen == ordered[: len(chosen)]


def test_snapshot_from_the_state_tracker_leaves_our_callback_legs_out() -> None:
    q = QueueState("caf")
    q.add(Waiter("u1", "PJSIP/trunk-0001", "0611111111", 1, 100.0))
    q.add(Waiter("u2", "Local/caf@callback-queue-00000002;2", "", 2, 105.0))
    q.add(Waiter("u3", "Local/100@public-00000003;2", "0633333333", 3, 110.0))
    calls = {
        "u1": Call("u1", "u1", "PJSIP/trunk-0001", 99.0),
        "u3": Call("u3", "u3", "Local/100@public-00000003;2", 109.0),
    }
    calls["u3"].kind = CALLBACK  # our Originate's variable marked it as a callback leg
    q.members = {
        "Local/201@agents": Member("caf", "Local/201@agents", status=1, last_call=50),
        "Local/202@agents": Member("caf", "Local/202@agents", status=1, last_call=10),
        "Local/203@agents": Member("caf", "Local/203@agents", status=2, in_call=True),
        "Local/204@agents": Member("caf", "Local/204@agents", status=1, paused=True),
        "Local/205@agents": Member("caf", "Local/205@agents", status=5),
    }
    snap = snapshot_from_state(q, calls)
    assert snap.waiting == (("u1", 100.0),)
    assert snap.available == 2
    assert snap.free_members == ("Local/202@agents", "Local/201@agents")  # longest idle first
    assert snap.logged_in == 4  # 205's device is unavailable


# -- overflow policy -----------------------------------------------------------------------------

Q = QueueConfig(
    name="caf", service="caf", max_estimated_wait_s=600, max_callers_per_agent=5, offer_callback=True
)


def test_estimated_wait() -> None:
    assert estimated_wait(1, 300, logged_in=2, available=1) == 0.0
    assert estimated_wait(3, 300, logged_in=2, available=1) == 300.0
    assert estimated_wait(10, 240, logged_in=4) == 600.0
    assert estimated_wait(5, 240, logged_in=0) == 1200.0  # nobody logged in: as if one


def test_no_overflow_while_the_wait_is_short() -> None:
    d = decide(QueueLoad(position=3, waiting=2, logged_in=3, available=0, mean_handle_s=300), Q)
    assert (d.offer, d.reasons, d.estimated_wait_s) == ("none", (), 300.0)


@pytest.mark.parametrize(
    ("load", "reasons"),
    [
        (
            QueueLoad(position=30, waiting=29, logged_in=10, available=0, mean_handle_s=300),
            ("estimated_wait",),
        ),
        (
            QueueLoad(position=12, waiting=11, logged_in=2, available=0, mean_handle_s=60),
            ("callers_per_agent",),
        ),
        (QueueLoad(position=1, waiting=0, logged_in=0, available=0), ("no_agent",)),
        (
            QueueLoad(position=4, waiting=3, logged_in=2, available=0, mean_handle_s=300, closes_in_s=400),
            ("closing_soon",),
        ),
    ],
)
def test_each_overflow_reason(load: QueueLoad, reasons: tuple[str, ...]) -> None:
    d = decide(load, Q)
    assert d.reasons == reasons and d.offer == "callback" and d.overloaded


def test_closed_service_offers_a_callback_at_opening_or_an_appointment_if_too_far() -> None:
    tonight = QueueLoad(position=1, waiting=0, logged_in=0, available=0, is_open=False, opens_in_s=10 * 3600)
    d = decide(tonight, Q, callback_expiry_s=24 * 3600)
    assert d.offer == "callback" and d.reasons[0] == "closed"
    d = decide(tonight, Q, callback_expiry_s=8 * 3600)
    assert d.offer == "appointment"


def test_queue_without_offer_or_callbacks_disabled() -> None:
    busy = QueueLoad(position=30, waiting=29, logged_in=1, available=0, mean_handle_s=300)
    no_offer = QueueConfig(name="x", service="caf", offer_callback=False)
    assert decide(busy, no_offer).offer == "none" and decide(busy, no_offer).reasons
    assert decide(busy, Q, callbacks_enabled=False).offer == "appointment"


def test_recent_handle_times_forget_old_calls() -> None:
    times = RecentHandleTimes(size=3, horizon_s=100, wrapup_s=10)
    assert times.mean(0) is None
    for ts, talk in [(0, 100), (10, 200), (20, 300), (30, 400)]:
        times.add(ts, talk)
    assert times.mean(30) == pytest.approx((210 + 310 + 410) / 3)  # the first fell out of the window
    assert times.mean(125) == pytest.approx(410)  # older than the horizon
    times.add(40, float("nan"))
    assert len(times) == 3
    with pytest.raises(ValueError):
        RecentHandleTimes(size=0)


def test_line_order_is_total_and_stable() -> None:
    rng = random.Random(7)
    waiting = [(f"c{i}", float(rng.randint(0, 20))) for i in range(20)]
    cbs = [(f"cb{i}", float(rng.randint(0, 20))) for i in range(20)]
    a = merged_line(waiting, cbs)
    b = merged_line(list(reversed(waiting)), list(reversed(cbs)))
    assert a == b
