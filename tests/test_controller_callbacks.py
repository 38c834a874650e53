"""The callback feature end to end: simulated PBX (shipped dialplan) + controller + real Redis.

A caller of the CAF line asks for a callback in the IVR (menu option 4, the number it
calls from, confirmed); the controller records it, its dispatcher dials it agent-first
through ``Local/caf@callback-queue`` (the simulated app_queue answers that leg when the
agent connects, as Asterisk does), the customer answers, and the KPI counts the call as
handled by an agent, through the callback. The controller's other callback wiring is
checked here too: the supervisors' HTTP routes, the due appointments, and every event
going to the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rigs
from rigs import Rig, stored_events, wait_for

from ivr.appointments.requests import BookSlot
from ivr.appointments.slots import slots_for
from ivr.callbacks.dispatcher import DispatchSettings
from ivr.config import Config, default_config
from ivr.controller import APPOINTMENT_GRACE_S, Controller, Endpoints
from ivr.demo import start_of_demo_day
from ivr.domain.kpi import KpiAccumulator, report_document
from ivr.sim.engine import OriginateRequest

CUSTOMER = "0612345678"


def dispatch_settings() -> DispatchSettings:
    """Real-time intervals scaled down for a simulation at x40."""
    return DispatchSettings(
        poll_interval_s=0.1, check_interval_s=2.0, outcome_grace_s=5.0, sweep_interval_s=5.0, lease_s=5.0
    )


def start_rig(
    redis_url: str, tmp_path: Path, *, config: Config | None = None, web: bool = False
) -> Awaitable[Rig]:
    """The rig with the dispatcher's and the appointments' timers scaled down to the simulation."""
    return rigs.start_rig(
        redis_url,
        tmp_path,
        seed=11,
        secret="cb-secret",
        config=config,
        web=web,
        web_port=0,
        dispatch=dispatch_settings(),
        appointment_poll_s=0.1,
        callback_grace_s=2.0,
    )


@pytest.fixture
async def rig(redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    r = await start_rig(redis_url, tmp_path, web=True)
    try:
        yield r
    finally:
        await r.stop()


def caller(digits: str, number: str = CUSTOMER, line: str = "0199000001") -> OriginateRequest:
    """A call from the trunk, placed as the traffic generator places it (survey: no answer)."""
    return OriginateRequest(
        f"Local/{line}@from-trunk",
        context="sim-callers",
        exten="caller",
        cid_num=number,
        cid_name="Client",
        variables=[("WAIT1", "6.5"), ("DIGITS", digits), ("PATIENCE", "900"), ("SURVEY", "")],
        action_id=f"call-{number}",
    )


async def a_callback_completed(controller: Controller) -> bool:
    """Whether a callback reached its customer and an agent (closed ``completed``)."""
    assert controller.callback_store is not None
    closed = await controller.callback_store.closed_requests()
    return any(r.status == "completed" for r in closed)


# The caller keys 4 (callback) in the main menu, # (no case number), then 1 every 3 s: the
# first while the options are read (1: this number), one of the next once the number has
# been read back (1: confirm); keys pressed while a prompt plays are dropped, as on a phone.
ASK_CALLBACK = "4WW#WW" + "1WW" * 8


async def test_a_callback_requested_in_the_ivr_is_dialled_connected_and_counted(rig: Rig) -> None:
    controller = rig.controller
    assert controller.callbacks is not None and controller.callback_store is not None
    rig.sim.originate(caller(ASK_CALLBACK))

    await wait_for(lambda: a_callback_completed(controller), 60, "the callback completed")
    # the supervisors' API lists it among the closed ones, number masked
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{controller.web_port}/api/callbacks"
        async with http.get(url, params={"status": "closed"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.post(f"{url}/cbnosuchid/cancel") as resp:
            assert resp.status == 404
    (item,) = body["callbacks"]
    assert item["status"] == "completed" and item["number"] == ""  # closed: the number is gone
    await rig.sim.idle(real_seconds=30)
    await asyncio.sleep(0.5)
    await controller.stop()

    events = await stored_events(rig.redis_url)
    requested = [e for e in events if e.type == "callback.requested"]
    assert len(requested) == 1
    call = requested[0].call
    mine = [e for e in events if e.call == call]
    types = [e.type for e in sorted(mine, key=lambda e: e.ts)]
    assert types.count("callback.dialing") == 1 and types.count("callback.connected") == 1
    assert "callback.offered" in types and "queue.join" not in types  # never queued: called back
    ivr_end = next(e for e in mine if e.type == "ivr.end")
    assert ivr_end.data["action"] == "callback"
    # the leg placed by the dispatcher is not an inbound call
    legs = {e.call for e in events if e.type == "call.start" and e.data.get("kind") == "callback"}
    assert legs and call not in legs
    # every event the controller emits goes to the service too: the agent's talk time of the
    # callback is now a recent handle time of the queue (the estimated waits use it)
    completes = [e for e in events if e.type == "agent.complete" and e.queue == "caf"]
    assert completes and len(controller.callbacks.handle_times["caf"]) == len(completes)

    acc = KpiAccumulator(controller.kpi_settings)
    for e in events:
        acc.add(e)
    overall = report_document(acc.report(None, None))["kpi"]["overall"]
    assert overall["asked_for_agent"] == 1
    assert overall["handled_by_agent"] == 1
    assert overall["handled_by_callback"] == 1
    assert overall["handled_immediately"] == 0
    assert overall["callbacks"]["completed"] == 1 and overall["callbacks"]["offered"] == 1
    assert overall["pickup_rate"] == 1.0


async def test_due_appointments_become_callbacks_in_line_at_the_slot_time(
    redis_url: str, redis_client: Any
) -> None:
    base = default_config()
    caf = base.services["caf"]
    appointments = replace(caf.appointments, enabled=True, queue="caf")
    config = replace(base, services={**base.services, "caf": replace(caf, appointments=appointments)})
    now = [start_of_demo_day(time.time())]
    controller = Controller(config, Endpoints(redis_url=redis_url), clock=lambda: now[0], web=False)
    controller.build_callbacks(redis_client)
    store, booked = controller.callback_store, controller.appointments
    assert store is not None and booked is not None
    first, second = list(slots_for(appointments, caf.hours, now[0]))[:2]
    on_time = await booked.book(
        BookSlot("caf", first, 2, "0698765432", "call-7.1", "caf", now[0], case="12345678")
    )
    late = await booked.book(BookSlot("caf", second, 2, "0611111111", "call-8.1", "caf", now[0]))
    assert on_time.booking is not None and late.booking is not None

    assert await controller.dispatch_due_appointments() == 0  # not yet
    assert await store.open_requests() == []

    now[0] = first.start + 60
    assert await controller.dispatch_due_appointments() == 1
    (req,) = await store.open_requests()
    assert req.call == "call-7.1" and req.number == "0698765432" and req.case == "12345678"
    assert req.join_ts == first.start  # its place in line: the slot's start
    assert (req.queue, req.service, req.window_start) == ("caf", "caf", first.start)
    done = await booked.get(on_time.booking.id)
    assert done is not None and done.status == "dispatched" and done.number == ""
    assert await controller.dispatch_due_appointments() == 0  # once only

    # a controller that was down past the slot (and its grace): closed, never called
    now[0] = second.end + APPOINTMENT_GRACE_S + 1
    assert await controller.dispatch_due_appointments() == 0
    expired = await booked.get(late.booking.id)
    assert expired is not None and expired.status == "expired"
    assert [r.call for r in await store.open_requests()] == ["call-7.1"]


# The caller keys 4 (callback) and # (no case number), then 3 -- "an appointment" -- while the
# options are read, then 1 every 1.5 s: dropped while the slot is said, it takes the first slot
# read ("1: this slot") and confirms it ("1: confirm").
BOOK_FIRST_SLOT = "4WW#WW3WW" + "1WWW" * 30


async def test_a_caller_books_a_slot_in_the_ivr_and_is_called_back_at_the_slot_time(
    redis_url: str, tmp_path: Path
) -> None:
    base = default_config()
    caf = base.services["caf"]
    # short slots, no lead time: the first slot starts within minutes of the call
    appointments = replace(caf.appointments, enabled=True, queue="caf", slot_minutes=5, min_lead_minutes=0)
    config = replace(base, services={**base.services, "caf": replace(caf, appointments=appointments)})
    rig = await start_rig(redis_url, tmp_path, config=config)
    controller = rig.controller

    async def time_passes() -> None:
        # The simulated clock moves with the PBX's own timers: with nobody on the phone
        # until the slot, the wall clock must drive it.
        while True:
            await rig.sim.run_for(5)

    ticking = asyncio.create_task(time_passes())
    try:
        booked_at = rig.sim.now()
        rig.sim.originate(caller(BOOK_FIRST_SLOT))
        await wait_for(lambda: a_callback_completed(controller), 90, "the appointment called back")
        await asyncio.sleep(0.5)
        await controller.stop()
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        await rig.stop()

    events = await stored_events(rig.redis_url)
    (booked,) = [e for e in events if e.type == "appointment.booked"]
    slot = float(booked.data["slot"])
    assert booked_at < slot <= booked_at + 5 * 60 + 60  # the first slot read: within 5 minutes
    ivr_end = next(e for e in events if e.type == "ivr.end" and e.call == booked.call)
    assert (ivr_end.data["action"], ivr_end.data["reason"]) == ("callback", "appointment")
    # nothing is dialled before the slot; at the slot the booking becomes a callback in line
    requested = [e for e in events if e.type == "callback.requested"]
    assert len(requested) == 1 and requested[0].ts >= slot
    dials = [e for e in events if e.type == "callback.dialing"]
    assert len(dials) == 1 and slot <= dials[0].ts < slot + 5 * 60
    assert float(dials[0].data["original_join_ts"]) == slot  # its place in line: the slot's start
    assert [e.type for e in events].count("callback.connected") == 1
