"""The dashboard reads only fields that the API really sends.

The page (``ivr/web/static/index.html``) is plain JavaScript with no build step and no
schema: a renamed KPI or member field would show a silent "—" to supervisors rather than
fail. So this test reads the field names the page uses on each kind of object and checks
them against what the producers emit for a real recorded scenario: the KPI report
(``KpiAccumulator.report``), the live queue snapshot (``Controller.queues_snapshot``) and
a callback request as the supervisors' API lists it (``CallbackRequest.public``).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ivr.callbacks.store import CallbackRequest
from ivr.controller import Controller
from ivr.domain.kpi import KpiAccumulator
from ivr.domain.state import StateTracker
from ivr.replay import transcript_events

PAGE = Path(__file__).resolve().parent.parent / "ivr" / "web" / "static" / "index.html"
FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"


def used(variable: str) -> set[str]:
    """The properties the page's script reads on a variable of that name (``k.asa_s`` ...)."""
    script = PAGE.read_text(encoding="utf-8")
    return set(re.findall(rf"\b{re.escape(variable)}\.([a-z_][a-z0-9_]*)\b", script))


def answered_run() -> tuple[StateTracker, KpiAccumulator]:
    tracker = StateTracker(keep_ended=None)
    kpi = KpiAccumulator()
    for event in [*tracker.feed_all(transcript_events(FIXTURES / "answered")), *tracker.flush()]:
        kpi.add(event)
    return tracker, kpi


def test_every_kpi_field_the_page_reads_is_in_the_report() -> None:
    _, kpi = answered_run()
    report: dict[str, Any] = kpi.report()
    overall = report["overall"]
    assert overall["asked_for_agent"] >= 1  # a real call, not an empty report
    page_fields = used("k")
    assert {"pickup_rate", "asked_for_agent", "handled_by_agent"} <= page_fields
    assert page_fields <= set(overall), sorted(page_fields - set(overall))
    for queue in report["queues"].values():
        assert page_fields <= set(queue)
    assert used("cb") <= set(overall["callbacks"])
    assert {"requested", "completed", "pending"} <= used("cb")


def test_every_live_queue_field_the_page_reads_is_in_the_snapshot() -> None:
    tracker, _ = answered_run()
    snapshot = Controller.queues_snapshot(SimpleNamespace(tracker=tracker))  # type: ignore[arg-type]
    queues = snapshot["queues"]
    assert queues, "the recorded scenario has a queue"
    for q in queues.values():
        assert used("q") <= set(q), sorted(used("q") - set(q))
        assert q["members"], "the recorded queue has members"
        for m in q["members"]:
            assert used("m") <= set(m), sorted(used("m") - set(m))
    assert {"paused", "ringing", "in_call", "status"} <= used("m")


def test_every_callback_field_the_page_reads_is_in_the_api_listing() -> None:
    values: dict[str, Any] = {
        f.name: 0 if f.type in ("int", "float") else "" for f in fields(CallbackRequest)
    }
    request = CallbackRequest(**values)
    listed = request.public()
    page_fields = used("c")
    assert {"id", "status", "number", "join_ts"} <= page_fields
    assert page_fields <= set(listed), sorted(page_fields - set(listed))
    assert "case" not in listed  # the case number never reaches the dashboard
