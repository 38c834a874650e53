"""Tests of the live state tracker (ivr.domain.state) on the recorded Asterisk 22 transcripts.

Every trap listed in tests/fixtures/asterisk/FACTS.md that concerns queues, members or call
outcomes has a test here, driven by the real recorded events; variations Asterisk produces
in other runs (other interleavings, filtered event classes, a reconnect) are made by editing
those real event lists rather than by writing events from scratch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from ivr.domain.calls import ASKED_FOR_AGENT, OUTCOMES
from ivr.domain.events import EVENT_TYPES, CallEvent
from ivr.domain.normalise import (
    agi_script,
    agi_set_variable,
    agi_set_variables,
    local_half,
    member_fields,
    parse_duration,
    queue_app_target,
    ring_ms,
    to_int,
)
from ivr.domain.state import StateTracker
from ivr.protocol.ami import Event
from ivr.replay import transcript_events

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"


# ------------------------------------------------------------------------------- helpers
@functools.cache
def _events(scenario: str) -> tuple[Event, ...]:
    return tuple(transcript_events(FIXTURES / scenario))


def events_of(scenario: str) -> list[Event]:
    """The recorded events of a scenario (a fresh list: tests edit copies)."""
    return list(_events(scenario))


def run(events: Iterable[Event], tracker: StateTracker | None = None) -> tuple[StateTracker, list[CallEvent]]:
    tr = tracker if tracker is not None else StateTracker(keep_ended=None)
    out = tr.feed_all(events)
    out.extend(tr.flush())
    return tr, out


def types(out: Iterable[CallEvent]) -> list[str]:
    return [e.type for e in out]


def only(out: Iterable[CallEvent], type_: str) -> CallEvent:
    found = [e for e in out if e.type == type_]
    assert len(found) == 1, f"expected one {type_}, got {len(found)}"
    return found[0]


def edit(event: Event, **fields: str) -> Event:
    return Event({**event.fields, **fields}, None, event.name)


def drop(events: Sequence[Event], pred: Callable[[Event], bool]) -> list[Event]:
    kept = [e for e in events if not pred(e)]
    assert len(kept) < len(events), "the filter removed nothing: the test would prove nothing"
    return kept


def is_var(name: str) -> Callable[[Event], bool]:
    return lambda e: e.name == "VarSet" and e.fields.get("Variable") == name


def first(events: Sequence[Event], pred: Callable[[Event], bool]) -> int:
    return next(i for i, e in enumerate(events) if pred(e))


def synthetic(name: str, ts: float, **fields: str) -> Event:
    return Event({"Event": name, "Timestamp": f"{ts:.6f}", **fields}, None, name)


def caller_of(events: Sequence[Event]) -> str:
    join = events[first(events, lambda e: e.name == "QueueCallerJoin")]
    return join.fields["Uniqueid"]


# ---------------------------------------------------------------------- timeout vs abandon
def test_timeout_emits_queue_caller_abandon_but_is_a_timeout() -> None:
    events = events_of("timeout")
    assert any(e.name == "QueueCallerAbandon" for e in events)  # the trap is really there
    tr, out = run(events)
    assert "queue.abandon" not in types(out)
    timeout = only(out, "queue.timeout")
    assert timeout.data["wait_s"] == 10
    assert timeout.data["status"] == "TIMEOUT"
    assert timeout.queue == "support" and timeout.service == "caf"
    [call] = tr.ended
    assert (call.outcome, call.wait_s, call.queue) == ("timeout", 10, "support")
    assert tr.queues["support"].timeouts == 1 and tr.queues["support"].abandoned == 0


def test_timeout_without_queuestatus_varset_is_still_a_timeout() -> None:
    # VarSet belongs to the 'dialplan' class, which a manager.conf may not grant: the
    # ordering rule (no hangup requested before the abandon) must decide alone.
    events = drop(events_of("timeout"), lambda e: e.name == "VarSet")
    _, out = run(events)
    assert "queue.abandon" not in types(out)
    assert only(out, "queue.timeout").data["wait_s"] == 10


def test_abandon_is_an_abandon_with_or_without_varset() -> None:
    events = events_of("abandoned")
    for variant in (events, drop(events, lambda e: e.name == "VarSet")):
        tr, out = run(variant)
        assert "queue.timeout" not in types(out)
        assert only(out, "queue.abandon").data["wait_s"] == 9
        assert [c.outcome for c in tr.ended] == ["abandoned"]


def test_abandon_detected_from_the_local_phone_hangup_alone() -> None:
    # Without the HangupRequest on ;2, the ;1 ("the caller's phone") Hangup that precedes the
    # QueueCallerAbandon still tells a hangup from a timeout.
    events = drop(events_of("abandoned"), lambda e: e.name in ("HangupRequest", "SoftHangupRequest"))
    tr, _ = run(events)
    assert [c.outcome for c in tr.ended] == ["abandoned"]


def test_abandon_decision_waits_for_the_caller_channel_to_leave_queue() -> None:
    events = events_of("timeout")
    tr = StateTracker()
    i = first(events, lambda e: e.name == "QueueCallerAbandon")
    out = tr.feed_all(events[: i + 1])
    assert not {"queue.abandon", "queue.timeout"} & set(types(out))
    call = tr.calls[caller_of(events)]
    assert call.pending is not None and call.pending.abandon
    out = tr.feed_all(events[i + 1 :])
    assert types(out).count("queue.timeout") == 1


def test_abandon_and_timeout_of_one_exit_share_one_idempotency_id() -> None:
    # Two observers that classify the same exit differently (one missed the QUEUESTATUS and
    # saw a hangup request) must not both be counted: the exit's id does not depend on it.
    events = events_of("timeout")
    _, out = run(events)
    timeout = only(out, "queue.timeout")
    i = first(events, lambda e: e.name == "QueueCallerAbandon")
    uid = caller_of(events)
    request = synthetic("HangupRequest", float(events[i].fields["Timestamp"]) - 0.001, Uniqueid=uid)
    changed = [*events[:i], request, *events[i:]]
    _, out2 = run(drop(changed, is_var("QUEUESTATUS")))
    abandon = only(out2, "queue.abandon")
    assert abandon.id == timeout.id


def test_queuestatus_leaveempty_and_withdraw_are_not_abandons() -> None:
    events = events_of("timeout")
    for status, outcome in (("LEAVEEMPTY", "leave_empty"), ("WITHDRAW", "withdrawn")):
        changed = [edit(e, Value=status) if is_var("QUEUESTATUS")(e) else e for e in events]
        tr, out = run(changed)
        assert only(out, "queue.timeout").data["status"] == status
        assert [c.outcome for c in tr.ended] == [outcome]


# ---------------------------------------------------------------------------- exit key
def test_exit_with_key_emits_only_leave_and_is_exit_key() -> None:
    events = events_of("exit_with_key")
    names = {e.name for e in events}
    assert "QueueCallerAbandon" not in names and not any(is_var("QUEUESTATUS")(e) for e in events)
    tr, out = run(events)
    exit_key = only(out, "queue.exit_key")
    assert exit_key.data["key"] == "1" and exit_key.data["wait_s"] == 7
    assert not {"queue.abandon", "queue.timeout"} & set(types(out))
    [call] = tr.ended
    assert call.outcome == "exit_key" and call.asked_for_agent


def test_exit_key_found_even_when_the_exit_context_is_the_callers_own() -> None:
    # If queues.conf 'context' were the caller's context, the leave's Context/Exten would not
    # differ from the join's; the next dialplan step (no AgentConnect) still classifies it.
    events = events_of("exit_with_key")
    join = events[first(events, lambda e: e.name == "QueueCallerJoin")]
    same = {"Context": join.fields["Context"], "Exten": join.fields["Exten"]}
    changed = [edit(e, **same) if e.name == "QueueCallerLeave" else e for e in events]
    tr, out = run(changed)
    assert "queue.exit_key" in types(out)
    assert [c.outcome for c in tr.ended] == ["exit_key"]


# ---------------------------------------------------------------------------- join empty
def test_joinempty_has_no_queue_event_and_comes_from_queuestatus() -> None:
    events = events_of("join_empty")
    assert not any(e.name.startswith("QueueCaller") for e in events)
    tr, out = run(events)
    refused = only(out, "queue.join_empty")
    assert refused.queue == "empty"  # from the Queue() AppData: no event names it
    assert refused.data["status"] == "JOINEMPTY"
    assert "queue.join" not in types(out)
    [call] = tr.ended
    assert (call.outcome, call.queue, call.wait_s) == ("join_empty", "empty", None)
    assert tr.queues["empty"].join_empty == 1


# ------------------------------------------------------------------- leave before connect
def test_leave_before_connect_is_not_an_abandon() -> None:
    events = events_of("answered")
    i = first(events, lambda e: e.name == "QueueCallerLeave")
    j = first(events, lambda e: e.name == "AgentConnect")
    assert i < j and all(e.name == "VarSet" for e in events[i + 1 : j])  # the recorded order
    tr = StateTracker()
    tr.feed_all(events[:j])
    uid = caller_of(events)
    assert tr.queues["support"].count == 0
    assert tr.calls[uid].outcome() != "abandoned"
    tr.feed(events[j])
    assert tr.calls[uid].answered
    member = tr.member("support", "Local/201@agents")
    assert member is not None and member.in_call
    _, out = run(events)
    assert not {"queue.abandon", "queue.timeout", "queue.exit_key"} & set(types(out))
    assert types(out).count("queue.leave") == 1
    assert only(out, "agent.connect").data["wait_s"] == 2


def test_answered_call_summary_and_event_sequence() -> None:
    tr, out = run(events_of("answered"))
    assert types(out) == [
        "call.start",
        "queue.join",
        "agent.ring",
        "queue.leave",
        "agent.connect",
        "agent.complete",
        "call.end",
    ]
    [call] = tr.ended
    assert (call.outcome, call.wait_s, call.talk_s, call.agent) == ("answered", 2, 6, "Local/201@agents")
    assert call.caller == "0611000001" and call.service == "caf"
    assert call.ivr_path == ("agi:ivr", "IVR_CHOICE=1", "IVR_SERVICE=caf", "agi:after-queue")
    end = only(out, "call.end")
    assert end.data["outcome"] == "answered" and end.data["talk_s"] == 6
    assert {e.call for e in out} == {call.call}
    assert all(e.type in EVENT_TYPES for e in out)


# --------------------------------------------------------------------------- ring times
def test_ring_no_answer_ring_time_is_ms_and_connect_ring_time_is_s() -> None:
    events = events_of("ring_no_answer")
    rna = events[first(events, lambda e: e.name == "AgentRingNoAnswer")]
    connect = events[first(events, lambda e: e.name == "AgentConnect")]
    assert rna.fields["RingTime"] == "15000" and connect.fields["RingTime"] == "2"
    tr, out = run(events)
    noanswer = only(out, "agent.noanswer")
    assert noanswer.data["ring_ms"] == 15000 and noanswer.agent == "Local/201@agents"
    connected = only(out, "agent.connect")
    assert connected.data["ring_s"] == 2 and connected.agent == "Local/202@agents"
    assert ring_ms(rna.fields, rna.name) == 15000
    assert ring_ms(connect.fields, connect.name) == 2000
    assert [(c.outcome, c.wait_s, c.agent) for c in tr.ended] == [("answered", 19, "Local/202@agents")]


def test_two_dialend_for_one_unanswered_ring_count_once() -> None:
    events = events_of("timeout")
    dest = events[first(events, lambda e: e.name == "AgentRingNoAnswer")].fields["DestUniqueid"]
    statuses = [
        e.fields["DialStatus"] for e in events if e.name == "DialEnd" and e.fields.get("DestUniqueid") == dest
    ]
    assert statuses == ["NOANSWER", "CANCEL"]
    tr, out = run(events)
    assert types(out).count("agent.noanswer") == 1
    member = tr.member("support", "Local/201@agents")
    assert member is not None and not member.ringing


def test_member_is_ringing_between_agentcalled_and_the_end_of_the_ring() -> None:
    events = events_of("exit_with_key")
    tr = StateTracker()
    i = first(events, lambda e: e.name == "AgentCalled")
    tr.feed_all(events[: i + 1])
    member = tr.member("support", "Local/201@agents")
    assert member is not None and member.ringing
    tr.feed_all(events[i + 1 :])  # the caller's key cancels the ring (DialEnd CANCEL)
    assert not member.ringing and not member.in_call


# ---------------------------------------------------------------------------- members
def test_queuememberstatus_incall_zero_does_not_end_a_call() -> None:
    events = events_of("answered")
    statuses = [e for e in events if e.name == "QueueMemberStatus"]
    assert statuses and all(e.fields["InCall"] == "0" for e in statuses)
    tr = StateTracker()
    i = first(events, lambda e: e.name == "AgentConnect")
    tr.feed_all(events[: i + 1])
    member = tr.member("support", "Local/201@agents")
    assert member is not None and member.in_call and not member.available
    tr.feed(edit(statuses[0], Timestamp=events[i].fields["Timestamp"]))  # InCall: 0 during the call
    assert member.in_call
    tr.feed_all(events[i + 1 :])
    assert not member.in_call and member.calls_taken == 1 and member.status == 1 and member.available


def test_member_admin_events() -> None:
    tr, out = run(events_of("member_admin"))
    assert types(out) == [
        "member.added",
        "member.paused",
        "member.unpaused",
        "member.paused",
        "member.unpaused",
        "member.removed",
    ]
    added = out[0]
    assert (added.agent, added.queue, added.data["member_name"]) == (
        "Local/203@agents",
        "support",
        "Agent 203",
    )
    assert out[1].data["reason"] == "lunch" and out[3].data["reason"] == "meeting"
    assert out[3].agent == "Local/201@agents"
    assert all(e.call == "" for e in out)
    assert tr.member("support", "Local/203@agents") is None  # removed
    m201 = tr.member("support", "Local/201@agents")
    assert m201 is not None and not m201.paused and m201.paused_reason == ""


def test_member_fields_name_traps() -> None:
    events = events_of("member_admin")
    item = next(e for e in events if e.name == "QueueMember" and e.fields.get("Name") == "Agent 203")
    event = next(e for e in events if e.name == "QueueMemberAdded")
    assert {"Name", "Location"} <= set(item.fields) and not {"MemberName", "Interface"} & set(item.fields)
    assert {"MemberName", "Interface"} <= set(event.fields) and not {"Name", "Location"} & set(event.fields)
    from_item = member_fields(item.fields, from_list_item=True)
    from_event = member_fields(event.fields, from_list_item=False)
    assert (from_item.interface, from_item.name) == ("Local/203@agents", "Agent 203")
    assert (from_event.interface, from_event.name) == ("Local/203@agents", "Agent 203")
    assert from_event.in_call is None  # never trusted from events


# ------------------------------------------------- state against Asterisk's own QueueStatus
def _list_blocks(events: Sequence[Event]) -> list[tuple[int, list[Event]]]:
    """(index of the first item, items) of each QueueStatus answer in a recording."""
    blocks: list[tuple[int, list[Event]]] = []
    current: list[Event] = []
    start = 0
    for i, e in enumerate(events):
        if e.name in ("QueueParams", "QueueMember", "QueueEntry"):
            if not current:
                start = i
            current.append(e)
        elif e.name == "QueueStatusComplete" and current:
            blocks.append((start, current))
            current = []
    return blocks


@pytest.mark.parametrize("scenario", ["abandoned", "concurrent", "member_admin"])
def test_tracked_state_matches_asterisks_queuestatus(scenario: str) -> None:
    events = events_of(scenario)
    blocks = _list_blocks(events)
    assert blocks
    tr = StateTracker()
    fed = 0
    compared_members = 0
    for start, items in blocks:
        tr.feed_all(events[fed:start])
        fed = start
        for item in items:
            f = item.fields
            q = tr.queues.get(f["Queue"])
            if item.name == "QueueParams" and q is not None:
                assert q.count == int(f["Calls"])  # 'Calls' here, 'Callers' in QueueSummary
            elif item.name == "QueueEntry":
                assert q is not None
                waiter = q.waiting[f["Uniqueid"]]
                assert waiter.position == int(f["Position"])
                assert waiter.caller == f["CallerIDNum"]
            elif item.name == "QueueMember" and q is not None and f["Location"] in q.members:
                m = q.members[f["Location"]]
                assert m.name == f["Name"]
                assert m.paused == (f["Paused"] == "1") and m.paused_reason == f["PausedReason"]
                assert m.in_call == (f["InCall"] == "1")
                assert m.status == int(f["Status"])
                compared_members += 1
    assert compared_members > 0


# ------------------------------------------------------------------------ interleavings
def test_concurrent_outcomes() -> None:
    tr, _ = run(events_of("concurrent"))
    assert [(c.outcome, c.wait_s, c.talk_s) for c in tr.ended] == [
        ("answered", 1, 6),
        ("answered", 1, 6),
        ("answered", 7, 6),
        ("answered", 7, 6),
        ("answered", 13, 6),
        ("answered", 13, 6),
    ]
    assert [c.agent[6:9] for c in tr.ended] == ["201", "202", "201", "202", "201", "202"]
    assert not tr.calls and tr.queues["support"].count == 0
    assert all(not m.in_call for m in tr.queues["support"].members.values())


def test_agent_complete_after_the_caller_hangup_is_waited_for() -> None:
    events = events_of("concurrent")
    reordered: list[Event] = []
    held: dict[str, Event] = {}
    for e in events:
        uid = e.fields.get("Uniqueid", "")
        if e.name == "AgentComplete":
            held[uid] = e
            continue
        reordered.append(e)
        if e.name == "Hangup" and uid in held:
            late = held.pop(uid)
            reordered.append(edit(late, Timestamp=e.fields["Timestamp"]))
    assert not held
    _, reference = run(events)
    tr, out = run(reordered)
    assert [(c.outcome, c.wait_s, c.talk_s) for c in tr.ended] == [
        ("answered", w, 6) for w in (1, 1, 7, 7, 13, 13)
    ]
    assert sorted((e.type, e.call) for e in out) == sorted((e.type, e.call) for e in reference)
    ends = [e for e in out if e.type == "call.end"]
    assert all(e.data["talk_s"] == 6 for e in ends)


def test_queuestatus_before_or_after_agentcomplete_changes_nothing() -> None:
    events = events_of("concurrent")
    swapped = list(events)
    for i in range(len(swapped) - 1):
        a, b = swapped[i], swapped[i + 1]
        if a.name == "AgentComplete" and is_var("QUEUESTATUS")(b):
            swapped[i], swapped[i + 1] = b, a
        elif is_var("QUEUESTATUS")(a) and b.name == "AgentComplete":
            swapped[i], swapped[i + 1] = b, a
    assert swapped != events
    _, out1 = run(events)
    _, out2 = run(swapped)
    assert sorted((e.id, e.type) for e in out1) == sorted((e.id, e.type) for e in out2)


def test_missing_agent_complete_ends_the_call_after_the_grace_period() -> None:
    events = drop(events_of("answered"), lambda e: e.name == "AgentComplete")
    tr = StateTracker(end_grace_s=5.0)
    out = tr.feed_all(events)
    assert "call.end" not in types(out)
    assert len(tr.calls) == 1
    hangup_ts = max(float(e.fields["Timestamp"]) for e in events if e.name == "Hangup")
    assert tr.tick(hangup_ts + 4.0) == ()
    out = list(tr.tick(hangup_ts + 5.0))
    end = only(out, "call.end")
    assert end.data["outcome"] == "answered"
    connect = float(next(e for e in events if e.name == "AgentConnect").fields["Timestamp"])
    assert end.data["talk_s"] == int(hangup_ts) - int(connect)
    assert not tr.calls


# --------------------------------------------------------------- outcomes beyond the queue
def _ivr_var(event: Event, name: str, value: str, dt: float = 0.0) -> Event:
    ts = float(event.fields["Timestamp"]) + dt
    return edit(event, Event="VarSet", Variable=name, Value=value, Timestamp=f"{ts:.6f}")


def test_callback_requested_from_the_exit_key_agi() -> None:
    events = events_of("exit_with_key")
    i = first(events, lambda e: e.name == "QueueCallerLeave")
    uid = caller_of(events)
    var = Event({**_ivr_var(events[i], "IVR_ACTION", "callback", 0.5).fields}, None, "VarSet")
    assert var.fields["Uniqueid"] == uid
    tr, out = run([*events[: i + 1], var, *events[i + 1 :]])
    [call] = tr.ended
    assert call.outcome == "callback_requested" and call.queue_outcome == "exit_key"
    assert call.asked_for_agent
    assert only(out, "call.end").data["outcome"] == "callback_requested"


def test_the_ivr_variables_of_an_agi_mset_line_count_without_their_varsets() -> None:
    # A manager.conf that filters VarSet out still leaves AGIExecStart: our IVR's MSet line.
    events = events_of("exit_with_key")
    i = first(events, lambda e: e.name == "QueueCallerLeave")
    uid = caller_of(events)
    ts = float(events[i].fields["Timestamp"]) + 0.5
    line = "EXEC MSet IVR_ACTION=callback,IVR_QUEUE=caf,IVR_CASE=,OTHER=1"
    start = edit(events[i], Event="AGIExecStart", Command=line, Timestamp=f"{ts:.6f}")
    start = Event(dict(start.fields), None, "AGIExecStart")
    assert start.fields["Uniqueid"] == uid
    tr, out = run([*events[: i + 1], start, *events[i + 1 :]])
    [call] = tr.ended
    assert call.outcome == "callback_requested" and call.queue_outcome == "exit_key"
    assert only(out, "call.end").data["outcome"] == "callback_requested"


def test_asked_for_agent_then_hung_up_before_the_queue() -> None:
    events = events_of("answered")
    i = first(events, lambda e: is_var("IVR_SERVICE")(e))
    uid = events[i].fields["Uniqueid"]
    action = Event(_ivr_var(events[i], "IVR_ACTION", "queue", 0.001).fields, None, "VarSet")
    hangup = synthetic("Hangup", float(events[i].fields["Timestamp"]) + 1, Uniqueid=uid, Cause="16")
    tr, out = run([*events[: i + 1], action, hangup])
    [call] = tr.ended
    assert call.outcome == "abandoned_before_queue" and call.asked_for_agent
    assert "abandoned_before_queue" in ASKED_FOR_AGENT and "ivr_only" not in ASKED_FOR_AGENT
    assert only(out, "call.end").data["asked_for_agent"] is True


def test_ivr_only_call() -> None:
    tr, out = run(events_of("agi_hangup"))
    [call] = tr.ended
    assert call.outcome == "ivr_only" and not call.asked_for_agent and call.kind == "inbound"
    assert types(out) == ["call.start", "call.end"]
    assert only(out, "call.end").data["asked_for_agent"] is False


def test_callback_legs_are_not_inbound_calls() -> None:
    tr, out = run(events_of("callback_originate_ok"))
    [leg] = tr.ended
    assert leg.kind == "callback" and leg.outcome == "callback_leg" and not leg.asked_for_agent
    assert all(e.data.get("callback_id") == "cb-42" for e in out)
    tr, _ = run(events_of("callback_originate_fail"))
    assert tr.ended and all(c.kind == "callback" for c in tr.ended)


def test_channels_without_ivr_or_queue_activity_are_not_calls() -> None:
    tr, out = run(events_of("actions"))  # a plain Wait() call
    assert out == [] and not tr.ended
    assert not tr.channels and not tr.calls


def test_all_outcomes_are_documented() -> None:
    seen = set()
    for scenario in ("answered", "abandoned", "timeout", "exit_with_key", "join_empty", "agi_hangup"):
        tr, _ = run(events_of(scenario))
        seen |= {c.outcome for c in tr.ended}
    assert seen <= OUTCOMES
    assert seen == {"answered", "abandoned", "timeout", "exit_key", "join_empty", "ivr_only"}


# ----------------------------------------------------------------- determinism and privacy
def test_replay_is_deterministic() -> None:
    events = events_of("mixed_a")
    _, out1 = run(events)
    _, out2 = run(events)
    assert out1 == out2
    assert len({e.id for e in out1}) == len(out1)  # ids unique within a run


def test_numbers_are_never_in_events_only_their_hash() -> None:
    tr, out = run(events_of("answered"), StateTracker(hash_number=lambda n: "h:" + n[::-1]))
    assert only(out, "call.end").data["caller_hash"] == "h:1000001160"
    assert all("0611000001" not in repr(e.to_fields()) for e in out)
    assert tr.ended[0].caller == "0611000001"


# ------------------------------------------------------------------------ resync / gap
def _core_show_channels(tr: StateTracker) -> list[Event]:
    """What CoreShowChannels would list for the tracker's channels (the recording has none then)."""
    items = []
    for ch in tr.channels.values():
        call = tr.calls.get(ch.uniqueid)
        app = "Queue" if call is not None and (call.in_queue or call.answered) else "Wait"
        fields = {
            "Event": "CoreShowChannel",
            "ActionID": "resync-1",
            "Channel": ch.name,
            "ChannelState": "6",
            "Uniqueid": ch.uniqueid,
            "Linkedid": ch.linkedid,
            "Application": app,
            "ApplicationData": "support,c,,,120" if app == "Queue" else "",
            "Duration": "00:00:05",
        }
        items.append(Event(fields, None, "CoreShowChannel"))
    return items


def test_resync_adopts_waiting_callers_and_talking_calls_after_a_reconnect() -> None:
    events = events_of("concurrent")
    start, items = _list_blocks(events)[0]
    live = StateTracker()
    live.feed_all(events[:start])
    channels = _core_show_channels(live)

    fresh = StateTracker(keep_ended=None)
    out = list(fresh.resync(items, channels, now=live.now))
    assert types(out).count("call.start") == 6  # 4 waiting + 2 talking
    q = fresh.queues["support"]
    assert [w.position for w in q.callers()] == [1, 2, 3, 4]
    assert q.params["Calls"] == "4" and q.params["Holdtime"] == "1"
    assert all(m.in_call for m in q.members.values())  # InCall: 1 of the list items
    phones = [ch for ch in fresh.channels.values() if ch.name.endswith(";1") and ch.uniqueid == ch.linkedid]
    assert len(phones) == 6 and all(ch.caller_peer and ch.call is not None for ch in phones)

    out += fresh.feed_all(events[start:])
    out += fresh.flush()
    assert len(fresh.ended) == 6
    assert all(c.outcome == "answered" and c.talk_s == 6 for c in fresh.ended)
    waits = sorted(c.wait_s or 0 for c in fresh.ended)
    assert waits[2:] == [7, 7, 13, 13]
    assert all(only([e for e in out if e.call == c.call], "call.end").data["gap"] for c in fresh.ended)
    assert all(not m.in_call for m in q.members.values())


def test_resync_ends_calls_that_vanished_during_the_gap() -> None:
    events = events_of("abandoned")
    start, _ = _list_blocks(events)[0]
    tr = StateTracker(keep_ended=None)
    tr.feed_all(events[:start])
    uid = caller_of(events)
    assert tr.calls[uid].in_queue
    gap = tr.gap(tr.now, tr.now + 30)
    assert gap.type == "controller.gap" and gap.data["duration_s"] == 30
    params = Event(
        {"Event": "QueueParams", "Queue": "support", "Calls": "0", "Holdtime": "0"}, None, "QueueParams"
    )
    out = list(tr.resync([params], [], now=tr.now + 30))
    end = only(out, "call.end")
    assert end.call == uid and end.data["outcome"] == "unknown" and end.data["gap"] is True
    assert tr.queues["support"].count == 0 and not tr.calls and not tr.channels
    assert tr.queues["support"].members == {}  # the list named no member
    # The events that follow in the recording belong to a call that is gone: no second end.
    rest = tr.feed_all(events[start:])
    assert "call.end" not in types(rest)
    assert only(out + rest, "call.end").id == end.id


def test_gap_flags_live_calls() -> None:
    events = events_of("answered")
    tr = StateTracker()
    i = first(events, lambda e: e.name == "QueueCallerJoin")
    tr.feed_all(events[: i + 1])
    tr.gap(tr.now, tr.now + 1)
    _, out = run(events[i + 1 :], tr)
    assert only(out, "call.end").data["gap"] is True
    assert tr.gaps == [(float(events[i].fields["Timestamp"]), float(events[i].fields["Timestamp"]) + 1)]


# ---------------------------------------------------------------------------- bad input
def test_malformed_events_are_ignored_without_losing_state() -> None:
    events = events_of("answered")
    i = first(events, lambda e: e.name == "QueueCallerJoin")
    ts = float(events[i].fields["Timestamp"])
    junk = [
        Event(
            {"Event": "QueueCallerJoin", "Timestamp": "not-a-time", "Uniqueid": "x"}, None, "QueueCallerJoin"
        ),
        Event({"Event": "QueueCallerJoin", "Uniqueid": "x"}, None, "QueueCallerJoin"),  # no Timestamp
        synthetic("QueueCallerJoin", ts, Queue="support", Position="first", Count=""),  # no Uniqueid
        synthetic("Hangup", ts),
        synthetic("VarSet", ts),
        synthetic("VarSet", ts, Variable="QUEUESTATUS", Value="TIMEOUT", Uniqueid="nobody"),
        synthetic("QueueCallerLeave", ts, Uniqueid="nobody", Queue="support"),
        synthetic(
            "AgentComplete", ts, Uniqueid="nobody", Queue="support", Interface="Local/9@x", TalkTime="x"
        ),
        synthetic("Newchannel", ts),
        synthetic("QueueMemberStatus", ts, Queue="support", Interface="Local/201@agents", Status="two"),
    ]
    tr, out = run([*events[: i + 1], *junk, *events[i + 1 :]])
    [call] = tr.ended
    assert (call.outcome, call.wait_s, call.talk_s) == ("answered", 2, 6)
    assert only([e for e in out if e.call == call.call], "agent.complete").data["talk_s"] == 6
    late = [e for e in out if e.call == "nobody"]
    assert [e.type for e in late] == ["agent.complete"] and late[0].data["talk_s"] == 0


def test_events_the_tracker_does_not_use_produce_nothing() -> None:
    tr = StateTracker()
    assert tr.feed(synthetic("RTCPSent", 1.0, Uniqueid="1")) == ()
    assert tr.feed(synthetic("Newexten", 2.0, Uniqueid="unknown", Application="Queue")) == ()
    assert tr.now == 2.0


# -------------------------------------------------------------------------- normalise
@pytest.mark.parametrize(
    ("appdata", "expected"),
    [
        ("support,c,,,10", ("support", 10)),
        ("empty", ("empty", None)),
        ("", ("", None)),
        ("q,c,,,x", ("q", None)),
    ],
)
def test_queue_app_target(appdata: str, expected: tuple[str, int | None]) -> None:
    assert queue_app_target(appdata) == expected


def test_small_parsers() -> None:
    assert local_half("Local/100@public-00000000;2") == ("Local/100@public-00000000", 2)
    assert local_half("PJSIP/trunk-0000001") == ("PJSIP/trunk-0000001", 0)
    assert agi_script("agi://127.0.0.1:4573/ivr?service=caf") == "ivr"
    assert agi_script("agi://127.0.0.1:4573/after-queue,CONTINUE") == "after-queue"
    assert agi_set_variable("SET VARIABLE IVR_CHOICE 1") == ("IVR_CHOICE", "1")
    assert agi_set_variable('SET VARIABLE IVR_CASE "a b"') == ("IVR_CASE", "a b")
    assert agi_set_variable("GET VARIABLE QUEUESTATUS") is None
    assert agi_set_variable("SET VARIABLE ") is None
    assert agi_set_variables("SET VARIABLE IVR_CHOICE 1") == [("IVR_CHOICE", "1")]
    assert agi_set_variables("EXEC MSet IVR_ACTION=queue,IVR_CASE=,IVR_X=a=b") == [
        ("IVR_ACTION", "queue"),
        ("IVR_CASE", ""),
        ("IVR_X", "a=b"),
    ]
    assert agi_set_variables('EXEC MSet "IVR_A=1,junk"') == [("IVR_A", "1")]
    assert agi_set_variables("EXEC Playback beep") == [] and agi_set_variables(None) == []
    assert parse_duration("01:02:03") == 3723 and parse_duration("junk") == 0
    assert to_int("12") == 12 and to_int("1.5") == 1 and to_int("x", -1) == -1 and to_int(None) == 0
