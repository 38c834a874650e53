"""Prometheus metrics, read from the parts' own counters at scrape time.

The parts keep plain counters (``AMIClient.stats``, ``EventLogWriter.stats``,
``AGIServer.stats``, the live state); a custom collector turns them into metric families
when Prometheus scrapes, so nothing on the hot path touches a metrics library.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ivr.controller import Controller


class ControllerCollector(Collector):
    """Every ``ivr_*`` metric of one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        ami = c.ami.stats
        yield GaugeMetricFamily(
            "ivr_ami_connected", "1 when logged in to Asterisk's AMI", value=int(ami.connected)
        )
        yield CounterMetricFamily("ivr_ami_events", "AMI events received", value=ami.events_received)
        yield CounterMetricFamily(
            "ivr_ami_events_dropped",
            "AMI events dropped because the consumer lagged",
            value=ami.events_dropped,
        )
        yield GaugeMetricFamily(
            "ivr_ami_queue_depth", "AMI events waiting for the consumer", value=ami.queue_depth
        )
        yield GaugeMetricFamily(
            "ivr_ami_lag_seconds", "age of the last AMI event consumed", value=ami.last_lag_s
        )
        yield CounterMetricFamily("ivr_ami_reconnects", "AMI reconnections", value=ami.reconnects)
        yield CounterMetricFamily("ivr_ami_pings_failed", "AMI pings that timed out", value=ami.pings_failed)
        yield CounterMetricFamily(
            "ivr_ami_protocol_errors", "malformed AMI messages skipped", value=ami.protocol_errors
        )

        w = c.writer.stats
        yield CounterMetricFamily("ivr_events_written", "call events stored in Redis", value=w.events_written)
        yield CounterMetricFamily(
            "ivr_events_spooled", "call events written to the local spool", value=w.events_spooled
        )
        yield GaugeMetricFamily("ivr_spool_depth", "call events waiting in the spool", value=w.spool_depth)
        yield GaugeMetricFamily(
            "ivr_redis_up", "1 when the event log reaches Redis", value=int(c.writer.redis_up)
        )
        yield CounterMetricFamily("ivr_call_events", "call events emitted", value=c.events_emitted)

        a = c.agi.stats
        yield GaugeMetricFamily(
            "ivr_agi_sessions_active", "FastAGI sessions in progress", value=a.sessions_active
        )
        yield CounterMetricFamily("ivr_agi_sessions", "FastAGI sessions accepted", value=a.sessions_total)
        yield CounterMetricFamily("ivr_agi_rejected", "FastAGI connections refused (limit)", value=a.rejected)

        waiting = GaugeMetricFamily("ivr_queue_callers", "callers waiting in the queue", labels=["queue"])
        longest = GaugeMetricFamily(
            "ivr_queue_longest_wait_seconds", "longest current wait", labels=["queue"]
        )
        available = GaugeMetricFamily(
            "ivr_queue_members_available", "members free to answer", labels=["queue"]
        )
        now = c.tracker.now
        for name, q in c.tracker.queues.items():
            waiting.add_metric([name], q.count)
            longest.add_metric([name], q.longest_wait(now))
            available.add_metric([name], sum(1 for m in q.members.values() if m.available))
        yield waiting
        yield longest
        yield available
