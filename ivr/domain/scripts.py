"""Which flow answers which FastAGI script: the routing table, as data.

The dialplan names a script in the AGI URL (``agi://host/ivr?service=caf``,
``agi://host/after-queue``); the server looks the script name up here and runs the flow
it gets. Keeping the table a plain mapping lets a deployment or a test add a script
without touching the server.

Two tables: :func:`service_flows` gives the flows as *service flows* (they yield callback
and appointment requests, see ``ivr.domain.ivr_ops``) for a driver that answers them -- the
FastAGI server, with the controller's service behind it; :func:`default_flows` gives plain
flows for a driver that knows channel steps only, and runs them without the service: no
callback is offered (a callback option queues the caller), ``callback-greet`` queues the
customer, ``callback-result`` records nothing (the dispatcher's AMI view settles the dial).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from ivr.callbacks.numbering import NumberPolicy
from ivr.config import Config
from ivr.domain.ivr_flow import CallbackSettings, IvrFlow
from ivr.domain.ivr_ops import (
    CallInfo,
    Clock,
    EventSink,
    Flow,
    Reply,
    Request,
    ServiceFlow,
    answer_inline,
    fallback_reply,
    refuse,
)
from ivr.domain.post_queue import after_queue, callback_greet, callback_result, exit_key, survey

__all__ = [
    "SCRIPTS",
    "AnyFlowFactory",
    "FlowFactory",
    "ServiceFlowFactory",
    "callback_settings",
    "default_flows",
    "service_flows",
]

#: ``(call, clock, sink) -> flow``
FlowFactory = Callable[[CallInfo, Clock, EventSink], Flow]
#: ``(call, clock, sink) -> service flow``
ServiceFlowFactory = Callable[[CallInfo, Clock, EventSink], ServiceFlow]
#: Either, as the FastAGI server takes them (a plain flow is one that asks for nothing).
AnyFlowFactory = Callable[[CallInfo, Clock, EventSink], Flow | ServiceFlow]

SCRIPTS: Final = ("ivr", "after-queue", "exit-key", "survey", "callback-greet", "callback-result")


def callback_settings(config: Config) -> CallbackSettings:
    """The offer's settings for ``config`` (``[callbacks]``, and each queue's announcements)."""
    return CallbackSettings.from_config(config)


def service_flows(
    config: Config, *, services: bool = True, settings: CallbackSettings | None = None
) -> dict[str, ServiceFlowFactory]:
    """The scripts of the shipped dialplan, bound to ``config``.

    ``services``: the driver answers requests, so the IVR may offer callbacks (when
    ``[callbacks] enabled``); False makes the flows behave as if there were no service.
    """
    offer = settings or callback_settings(config)
    policy = NumberPolicy.from_config(config.callbacks)

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        name = call.query.get("service") or (call.args[0] if call.args else "")
        service = config.services.get(name)
        if service is None:
            known = ", ".join(sorted(config.services))
            return _refuse("unknown_service", f"decroche: unknown IVR service {name!r} (known: {known})")
        flow = IvrFlow(
            service,
            config.queues,
            call,
            clock=clock,
            sink=sink,
            lang=call.query.get("lang"),
            callbacks=config.callbacks.enabled,
            services=services,
            policy=policy,
            settings=offer,
        )
        return flow.run()

    def after(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        return after_queue(config, call, clock=clock, sink=sink, services=services, settings=offer)

    def exit_(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        return exit_key(config, call, clock=clock, sink=sink, services=services, settings=offer)

    def survey_(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        return survey(config, call, clock=clock, sink=sink)

    def greet(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        return callback_greet(config, call, clock=clock, sink=sink, settings=offer)

    def result(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        return callback_result(config, call, clock=clock, sink=sink)

    table: Mapping[str, ServiceFlowFactory] = {
        "ivr": ivr,
        "after-queue": after,
        "exit-key": exit_,
        "survey": survey_,
        "callback-greet": greet,
        "callback-result": result,
    }
    return dict(table)


def _refuse(reason: str, message: str) -> ServiceFlow:
    return (yield from refuse(reason, message))


def _unanswered(request: Request) -> Reply:
    return fallback_reply(request, "no_service")


def _no_service(factory: ServiceFlowFactory) -> FlowFactory:
    def plain(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        return answer_inline(factory(call, clock, sink), _unanswered)

    return plain


def default_flows(config: Config) -> dict[str, FlowFactory]:
    """The shipped scripts as plain flows, without the callback service (see the module docstring)."""
    return {name: _no_service(f) for name, f in service_flows(config, services=False).items()}
