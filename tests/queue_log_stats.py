"""Queue figures from an Asterisk ``queue_log`` alone: the reference our KPI engine is checked against.

This deliberately shares nothing with ``ivr.domain.kpi`` but the queue_log parser: it reads
the file Asterisk itself writes and counts the way a call-centre report built on queue_log
does, so a disagreement with ``ivr replay`` points at our event handling, not at a shared
mistake.

Per queue (one line per queue entry, like Asterisk):

* ``entered``: ENTERQUEUE lines; ``answered``: CONNECT; ``abandoned``: ABANDON;
  ``timeouts``: EXITWITHTIMEOUT; ``exit_with_key``: EXITWITHKEY; ``exit_empty``: EXITEMPTY;
  ``withdrawn``: WITHDRAW; ``ring_no_answer``: RINGNOANSWER.
* waits (whole seconds, as logged): CONNECT ``holdtime``, ABANDON / EXITWITHTIMEOUT /
  EXITWITHKEY / EXITEMPTY / WITHDRAW ``waittime``; talk: COMPLETEAGENT / COMPLETECALLER ``talktime``.
* ``pickup_rate``: distinct calls connected ÷ distinct calls that entered the queue.
* ``waiting``: entries with no ending line (the caller was still queued when the log was cut).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ivr.domain.queue_log import QueueLogEntry

#: queue_log events that end a stay in a queue -> outcome name used by the KPI engine.
ENDINGS = {
    "CONNECT": "answered",
    "ABANDON": "abandoned",
    "EXITWITHTIMEOUT": "timeout",
    "EXITWITHKEY": "exit_key",
    "EXITEMPTY": "leave_empty",
    "WITHDRAW": "withdrawn",
}


@dataclass
class QueueFigures:
    """Counts and durations of one queue (or of all queues for ``overall``)."""

    entered: int = 0
    answered: int = 0
    abandoned: int = 0
    timeouts: int = 0
    exit_with_key: int = 0
    exit_empty: int = 0
    withdrawn: int = 0
    ring_no_answer: int = 0
    waits: dict[str, list[int]] = field(default_factory=dict)  # outcome -> waits
    talk: list[int] = field(default_factory=list)
    calls_entered: set[str] = field(default_factory=set)
    calls_answered: set[str] = field(default_factory=set)
    open_entries: dict[str, int] = field(default_factory=dict)  # callid -> entries not yet ended

    @property
    def waiting(self) -> int:
        return sum(self.open_entries.values())

    @property
    def answered_waits(self) -> list[int]:
        return self.waits.get("answered", [])

    @property
    def all_waits(self) -> list[int]:
        """Waits of every finished stay, whatever its ending."""
        return sorted(w for ws in self.waits.values() for w in ws)

    @property
    def pickup_rate(self) -> float | None:
        if not self.calls_entered:
            return None
        return len(self.calls_answered) / len(self.calls_entered)

    @property
    def asa_s(self) -> float | None:
        ws = self.answered_waits
        return sum(ws) / len(ws) if ws else None

    def as_dict(self) -> dict[str, Any]:
        """The figures under the KPI engine's key names (plus the raw lists)."""
        ws = self.all_waits
        return {
            "entered": self.entered,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "timeouts": self.timeouts,
            "exit_with_key": self.exit_with_key,
            "leave_empty": self.exit_empty,
            "withdrawn": self.withdrawn,
            "waiting": self.waiting,
            "ring_no_answer": self.ring_no_answer,
            "pickup_rate": self.pickup_rate,
            "asa_s": self.asa_s,
            "wait_max_s": max(ws) if ws else None,
            "waits": ws,
            "answered_waits": sorted(self.answered_waits),
            "talk": sorted(self.talk),
        }


@dataclass
class QueueLogStats:
    """Figures per queue, overall, and each call's outcome (last ending, CONNECT wins)."""

    queues: dict[str, QueueFigures] = field(default_factory=dict)
    overall: QueueFigures = field(default_factory=QueueFigures)
    outcomes: dict[str, str] = field(default_factory=dict)


def _ending_wait(entry: QueueLogEntry) -> int:
    named = entry.named()
    return int(named["holdtime"] if entry.event == "CONNECT" else named["waittime"])


def queue_log_stats(entries: Iterable[QueueLogEntry]) -> QueueLogStats:
    """Count the queue calls of a parsed queue_log."""
    stats = QueueLogStats()
    for e in entries:
        if e.event not in ("ENTERQUEUE", "RINGNOANSWER", "COMPLETEAGENT", "COMPLETECALLER", *ENDINGS):
            continue  # QUEUESTART, member administration, RINGCANCELED ...
        targets = (stats.queues.setdefault(e.queue, QueueFigures()), stats.overall)
        for fig in targets:
            if e.event == "ENTERQUEUE":
                fig.entered += 1
                fig.calls_entered.add(e.callid)
                fig.open_entries[e.callid] = fig.open_entries.get(e.callid, 0) + 1
            elif e.event == "RINGNOANSWER":
                fig.ring_no_answer += 1
            elif e.event in ("COMPLETEAGENT", "COMPLETECALLER"):
                fig.talk.append(e.int_field("talktime"))
            else:
                outcome = ENDINGS[e.event]
                fig.waits.setdefault(outcome, []).append(_ending_wait(e))
                if fig.open_entries.get(e.callid):
                    fig.open_entries[e.callid] -= 1
                if e.event == "CONNECT":
                    fig.answered += 1
                    fig.calls_answered.add(e.callid)
                elif e.event == "ABANDON":
                    fig.abandoned += 1
                elif e.event == "EXITWITHTIMEOUT":
                    fig.timeouts += 1
                elif e.event == "EXITWITHKEY":
                    fig.exit_with_key += 1
                elif e.event == "WITHDRAW":
                    fig.withdrawn += 1
                else:
                    fig.exit_empty += 1
        if e.event in ENDINGS and stats.outcomes.get(e.callid) != "answered":
            stats.outcomes[e.callid] = ENDINGS[e.event]
    for fig in (*stats.queues.values(), stats.overall):
        fig.open_entries = {c: n for c, n in fig.open_entries.items() if n}
    return stats
