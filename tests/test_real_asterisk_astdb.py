"""The callback outcome kept in AstDB, on a real Asterisk 22 (``IVR_ASTERISK_BIN``).

``dialplans/dp-callback.conf`` writes each callback call's outcome to AstDB (family
``decroche-cb``) before the ``callback-result`` AGI, deletes it once the AGI says it was
recorded, and deletes a key named in ``IVR_CB_FORGET``; the dispatcher reads a kept one
back with ``DBGet``. Checked here: that the ``ivr`` user may run ``DBGet`` and not
``DBDel``/``DBPut`` (``main/db.c``), the exact shape of ``DBGet``'s answers (which the
simulator copies, ``ivr/sim/actions.py``), and the dialplan's three steps.

No PJSIP in the test build: the customer's ``Dial()`` ends at once with CHANUNAVAIL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from real_asterisk import (
    ENV_VAR,
    SKIP_REASON,
    AsteriskProcess,
)
from rigs import wait_for

from ivr.agi.server import AGIServer
from ivr.ami.client import AMIClient
from ivr.ami.errors import ActionError
from ivr.callbacks.dispatcher import OUTCOME_FAMILY
from ivr.config import default_config
from ivr.domain.ivr_ops import CallInfo, Clock, Decision, EventSink, Flow, SetVar

needs_asterisk = pytest.mark.skipif(not os.environ.get(ENV_VAR, "").strip(), reason=SKIP_REASON)
pytestmark = [pytest.mark.asterisk, needs_asterisk]


async def place_callback(ami: AMIClient, callback_id: str, *, forget: str = "") -> None:
    """A caller-first callback as the dispatcher places it (its customer leg fails at once)."""
    variables = [("IVR_CALLBACK_ID", callback_id), ("IVR_CALLBACK_DIAL", "3"), ("IVR_SERVICE", "caf")]
    if forget:
        variables.append(("IVR_CB_FORGET", forget))
    call = await ami.originate(
        "Local/0611111111@callback-customer",
        context="callback-caller-first",
        exten="caf",
        priority=1,
        variables=variables,
        dial_timeout_ms=5000,
    )
    async with asyncio.timeout(10):
        result = await call.result
    assert not result.ok  # the customer was not reached


async def kept(ami: AMIClient, key: str) -> str | None:
    try:
        reply = await ami.list_action("DBGet", {"Family": OUTCOME_FAMILY, "Key": key})
    except ActionError as exc:
        assert exc.message == "Database entry not found"
        return None
    [item] = reply.items
    assert (item.get("Family"), item.get("Key")) == (OUTCOME_FAMILY, key)
    return item.get("Val")


async def eventually(ami: AMIClient, key: str, want: str | None) -> None:
    async def there() -> bool:
        return await kept(ami, key) == want

    await wait_for(there, limit_s=10.0, what=f"{key} kept as {want!r}")


async def test_dbget_is_allowed_and_dbdel_dbput_are_not(ami: AMIClient) -> None:
    missing = await ami.action("DBGet", [("Family", OUTCOME_FAMILY), ("Key", "cbnosuch")], check=False)
    assert (missing.status, missing.message) == ("Error", "Database entry not found")
    for action in ("DBDel", "DBPut"):
        refused = await ami.action(
            action, [("Family", OUTCOME_FAMILY), ("Key", "cbnosuch"), ("Val", "x")], check=False
        )
        assert refused.status == "Error" and "permission denied" in (refused.message or "").lower()


async def test_an_outcome_no_controller_took_is_kept_and_read_back(ami: AMIClient) -> None:
    """No FastAGI server: the AGI fails, the key stays; DBGet's full answer; then forgotten."""
    await place_callback(ami, "cbkept1")
    await eventually(ami, "cbkept1", "3:CHANUNAVAIL")
    reply = await ami.list_action("DBGet", {"Family": OUTCOME_FAMILY, "Key": "cbkept1"})
    assert (reply.response.status, reply.response.message) == ("Success", "Result will follow")
    assert reply.response.get("EventList") == "start"
    [item] = reply.items
    assert item.name == "DBGetResponse"
    assert [k for k, _ in item.headers] == ["Event", "Family", "Key", "Val", "ActionID"]
    assert reply.complete is not None and reply.complete.name == "DBGetComplete"
    assert (reply.complete.get("EventList"), reply.complete.get("ListItems")) == ("Complete", "1")
    # The next call names it in IVR_CB_FORGET: its dialplan deletes it (its own key stays).
    await place_callback(ami, "cbkept2", forget="cbkept1")
    await eventually(ami, "cbkept2", "3:CHANUNAVAIL")
    assert await kept(ami, "cbkept1") is None


async def test_an_outcome_the_agi_recorded_is_deleted(asterisk: AsteriskProcess, ami: AMIClient) -> None:
    seen: list[CallInfo] = []

    def recorded(reason: str) -> Callable[[CallInfo, Clock, EventSink], Flow]:
        def flow(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
            seen.append(call)
            yield SetVar("IVR_REASON", reason)
            return Decision(action="hangup", service="caf", lang="", reason=reason)

        return flow

    for callback_id, reason, stays in (
        ("cbagi1", "callback_chanunavail", False),
        ("cbagi2", "callback_chanunavail_unchanged", False),
        ("cbagi3", "callback_chanunavail_unrecorded", True),
    ):
        server = AGIServer(
            default_config(), flows={"callback-result": recorded(reason)}, port=asterisk.config.agi_port
        )
        async with server:
            await place_callback(ami, callback_id)
            await wait_for(lambda: seen, limit_s=10.0, what="the callback-result AGI")
            assert seen.pop().args == (callback_id, "CHANUNAVAIL")
            await eventually(ami, callback_id, "3:CHANUNAVAIL" if stays else None)
