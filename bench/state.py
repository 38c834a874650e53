"""State tracking: AMI events per second through :class:`~ivr.domain.state.StateTracker`.

The stream is the one the ingest benchmark replays (recorded Asterisk 22 traffic rewritten
into distinct calls, see ``_util.iter_stream``), already parsed into
:class:`~ivr.protocol.ami.Event` objects, so only ``feed`` is timed: no socket, no parser, no
Redis. Caller numbers are hashed as in the controller. The events are made and parsed in
batches (all of them at once would take gigabytes); the clock runs only inside ``feed``
and the final ``flush``. ``--repeat`` fresh trackers each take the whole stream; the
figures are those of the median one.

``call_events`` counts the call events produced (the tracker is flushed at the end, as the
controller does on shutdown): the ingest benchmark must store exactly as many for the same
``--events`` and ``--seed``.

    python bench/state.py --json [--events N] [--seed S] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

from _util import DEFAULT_SCENARIOS, emit, event_batches, rate

from ivr.domain.state import StateTracker
from ivr.storage.privacy import NumberHasher

HASH_KEY = "bench-hash-key-0123456789abcdef"


def run(n_events: int, seed: int, scenarios: Sequence[str], repeat: int) -> list[tuple[int, int, float]]:
    """(events fed, call events produced, seconds inside the tracker) for ``repeat`` fresh trackers.

    The trackers take the stream in lockstep, batch by batch, so it is made and parsed once.
    """
    trackers = [StateTracker(hash_number=NumberHasher(HASH_KEY)) for _ in range(repeat)]
    events = 0
    produced = [0] * repeat
    spent = [0.0] * repeat
    clock = time.perf_counter
    for batch in event_batches(n_events, seed, scenarios):
        events += len(batch)
        for i, tracker in enumerate(trackers):
            feed = tracker.feed
            count = 0
            started = clock()
            for event in batch:
                count += len(feed(event))
            spent[i] += clock() - started
            produced[i] += count
    for i, tracker in enumerate(trackers):
        started = clock()
        produced[i] += len(tracker.flush())
        spent[i] += clock() - started
    return [(events, produced[i], spent[i]) for i in range(repeat)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS))
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be >= 1")
    load = round(os.getloadavg()[0], 2)
    runs = run(args.events, args.seed, args.scenarios, args.repeat)
    if len({(events, produced) for events, produced, _ in runs}) != 1:
        raise RuntimeError(f"runs over the same stream disagree: {runs}")
    events, produced, _ = runs[0]
    seconds = statistics.median(spent for _, _, spent in runs)
    emit(
        {
            "events": events,
            "events_per_s": rate(events, seconds),
            "call_events": produced,
            "ns_per_event": round(seconds * 1e9 / events, 1),
            "best_events_per_s": rate(events, min(spent for _, _, spent in runs)),
            "repeat": args.repeat,
            "scenarios": list(args.scenarios),
            "seed": args.seed,
            "loadavg_1m_before": load,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
