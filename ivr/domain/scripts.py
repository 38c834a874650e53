"""Which flow answers which FastAGI script: the routing table, as data.

The dialplan names a script in the AGI URL (``agi://host/ivr?service=caf``,
``agi://host/after-queue``); the server looks the script name up here and runs the flow
it gets. Keeping the table a plain mapping lets a deployment or a test add a script
without touching the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from ivr.config import Config
from ivr.domain.ivr_flow import IvrFlow
from ivr.domain.ivr_ops import CallInfo, Clock, EventSink, Flow, refuse
from ivr.domain.post_queue import after_queue, exit_key, survey

__all__ = ["SCRIPTS", "FlowFactory", "default_flows"]

#: ``(call, clock, sink) -> flow``
FlowFactory = Callable[[CallInfo, Clock, EventSink], Flow]

SCRIPTS: Final = ("ivr", "after-queue", "exit-key", "survey")


def default_flows(config: Config) -> dict[str, FlowFactory]:
    """The four scripts of the shipped dialplan, bound to ``config``."""

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        name = call.query.get("service") or (call.args[0] if call.args else "")
        service = config.services.get(name)
        if service is None:
            known = ", ".join(sorted(config.services))
            return refuse("unknown_service", f"decroche: unknown IVR service {name!r} (known: {known})")
        flow = IvrFlow(
            service,
            config.queues,
            call,
            clock=clock,
            sink=sink,
            lang=call.query.get("lang"),
            callbacks=config.callbacks.enabled,
        )
        return flow.run()

    def after(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        return after_queue(config, call, clock=clock, sink=sink)

    def exit_(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        return exit_key(config, call, clock=clock, sink=sink)

    def survey_(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        return survey(config, call, clock=clock, sink=sink)

    table: Mapping[str, FlowFactory] = {
        "ivr": ivr,
        "after-queue": after,
        "exit-key": exit_,
        "survey": survey_,
    }
    return dict(table)
