"""One FastAGI connection: an asyncio protocol that drives a flow from the loop's callbacks.

A flow (``ivr.domain.ivr_ops``) is a generator of steps. :class:`AGISession` turns each
step into one AGI command, writes it, and when the reply arrives (``buffer_updated``) turns
it into the step's result and resumes the flow at once, in the same callback. There is no
task, future, stream reader or per-command timeout object per session: at 500 concurrent
calls that machinery cost more CPU than the IVR itself, and the queueing it caused is what
a caller hears as silence after the ring. The codec does the parsing (inline ``HANGUP``,
multi-line 520), so nothing here looks at a byte.

Time limits: the environment block must arrive within ``env_timeout`` (a client that
connects and says nothing, or trickles bytes, holds a slot only that long); each command
must be answered within ``command_timeout``, or ``media_timeout`` for commands that play
sound (plus the digit timeout for ``GET DATA``) since a prompt may last minutes. One timer
per session enforces them: sending a command only moves the session's deadline, and the
timer, when it fires early, re-arms itself for the current deadline (re-arming on every
command would allocate a timer handle per command and fill the loop's heap with cancelled
ones). Bytes arriving do not move the deadline: a trickling client is cut at it.

Reads: the session is a :class:`asyncio.BufferedProtocol` reading into a buffer its owner
lends (one per server: the codec copies what it is handed before the callback returns, so
sessions of one loop can share it). A plain protocol has the transport allocate a
``bytes`` of 256 KiB per read (``max_size`` in asyncio's selector transport) to carry a
30-byte reply; depending on the allocator's state that costs more than the read itself
(glibc, fresh process: 15 us per read against 3 us).

The first exchange comes before the transport: the server accepts the connection itself
and hands the socket to :meth:`AGISession.accepted`, which reads the environment and
writes the first command on the socket while the loop builds the transport (a turn or two
later; under load each turn is every other call's reply). The server also looks for new
calls and their environments between replies (``AGIServer.serve_new_calls``): a new
caller's first prompt does not wait behind the loop's whole round of calls in progress.

Writes: a command is written without waiting for the transport to drain; one command at a
time is outstanding, so a session buffers at most one line (< 8 KiB, ``AGI_BUF_LEN``). If
the transport still reports its buffer over the high-water mark (``pause_writing``), the
next command is held until ``resume_writing``; its deadline keeps running.

Logging context: every callback runs in the session's own :class:`contextvars.Context`,
where the call's ``uniqueid`` is bound once the environment is read, so that log lines
(and the event sink) see the call they belong to and nothing leaks to another call.

Why a hangup is decided here: Asterisk answers 511 to media commands on a dead channel
and ``result=-1`` to ``STREAM FILE``/``GET DATA`` both when the caller hung up and when
the prompt file is missing (``handle_streamfile`` / ``ast_app_getdata_full`` in
res_agi.c and main/app.c). Only the inline ``HANGUP`` line (seen by the codec) tells
them apart, and the recording (``agi_hangup``) shows it arriving only before the *next*
reply. So after a ``-1`` the session sends one cheap probe, ``GET VARIABLE
CHANNEL(state)`` (answered even on a dead channel): if the ``HANGUP`` line comes with its
reply, the caller is gone; if not, the prompt failed and the flow retries it as a failed
attempt. Once the caller is known gone, the session sends nothing more.

Service requests: a flow may also yield a request for the callback service or the
appointment store (``ivr.domain.ivr_ops``: "record this callback", "free slots?"). The
session hands it to its owner (:meth:`SessionOwner.perform`), sends nothing on the channel
while it is answered, and resumes the flow with the reply from the answer's own callback.
The channel needs nothing meanwhile: Asterisk waits for the next command as long as it
takes (``run_agi`` in res_agi.c blocks on the socket between commands). A caller hanging up
meanwhile does not cancel the request -- a callback recorded as the caller leaves still
stands, and it is recorded once -- Asterisk's ``HANGUP`` line (sent at once when the channel
dies while it waits for a command, res_agi.c) is noted, and the flow learns of it at its
next channel step. A request not answered within ``command_timeout`` gives the flow the
request's fallback reply (nothing promised); its answer, when it comes, is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import socket
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

import structlog

from ivr.domain import ivr_ops
from ivr.domain.ivr_ops import (
    HUNG_UP,
    OK,
    REQUEST_TYPES,
    Answer,
    Decision,
    Flow,
    GetDigits,
    GetVar,
    Hangup,
    Play,
    Request,
    SayDigits,
    ServiceFlow,
    SetVar,
    SetVars,
    Step,
    StepResult,
    Verbose,
    fallback_reply,
)
from ivr.logs import get_logger
from ivr.protocol import agi
from ivr.protocol.agi import (
    CLOSED,
    NEED_DATA,
    AGIEnvironment,
    AGIServerConnection,
    Command,
    HangupNotice,
    Reply,
)
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["READ_SIZE", "AGISession", "Outcome", "SessionOwner"]

log = get_logger(__name__)

#: Bytes read at most at once (a reply is a line; the environment block, a few hundred bytes).
READ_SIZE: Final = 64 * 1024
#: Read after an ambiguous ``result=-1`` to let a pending ``HANGUP`` line show itself.
PROBE_VARIABLE: Final = "CHANNEL(state)"
FAILED: Final = StepResult(failed=True)
_PROBE: Final = agi.get_variable(PROBE_VARIABLE)
#: What a flow may still yield once the caller is gone: steps answered on a dead channel,
#: and service requests (the flow learns of the hangup at its next channel step).
_AFTER_HANGUP: Final = frozenset({GetVar, Verbose, *REQUEST_TYPES})


class Outcome(enum.Enum):
    """How a session ended; ``failed`` says whether it counts as a failure."""

    DONE = "done"  # the flow returned its decision
    PEER_CLOSED = "peer_closed"  # Asterisk closed the connection (the dialplan moved on)
    ENV_TIMEOUT = "env_timeout"  # no complete environment in time
    BAD_ENVIRONMENT = "bad_environment"  # malformed environment, or closed inside it
    COMMAND_TIMEOUT = "command_timeout"  # a command was not answered in time
    PROTOCOL_ERROR = "protocol_error"  # a reply we cannot read, or a command we cannot send
    FLOW_FAILED = "flow_failed"  # the flow raised
    CANCELLED = "cancelled"  # dropped at the shutdown deadline

    @property
    def failed(self) -> bool:
        return self in _FAILURES


_FAILURES: Final = frozenset(
    {
        Outcome.ENV_TIMEOUT,
        Outcome.BAD_ENVIRONMENT,
        Outcome.COMMAND_TIMEOUT,
        Outcome.PROTOCOL_ERROR,
        Outcome.FLOW_FAILED,
    }
)


class SessionOwner(Protocol):
    """What a session asks of its server: admission, a flow, and where to report its end."""

    def admit(self, session: AGISession, address: str) -> bool:
        """Whether this connection may open a session (False: it is dropped at once)."""
        ...

    def open_flow(self, session: AGISession, env: AGIEnvironment) -> Flow | ServiceFlow:
        """The flow for the call, once its environment is read (the uniqueid is bound)."""
        ...

    def perform(self, session: AGISession, request: Request) -> Awaitable[ivr_ops.Reply]:
        """Answer a service request of the flow (called in the session's logging context).

        The session never cancels it: once asked, a request runs to its end even if the
        caller hangs up or the session ends, so the owner should keep it referenced until
        then. A done future is taken at once, without a turn of the loop.
        """
        ...

    def session_ended(
        self, session: AGISession, outcome: Outcome, error: str, exc: BaseException | None
    ) -> None:
        """Called once per admitted session, in its logging context, before its transport closes."""
        ...

    def connection_lost(self, session: AGISession) -> None:
        """Called once per connection, admitted or not, when its transport is gone."""
        ...

    def serve_new_calls(self) -> None:
        """Called after each read a session handles: the owner may accept and start new calls
        there (often enough that a new caller does not wait for the loop's next turn)."""
        ...


ReplyHandler = Callable[["AGISession", Reply], StepResult | None]


class AGISession(asyncio.BufferedProtocol):
    """The controller's side of one FastAGI connection, flow included.

    Attributes read by the owner: ``peer``, ``env`` (None until read), ``decision`` (the
    flow's, None if it did not finish), ``commands_sent``, ``started`` (loop time of the
    environment), ``hung_up``.
    """

    # Slots: attribute access on every command, and one tracked object fewer per call for
    # the garbage collector to walk while the call lasts.
    __slots__ = (
        "_command",
        "_ctx",
        "_deadline",
        "_done",
        "_failed_reply",
        "_flow",
        "_held",
        "_limit",
        "_loop",
        "_on_reply",
        "_out",
        "_paused",
        "_pending",
        "_read_buffer",
        "_request",
        "_sock",
        "_step",
        "_timer",
        "_timer_at",
        "command_timeout",
        "commands_sent",
        "conn",
        "decision",
        "env",
        "env_timeout",
        "media_timeout",
        "owner",
        "peer",
        "started",
        "transport",
    )

    def __init__(
        self,
        owner: SessionOwner,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        env_timeout: float,
        command_timeout: float,
        media_timeout: float,
        read_buffer: memoryview | None = None,
    ) -> None:
        self.owner = owner
        self._read_buffer = memoryview(bytearray(READ_SIZE)) if read_buffer is None else read_buffer
        self.env_timeout = env_timeout
        self.command_timeout = command_timeout
        self.media_timeout = media_timeout
        self.conn = AGIServerConnection()
        self.peer = ""
        self.env: AGIEnvironment | None = None
        self.decision: Decision | None = None
        self.commands_sent = 0
        self.started = 0.0
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop() if loop is None else loop
        self._ctx = contextvars.copy_context()
        self._done = False
        self._flow: ServiceFlow | None = None
        # The outstanding command: what it was for, how its reply becomes a step result.
        self._step: Step | Request | None = None
        self._on_reply: ReplyHandler | None = None
        self._command: Command | None = None
        self._limit = 0.0
        self._failed_reply: Reply | None = None  # a -1 awaiting its probe
        # The service request being answered instead, and its answer.
        self._request: Request | None = None
        self._pending: asyncio.Future[ivr_ops.Reply] | None = None
        # Time limit: the deadline of what we wait for, and the one timer that enforces it.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Flow control.
        self._paused = False
        self._held: bytes | None = None
        # Before the transport: the accepted socket, and what it has not taken yet.
        self._sock: socket.socket | None = None
        self._out = b""

    @property
    def hung_up(self) -> bool:
        return self.conn.hung_up

    @property
    def duration(self) -> float:
        """Seconds since the environment was read (0 before)."""
        return self._loop.time() - self.started if self.env is not None else 0.0

    # -- before the transport: the server's accept ---------------------------------------------

    def accepted(self, sock: socket.socket, peer: str) -> bool:
        """Admit a socket the server has just accepted, before the loop builds its transport.

        False: not admitted (the caller closes the socket; nothing was read or sent). Then
        the server has the transport built and calls :meth:`read_waiting`: the environment,
        if it has arrived, is read and the flow's first command sent at once, on the socket
        itself. The transport (``connection_made``) comes a turn or two of the loop later,
        and under load a turn is every other session's reply -- the silence a caller hears
        before the first prompt.
        """
        self.peer = peer
        if not self.owner.admit(self, peer):
            self._done = True
            return False
        self._sock = sock
        self._set_deadline(self._loop.time() + self.env_timeout)
        return True

    def read_waiting(self) -> bool:
        """Read what has arrived while the environment is incomplete; True while it still is.

        The server calls it between other sessions' replies (``AGIServer.serve_new_calls``)
        so that an environment arriving just after the accept is not left for the loop's
        next turn. Reads are in order whoever makes them (one thread): the transport, once
        reading, finds nothing and waits. Nothing there, or an error: the transport reads or
        reports it as usual.
        """
        sock = self._sock
        if self._done or self.env is not None or sock is None:
            return False
        try:
            nbytes = sock.recv_into(self._read_buffer)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not nbytes:
            return False  # the peer closed: the transport sees the EOF and reports it
        self.buffer_updated(nbytes)
        return not self._done and self.env is None

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The loop's transport for the socket :meth:`accepted` started on."""
        # A stream transport (uvloop's are not registered as asyncio.Transport subclasses).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self._sock is None and not self._done:  # not started by AGIServer's accept: never admitted
            log.error("agi.session_not_accepted")
            self._done = True
            transport.abort()
            return
        if self._done:  # ended before the transport came (bad environment, timeout, shutdown)
            transport.close()
            return
        out, self._out = self._out, b""
        if out:
            transport.write(out)
        self.read_waiting()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._done:
            return
        self.conn.receive_data(self._read_buffer[:nbytes])  # copied: the buffer is shared
        self._ctx.run(self._pump)
        self.owner.serve_new_calls()  # outside this call's context: new sessions start clean

    def eof_received(self) -> bool:
        if not self._done:
            self.conn.receive_data(b"")  # the codec then reports CLOSED, or raises inside a block
            self._ctx.run(self._pump)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            error = f"connection lost: {exc}" if exc else "connection lost"
            outcome = Outcome.PEER_CLOSED if self.env is not None else Outcome.BAD_ENVIRONMENT
            self._ctx.run(self._end, outcome, error)
        self.owner.connection_lost(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        held, self._held = self._held, None
        if held is not None and not self._done and self.transport is not None:
            self.transport.write(held)

    # -- the owner's controls ----------------------------------------------------------------

    def cancel(self) -> None:
        """Drop the connection now (shutdown deadline passed); reported as CANCELLED."""
        if self._done:
            return
        self._ctx.run(self._end, Outcome.CANCELLED, "cancelled at shutdown", None, True)

    # -- reading ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle every event the received bytes complete; runs in the session's context."""
        conn = self.conn
        try:
            while not self._done:
                event = conn.next_event()
                if type(event) is Reply:
                    handler = self._on_reply
                    assert handler is not None
                    self._on_reply = None
                    result = handler(self, event)
                    if result is not None:
                        self._advance(result)
                elif event is NEED_DATA:
                    return
                elif type(event) is HangupNotice:
                    log.debug("agi.hangup_notice", pending=self._command.name if self._command else None)
                elif event is CLOSED:
                    pending = self._pending_name()
                    self._end(
                        Outcome.PEER_CLOSED,
                        f"closed while {pending} was pending" if pending else "closed by the peer",
                    )
                else:
                    assert isinstance(event, AGIEnvironment)
                    self._start(event)
        except RemoteProtocolError as exc:
            outcome = Outcome.PROTOCOL_ERROR if self.env is not None else Outcome.BAD_ENVIRONMENT
            self._end(outcome, str(exc))
        except LocalProtocolError as exc:
            self._end(Outcome.PROTOCOL_ERROR, str(exc))
        except Exception as exc:
            self._end(Outcome.FLOW_FAILED, repr(exc), exc)

    def _start(self, env: AGIEnvironment) -> None:
        self.env = env
        self.started = self._loop.time()
        # Inside self._ctx: every later callback of this session sees the binding.
        structlog.contextvars.bind_contextvars(uniqueid=env.uniqueid, agi_script=env.script)
        # A plain flow is a service flow that never yields a request, so is never sent a reply.
        self._flow = cast(ServiceFlow, self.owner.open_flow(self, env))
        self._advance(None)

    def _pending_name(self) -> str | None:
        """What the session waits for: a command's name, a request's type, or None."""
        if self._pending is not None and self._request is not None:
            return self._request.__class__.__name__
        return self._command.name if self._on_reply and self._command else None

    # -- the flow --------------------------------------------------------------------------------

    def _advance(self, result: StepResult | ivr_ops.Reply | None) -> None:
        """Resume the flow with ``result`` until it needs an answer (Asterisk's, a request's), or ends."""
        flow = self._flow
        assert flow is not None
        try:
            step = next(flow) if result is None else flow.send(result)
            while True:
                result = self._begin(step)
                if result is None:
                    return
                step = flow.send(result)
        except StopIteration as stop:
            self.decision = stop.value
            self._end(Outcome.DONE, "")

    def _begin(self, step: Step | Request) -> StepResult | ivr_ops.Reply | None:
        """Send the command of ``step`` (or ask for a request's answer); a result now if one
        is there already (the caller is gone, the request answered at once)."""
        kind = step.__class__
        if self.conn.hung_up and kind not in _AFTER_HANGUP:
            return HUNG_UP  # the caller is gone: no more media, no more variables
        if kind in _REQUEST_KINDS:
            return self._ask(cast(Request, step))
        plan = _PLANS.get(step)
        if plan is None:
            plan = _plan(cast(Step, step))
        command, data, on_reply, media, extra = plan
        self._step = step
        self._send(command, self.media_timeout + extra if media else self.command_timeout, on_reply, data)
        return None

    # -- service requests ------------------------------------------------------------------------

    def _ask(self, request: Request) -> ivr_ops.Reply | None:
        """Have the owner answer ``request``: its reply now if it is there, else None (the
        flow resumes from the answer's callback, or at the deadline with the fallback)."""
        try:
            future = asyncio.ensure_future(self.owner.perform(self, request), loop=self._loop)
        except Exception as exc:
            return _failed_request(request, exc)
        if future.done():
            return _reply_of(request, future)
        self._request = request
        self._pending = future
        self._set_deadline(self._loop.time() + self.command_timeout)
        future.add_done_callback(self._answered, context=self._ctx)
        return None

    def _answered(self, future: asyncio.Future[ivr_ops.Reply]) -> None:
        if future is not self._pending or self._done:
            return  # timed out, or the session ended: the request itself did complete
        request = self._request
        assert request is not None
        self._pending = self._request = None
        self._resume(_reply_of(request, future))

    def _resume(self, answer: ivr_ops.Reply) -> None:
        """Send a request's answer into the flow, outside :meth:`_pump`'s guard."""
        try:
            self._advance(answer)
        except LocalProtocolError as exc:
            self._end(Outcome.PROTOCOL_ERROR, str(exc))
        except Exception as exc:
            self._end(Outcome.FLOW_FAILED, repr(exc), exc)

    def _send(
        self, command: Command, limit: float, on_reply: ReplyHandler, encoded: bytes | None = None
    ) -> None:
        data = self.conn.send(command, encoded)
        self._command = command
        self._on_reply = on_reply
        self._limit = limit
        self.commands_sent += 1
        deadline = self._loop.time() + limit
        if self._timer is not None and deadline >= self._timer_at:
            self._deadline = deadline  # :meth:`_set_deadline` in short: the timer moves it on when due
        else:
            self._set_deadline(deadline)
        if self._paused:
            self._held = data
            return
        transport = self.transport
        if transport is not None:
            transport.write(data)
        elif self._out:
            self._out += data
        else:
            self._send_early(data)

    def _send_early(self, data: bytes) -> None:
        """Write on the socket itself, before the transport exists: a fresh socket's buffer
        takes a command line at once; what it does not take waits for the transport."""
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the transport reports the broken connection
        if sent < len(data):
            self._out = data[sent:]

    def _probe(self, reply: Reply) -> None:
        """After a -1: ask something harmless so that a pending HANGUP line shows itself."""
        self._failed_reply = reply
        self._send(_PROBE, self.command_timeout, _probe_reply)

    def _refused(self, reply: Reply) -> StepResult:
        log.error(
            "agi.command_refused",
            step=repr(self._step),
            code=reply.code,
            reply=reply.text,
            usage=reply.usage,
        )
        return FAILED

    # -- time limits -----------------------------------------------------------------------------

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        if self._done:
            return
        if self._deadline > self._timer_at:  # the deadline moved on since the timer was set
            self._set_deadline(self._deadline)
            return
        if self.env is None:
            self._ctx.run(
                self._end, Outcome.ENV_TIMEOUT, f"no complete environment within {self.env_timeout} s"
            )
            return
        request = self._request
        if request is not None:  # the flow goes on without the answer, promising nothing
            self._pending = self._request = None
            self._ctx.run(self._request_timed_out, request)
            return
        name = self._command.name if self._command else "?"
        self._ctx.run(self._end, Outcome.COMMAND_TIMEOUT, f"{name} not answered within {self._limit} s")

    def _request_timed_out(self, request: Request) -> None:
        log.warning("agi.request_timeout", request=request.__class__.__name__, limit_s=self.command_timeout)
        self._resume(fallback_reply(request, "timeout"))

    # -- the end ---------------------------------------------------------------------------------

    def _end(
        self, outcome: Outcome, error: str, exc: BaseException | None = None, abort: bool = False
    ) -> None:
        """End the session once: stop the timer and the flow, report, close our side.

        Closing lets Asterisk continue the dialplan after ``AGI()``; ``abort`` (shutdown
        deadline) drops the connection without flushing.
        """
        if self._done:
            return
        self._done = True
        self._on_reply = None
        self._pending = self._request = None  # an answer still to come completes unheard
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        flow, self._flow = self._flow, None
        if flow is not None:
            try:
                flow.close()
            except Exception as close_exc:  # a flow that yields in its finally: report, go on
                exc = exc or close_exc
        try:
            self.owner.session_ended(self, outcome, error, exc)
        finally:
            transport = self.transport
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()


# -- steps into commands ----------------------------------------------------------------------------
# A flow yields the same few steps over and over (its prompts, its variables): each step's
# command, reply handler and time limit are worked out once and kept, bounded, so that a
# command costs a lookup rather than a builder, a dataclass and an encoding.

#: ``(command, its line as sent, reply handler, plays media, seconds added to the media limit)``
Plan = tuple[Command, bytes, "ReplyHandler", bool, float]
#: Keyed by step; a request is never found there (typed ``object`` so that either may be looked up).
_PLANS: Final[dict[object, Plan]] = {}
_PLANS_MAX: Final = 4096
_REQUEST_KINDS: Final = frozenset(REQUEST_TYPES)


def _plan(step: Step) -> Plan:
    kind = step.__class__
    parts: tuple[Command, ReplyHandler, bool, float]
    if isinstance(step, SetVar):
        parts = (agi.set_variable(step.name, step.value), _setvar_reply, False, 0.0)
    elif isinstance(step, SetVars):
        # MSet (main/pbx_variables.c) splits its argument on commas, then each pair on its
        # first "=": ivr_ops.set_variables only groups names and values that parse back as sent.
        parts = (agi.mset(step.pairs), _exec_reply, False, 0.0)
    elif isinstance(step, GetDigits):
        command = agi.get_data(step.prompt, step.timeout_ms, step.max_digits)
        parts = (command, _digits_reply, True, step.timeout_ms / 1000)
    elif isinstance(step, Play):
        parts = (agi.stream_file(step.prompt), _media_reply, True, 0.0)
    elif isinstance(step, Answer):
        parts = (agi.answer(), _media_reply, True, 0.0)
    elif isinstance(step, SayDigits):
        parts = (agi.say_digits(step.digits), _media_reply, True, 0.0)
    elif isinstance(step, GetVar):
        parts = (agi.get_variable(step.name), _getvar_reply, False, 0.0)
    elif isinstance(step, Verbose):
        parts = (agi.verbose(step.message), _ok_reply, False, 0.0)
    elif isinstance(step, Hangup):
        parts = (agi.hangup(), _ok_reply, False, 0.0)
    else:
        raise TypeError(f"unknown step {step!r}")
    command, on_reply, media, extra = parts
    plan: Plan = (command, command.encode(), on_reply, media, extra)
    # Not an MSet: it carries the call's own values (its case number), seen once, and would
    # fill the table with lines never asked again.
    if len(_PLANS) < _PLANS_MAX and kind is not SetVars:
        _PLANS[step] = plan
    return plan


# -- answers into what the flow is sent -----------------------------------------------------------


def _reply_of(request: Request, future: asyncio.Future[ivr_ops.Reply]) -> ivr_ops.Reply:
    """A done answer's reply; the fallback (nothing promised) if it failed or was cancelled."""
    if future.cancelled():
        log.warning("agi.request_cancelled", request=request.__class__.__name__)
        return fallback_reply(request, "error")
    exc = future.exception()
    if exc is not None:
        return _failed_request(request, exc)
    return future.result()


def _failed_request(request: Request, exc: BaseException) -> ivr_ops.Reply:
    log.warning("agi.request_failed", request=request.__class__.__name__, error=repr(exc))
    return fallback_reply(request, "error")


# Plain functions, not bound methods: stored per command, they cost no allocation.


def _media_reply(session: AGISession, reply: Reply) -> StepResult | None:
    code = reply.code
    if code == 511:
        return HUNG_UP  # dead channel
    if code != 200:
        return session._refused(reply)
    if reply.result == "-1":
        if session.conn.hung_up:
            return HUNG_UP
        session._probe(reply)
        return None
    return OK


def _digits_reply(session: AGISession, reply: Reply) -> StepResult | None:
    result = _media_reply(session, reply)
    if result is not OK:
        return result
    return StepResult(digits=reply.result or "", timed_out=reply.data == "timeout")


def _probe_reply(session: AGISession, reply: Reply) -> StepResult:
    if session.conn.hung_up:
        return HUNG_UP
    failed = session._failed_reply
    log.warning("agi.step_failed", step=repr(session._step), reply=failed.text if failed else "")
    return FAILED


def _setvar_reply(session: AGISession, reply: Reply) -> StepResult:
    return OK if reply.code == 200 else session._refused(reply)


def _exec_reply(session: AGISession, reply: Reply) -> StepResult:
    """``EXEC``: ``200 result=<the application's return>``, ``-2`` when it does not exist
    (``handle_exec`` in res_agi.c)."""
    return OK if reply.code == 200 and reply.result == "0" else session._refused(reply)


def _getvar_reply(session: AGISession, reply: Reply) -> StepResult:
    if reply.code == 200 and reply.result == "1":
        return StepResult(value=reply.data or "")
    return StepResult(value=None)


def _ok_reply(session: AGISession, reply: Reply) -> StepResult:
    return OK
