"""One FastAGI connection: the asyncio side of :class:`~ivr.protocol.agi.AGIServerConnection`.

:class:`AGISession` moves bytes and enforces time limits; :class:`AGIChannel` turns the
flow's steps (``ivr.domain.ivr_ops``) into AGI commands and replies into step results;
:func:`drive` runs a flow over a channel. The codec does the parsing (inline ``HANGUP``,
multi-line 520), so nothing here looks at a byte.

Time limits: the environment block must arrive within ``env_timeout`` (a client that
connects and says nothing holds a session slot only that long); each command must be
answered within ``command_timeout``, or ``media_timeout`` for commands that play sound
(plus the digit timeout for ``GET DATA``) since a prompt may last minutes.

Why a hangup is decided here: Asterisk answers 511 to media commands on a dead channel
and ``result=-1`` to ``STREAM FILE``/``GET DATA`` both when the caller hung up and when
the prompt file is missing (``handle_streamfile`` / ``ast_app_getdata_full`` in
res_agi.c and main/app.c). Only the inline ``HANGUP`` line (seen by the codec) tells
them apart, and the recording (``agi_hangup``) shows it arriving only before the *next*
reply. So after a ``-1`` the channel sends one cheap probe, ``GET VARIABLE
CHANNEL(state)`` (answered even on a dead channel): if the ``HANGUP`` line comes with its
reply, the caller is gone; if not, the prompt failed and the flow retries it as a failed
attempt. Once the caller is known gone, the channel sends nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from ivr.domain.ivr_ops import (
    HUNG_UP,
    OK,
    Answer,
    Decision,
    Flow,
    GetDigits,
    GetVar,
    Hangup,
    Play,
    SayDigits,
    SetVar,
    Step,
    StepResult,
    Verbose,
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
    ServerState,
)
from ivr.protocol.errors import RemoteProtocolError

__all__ = ["AGIChannel", "AGISession", "CommandTimeout", "EnvironmentTimeout", "SessionClosed", "drive"]

log = get_logger(__name__)

READ_SIZE: Final = 16 * 1024
#: Read after an ambiguous ``result=-1`` to let a pending ``HANGUP`` line show itself.
PROBE_VARIABLE: Final = "CHANNEL(state)"


class SessionClosed(Exception):
    """Asterisk closed the connection (the dialplan moved on, or the PBX went away)."""


class EnvironmentTimeout(Exception):
    """The environment block did not arrive in time."""


class CommandTimeout(Exception):
    """A command was not answered in time."""


class AGISession:
    """Reads the environment, sends one command at a time, returns its reply."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        env_timeout: float,
        command_timeout: float,
        media_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = AGIServerConnection()
        self.env_timeout = env_timeout
        self.command_timeout = command_timeout
        self.media_timeout = media_timeout
        self.commands_sent = 0

    @property
    def hung_up(self) -> bool:
        return self.conn.hung_up

    async def _fill(self) -> None:
        data = await self.reader.read(READ_SIZE)
        self.conn.receive_data(data)  # b"" = end of stream; the codec then reports CLOSED

    async def read_environment(self) -> AGIEnvironment:
        try:
            async with asyncio.timeout(self.env_timeout):
                while True:
                    event = self.conn.next_event()
                    if isinstance(event, AGIEnvironment):
                        return event
                    if event is NEED_DATA:
                        await self._fill()
                    elif event is CLOSED:  # pragma: no cover - the codec raises for EOF in the block
                        raise SessionClosed("connection closed before the environment")
                    else:  # pragma: no cover - nothing else can come before the blank line
                        raise RemoteProtocolError(f"unexpected {event!r} before the environment ended")
        except TimeoutError:
            raise EnvironmentTimeout(f"no complete environment within {self.env_timeout} s") from None

    async def command(self, command: Command, limit: float | None = None) -> Reply:
        """Send ``command`` and wait for its reply (inline HANGUP lines are noted and skipped)."""
        if self.conn.state is ServerState.CLOSED:
            raise SessionClosed("connection already closed")
        limit = self.command_timeout if limit is None else limit
        self.writer.write(self.conn.send(command))
        self.commands_sent += 1
        try:
            async with asyncio.timeout(limit):
                await self.writer.drain()
                while True:
                    event = self.conn.next_event()
                    if isinstance(event, Reply):
                        return event
                    if isinstance(event, HangupNotice):
                        log.info("agi.hangup_notice", pending=command.name)
                    elif event is NEED_DATA:
                        await self._fill()
                    elif event is CLOSED:
                        raise SessionClosed(f"connection closed while {command.name} was pending")
        except TimeoutError:
            raise CommandTimeout(f"{command.name} not answered within {limit} s") from None
        except ConnectionError as exc:
            raise SessionClosed(f"connection lost while {command.name} was pending: {exc}") from None

    async def close(self) -> None:
        """Close our side; Asterisk then continues the dialplan after ``AGI()``."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def abort(self) -> None:
        """Drop the connection at once (shutdown deadline passed)."""
        self.writer.transport.abort()


class AGIChannel:
    """Performs flow steps as AGI commands on one session."""

    def __init__(self, session: AGISession) -> None:
        self.session = session

    async def perform(self, step: Step) -> StepResult:
        s = self.session
        if s.hung_up and not isinstance(step, GetVar | Verbose):
            return HUNG_UP  # the caller is gone: no more media, no more variables
        if isinstance(step, Answer):
            return await self._media(await s.command(agi.answer(), s.media_timeout), step)
        if isinstance(step, Play):
            return await self._media(await s.command(agi.stream_file(step.prompt), s.media_timeout), step)
        if isinstance(step, SayDigits):
            return await self._media(await s.command(agi.say_digits(step.digits), s.media_timeout), step)
        if isinstance(step, GetDigits):
            limit = s.media_timeout + step.timeout_ms / 1000
            reply = await s.command(agi.get_data(step.prompt, step.timeout_ms, step.max_digits), limit)
            failed = await self._media(reply, step)
            if failed is not OK:
                return failed
            return StepResult(digits=reply.result or "", timed_out=reply.timed_out)
        if isinstance(step, SetVar):
            reply = await s.command(agi.set_variable(step.name, step.value))
            return OK if reply.ok else self._failed(reply, step)
        if isinstance(step, GetVar):
            reply = await s.command(agi.get_variable(step.name))
            if reply.ok and reply.result == "1":
                return StepResult(value=reply.data or "")
            return StepResult(value=None)
        if isinstance(step, Verbose):
            await s.command(agi.verbose(step.message))
            return OK
        if isinstance(step, Hangup):
            await s.command(agi.hangup())
            return OK
        raise TypeError(f"unknown step {step!r}")  # pragma: no cover

    async def _media(self, reply: Reply, step: Step) -> StepResult:
        if reply.dead_channel:
            return HUNG_UP
        if not reply.ok:
            return self._failed(reply, step)
        if reply.result == "-1":
            if not self.session.hung_up:
                await self.session.command(agi.get_variable(PROBE_VARIABLE))
            if self.session.hung_up:
                return HUNG_UP
            log.warning("agi.step_failed", step=repr(step), reply=reply.text)
            return StepResult(failed=True)
        return OK

    def _failed(self, reply: Reply, step: Step) -> StepResult:
        log.error(
            "agi.command_refused", step=repr(step), code=reply.code, reply=reply.text, usage=reply.usage
        )
        return StepResult(failed=True)


async def drive(flow: Flow, channel: AGIChannel) -> Decision:
    """Run ``flow`` to its end over ``channel``; the flow is closed if the channel fails."""
    try:
        step = next(flow)
        while True:
            result = await channel.perform(step)
            step = flow.send(result)
    except StopIteration as stop:
        decision: Decision = stop.value
        return decision
    finally:
        flow.close()
