"""The AGI() application over FastAGI: the simulator as the *client* of an IVR server.

When a call reaches ``AGI(agi://host:port/script?query,arg1,...)`` the engine connects to
that server over TCP (real sockets, real time), sends the environment block exactly as
Asterisk 22 does (``launch_netscript`` then ``setup_env`` in ``res/res_agi.c``: same keys,
same order, ``agi_version: 22.10.1``, ``agi_arg_N`` last) and answers each command line
with :class:`ivr.protocol.agi.AGIClientConnection`. Commands that take time on a phone
line take that much *virtual* time here: STREAM FILE plays for the prompt's duration
(``[prompts]`` table, 8000 samples per second for ``endpos``), GET DATA collects the
caller's DTMF (``ast_app_getdata_full`` / ``ast_readstring_full``: 6 s for the first digit
and 2 s between digits unless a timeout is given, ``#`` ends input), WAIT FOR DIGIT waits.

Hangups behave as in the ``agi_hangup`` recording (``run_agi``): once the channel is gone
Asterisk writes one unsolicited ``HANGUP`` line, then keeps serving in "dead" mode where
only the commands flagged dead-safe in ``commands[]`` (GET/SET VARIABLE, VERBOSE, EXEC,
NOOP, DATABASE ...) run and the rest get ``511``. Unknown commands get ``510``, a wrong
number of arguments the ``520`` usage block. ``EXEC`` runs the simulator's applications
(``200 result=-2`` for any other), MSet among them: the IVR sets its variables with it.
Every command is mirrored on AMI as AGIExecStart/AGIExecEnd. When the server closes the
socket the dialplan continues (``AGISTATUS=SUCCESS``), or stops if the channel hung up
(``AGISTATUS=HANGUP``); if the server cannot be reached the AGI fails and the dialplan
continues (``AGISTATUS=FAILURE``, ``launch_netscript`` returning ``AGI_RESULT_FAILURE``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import math
import os
import socket
from typing import TYPE_CHECKING, Final

import structlog

from ivr.protocol.agi import AGIClientConnection, Command, UnknownCommand
from ivr.protocol.errors import ProtocolError
from ivr.sim.apps import STOP, AppResult, run_app
from ivr.sim.channel import HANGUP, TIMEOUT, UP, Channel
from ivr.sim.dialplan import split_args, substitute

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["AGI_PORT", "app_agi", "parse_agi_url"]

log = structlog.get_logger(__name__)

AGI_PORT: Final = 4573
SAMPLE_RATE: Final = 8000
#: Incoming bytes buffered before we stop reading a FastAGI server that floods us.
MAX_PENDING: Final = 256 * 1024

#: Commands allowed on a dead channel (``commands[]`` of res_agi.c, last column).
DEAD_OK: Final = frozenset(
    {
        "ASYNCAGI BREAK",
        "DATABASE DEL",
        "DATABASE DELTREE",
        "DATABASE GET",
        "DATABASE PUT",
        "EXEC",
        "GET FULL VARIABLE",
        "GET VARIABLE",
        "NOOP",
        "SET VARIABLE",
        "VERBOSE",
        "SPEECH DESTROY",
        "SPEECH UNLOAD GRAMMAR",
    }
)

#: ``c->usage``: the command's XML description, printed by a 520 reply (first paragraph).
USAGE: Final[dict[str, str]] = {
    "ANSWER": "Answers channel if not already in answer state. Returns -1 on channel failure, or 0 if "
    "successful.",
    "CHANNEL STATUS": "Returns the status of the specified channelname. If no channel name is given then "
    "returns the status of the current channel.",
    "DATABASE DEL": "Deletes an entry in the Asterisk database for a given family and key.",
    "DATABASE GET": "Retrieves an entry in the Asterisk database for a given family and key.",
    "DATABASE PUT": "Adds or updates an entry in the Asterisk database for a given family, key, and value.",
    "EXEC": "Executes application with given options.",
    "GET DATA": "Stream the given file, and receive DTMF data.",
    "GET FULL VARIABLE": "Evaluates the given expression against the channel specified by channelname, "
    "or the current channel if channelname is not provided.",
    "GET OPTION": "Behaves similar to STREAM FILE but used with a timeout option.",
    "GET VARIABLE": "Returns 0 if variablename is not set. Returns 1 if variablename is set and returns the "
    "variable in parentheses.",
    "HANGUP": "Hangs up the specified channel. If no channel name is given, hangs up the current channel",
    "SAY DIGITS": "Say a given digit string, returning early if any of the given DTMF digits are received on "
    "the channel.",
    "SAY NUMBER": "Say a given number, returning early if any of the given DTMF digits are received on the "
    "channel.",
    "SET CONTEXT": "Sets the context for continuation upon exiting the application.",
    "SET EXTENSION": "Changes the extension for continuation upon exiting the application.",
    "SET MUSIC": "Enables/Disables the music on hold generator.",
    "SET PRIORITY": "Changes the priority for continuation upon exiting the application.",
    "SET VARIABLE": "Sets a variable to the current channel.",
    "STREAM FILE": "Send the given file, allowing playback to be interrupted by the given digits, if any.",
    "CONTROL STREAM FILE": "Send the given file, allowing playback to be controlled by the given digits, "
    "if any.",
    "VERBOSE": "Sends message to the console via verbose message system.",
    "WAIT FOR DIGIT": "Waits up to timeout milliseconds for channel to receive a DTMF digit.",
    "RECORD FILE": "Record to a file until a given dtmf digit in the sequence is received.",
}


def parse_agi_url(url: str) -> tuple[str, int, str]:
    """``agi://host[:port][/script]`` -> (host, port, script) as ``launch_netscript`` splits it."""
    rest = url[len("agi://") :]
    host, _, script = rest.partition("/")
    port = AGI_PORT
    if host.startswith("["):
        end = host.find("]")
        hostname = host[1:end]
        if host[end + 1 : end + 2] == ":":
            port = int(host[end + 2 :])
        return hostname, port, script
    name, sep, port_s = host.rpartition(":")
    if sep and port_s.isdigit():
        return name, int(port_s), script
    return host, port, script


def _resolve_once(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class _Link(asyncio.Protocol):
    """The socket to the FastAGI server; whole lines are handed to the session."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_PENDING and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self.chan.wake_data()

    def eof_received(self) -> bool:
        self.eof = True
        self.chan.wake_data()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.chan.wake_data()

    def next_line(self) -> bytes | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            if self.eof and self.buffer:
                line = bytes(self.buffer)  # last line without LF: fgets returns it too
                self.buffer.clear()
                return line + b"\n"
            return None
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        if self.paused and len(self.buffer) < MAX_PENDING // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return line

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def app_agi(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """AGI(url[,arg...]): run a FastAGI session; set AGISTATUS."""
    args = split_args(data)
    url = args[0].strip()
    if not url.lower().startswith("agi://"):
        log.warning("sim.agi_unsupported", url=url, channel=chan.name)
        sim.set_var(chan, "AGISTATUS", "NOTFOUND")
        return None
    status = await _Session(sim, chan, url, args[1:]).run()
    sim.set_var(chan, "AGISTATUS", status)
    if status == "HANGUP":
        return STOP
    return None


class _Session:
    def __init__(self, sim: Simulator, chan: Channel, url: str, args: list[str]) -> None:
        self.sim = sim
        self.chan = chan
        self.url = url
        self.args = args
        self.conn = AGIClientConnection()  # Asterisk's own line limit
        self.link: _Link | None = None
        self.dead = chan.hangup_requested or chan.gone
        self.notified = False

    def environment(self, script: str) -> list[tuple[str, str]]:
        c = self.chan
        env = [("agi_network", "yes")]
        if script:
            env.append(("agi_network_script", script))
        env += [
            ("agi_request", self.url),
            ("agi_channel", c.name),
            ("agi_language", c.language),
            ("agi_type", c.name.split("/", 1)[0]),
            ("agi_uniqueid", c.uniqueid),
            ("agi_version", self.sim.config.version),
            ("agi_callerid", c.cid_num or "unknown"),
            ("agi_calleridname", c.cid_name or "unknown"),
            ("agi_callingpres", "0"),
            ("agi_callingani2", "0"),
            ("agi_callington", "0"),
            ("agi_callingtns", "0"),
            ("agi_dnid", "unknown"),
            ("agi_rdnis", "unknown"),
            ("agi_context", c.context),
            ("agi_extension", c.exten),
            ("agi_priority", str(c.priority)),
            ("agi_enhanced", "0.0"),
            ("agi_accountcode", ""),
            ("agi_threadid", str(140000000000000 + self.sim.rng.randrange(10**12))),
        ]
        env += [(f"agi_arg_{i}", a) for i, a in enumerate(self.args, 1)]
        return env

    async def run(self) -> str:
        sim = self.sim
        try:
            host, port, script = parse_agi_url(self.url)
            if sim.config.agi_server:
                host, _, port_s = sim.config.agi_server.rpartition(":")
                port = int(port_s)
        except ValueError:
            log.warning("sim.agi_bad_url", url=self.url)
            return "FAILURE"
        link = await self._connect(host, port)
        if isinstance(link, str):
            log.warning("sim.agi_connect_failed", url=self.url, error=link)
            return "FAILURE"
        self.link = link
        sim.clock.sync_external()
        try:
            link.write(self.conn.start(self.environment(script)))
            return await self._serve()
        finally:
            link.close()

    async def _connect(self, host: str, port: int) -> _Link | str:
        """Connect to the FastAGI server: the link, or why not (``launch_netscript``).

        To an IP address the connection is made by hand, without exceptions: a refused
        connect through ``loop.create_connection`` leaves an exception, its traceback and
        the futures it went through in a reference cycle, and an IVR that is down (every
        AGI() refused) then spends a tenth of the simulator's time in the garbage
        collector. A host name goes through ``create_connection`` (name resolution).
        """
        loop = asyncio.get_running_loop()
        timeout = self.sim.config.agi_connect_timeout
        family = _address_family(host)
        if family is None:
            try:
                async with asyncio.timeout(timeout):
                    _, link = await loop.create_connection(lambda: _Link(self.chan), host, port)
            except (OSError, TimeoutError) as exc:
                return str(exc) or type(exc).__name__
            return link
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                # Writable once connected or refused (False from the timer on a timeout).
                # Always through the loop, even when the kernel already knows: a refusal
                # then lands at the same point of the engine's story on every run.
                ready: asyncio.Future[bool] = loop.create_future()
                loop.add_writer(sock.fileno(), _resolve_once, ready, True)
                timer = loop.call_later(timeout, _resolve_once, ready, False)
                try:
                    connected = await ready
                finally:
                    loop.remove_writer(sock.fileno())
                    timer.cancel()
                if not connected:
                    sock.close()
                    return f"connect to {host}:{port} timed out after {timeout:g} s"
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sock.close()
                return f"[Errno {err}] Connect call failed ({host!r}, {port}): {os.strerror(err)}"
            _, link = await loop.create_connection(lambda: _Link(self.chan), sock=sock)
        except OSError as exc:
            sock.close()
            return str(exc) or type(exc).__name__
        except BaseException:
            sock.close()
            raise
        return link

    async def _serve(self) -> str:
        link = self.link
        assert link is not None
        chan = self.chan
        while True:
            if not self.dead and (chan.hangup_requested or chan.gone):
                self.dead = True
                if not self.notified:
                    self.notified = True
                    link.write(b"HANGUP\n")
            line = link.next_line()
            if line is None:
                if link.eof:
                    break
                await chan.wait(None, data=True, hangup=not self.dead)
                continue
            self.sim.clock.sync_external()
            self.conn.receive_data(line)
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                # A line longer than Asterisk would ever read: drop the session, go on.
                log.warning("sim.agi_bad_line", url=self.url, error=str(exc))
                return "FAILURE"
            if isinstance(event, Command | UnknownCommand):
                await self._execute(event, line.decode("utf-8", "replace").rstrip("\r\n"))
        return "HANGUP" if self.dead else "SUCCESS"

    # -- commands --------------------------------------------------------------------------
    async def _execute(self, cmd: Command | UnknownCommand, raw: str) -> None:
        sim, chan = self.sim, self.chan
        command_id = str(sim.rng.randrange(2**31))
        sim.emit_chan("AGIExecStart", chan, [("CommandId", command_id), ("Command", raw)], "agi,all")
        if isinstance(cmd, UnknownCommand):
            self._reply(510)
            code, text = 510, "Invalid or unknown command"
        elif self.dead and cmd.name not in DEAD_OK:
            self._reply(511)
            code, text = 511, "Command Not Permitted on a dead channel or intercept routine"
        else:
            code, text = await self._dispatch(cmd)
        sim.emit_chan(
            "AGIExecEnd",
            chan,
            [("CommandId", command_id), ("Command", raw), ("ResultCode", str(code)), ("Result", text)],
            "agi,all",
        )

    def _reply(
        self,
        code: int = 200,
        result: str | int | None = None,
        data: str | None = None,
        endpos: int | None = None,
        usage: tuple[str, ...] = (),
    ) -> None:
        assert self.link is not None
        self.link.write(self.conn.reply(code, result, data, endpos, usage))

    def _usage(self, name: str) -> tuple[int, str]:
        self._reply(520, usage=(USAGE.get(name, name),))
        return 520, "Usage"

    async def _dispatch(self, cmd: Command) -> tuple[int, str]:
        name, args = cmd.name, cmd.args
        n = len(args)
        sim, chan = self.sim, self.chan
        ok = (200, "Success")
        fail = (-1, "Failure")
        if name == "ANSWER":
            if chan.state != UP:
                sim.answer(chan)
                if await chan.wait(sim.config.answer_media_wait) is HANGUP:
                    self._reply(200, -1)
                    return fail
            self._reply(200, 0)
            return ok
        if name == "SET VARIABLE":
            if n != 2:
                return self._usage(name)
            sim.set_var(chan, args[0], args[1])
            self._reply(200, 1)
            return ok
        if name == "GET VARIABLE":
            if n != 1:
                return self._usage(name)
            value = chan.builtin(args[0])
            if value is None:
                self._reply(200, 0)
            else:
                self._reply(200, 1, value)
            return ok
        if name == "GET FULL VARIABLE":
            if n not in (1, 2):
                return self._usage(name)
            target = chan if n == 1 else sim.find_channel(args[1])
            if target is None:
                self._reply(200, 0)
            else:
                self._reply(200, 1, substitute(args[0], target.builtin))
            return ok
        if name == "VERBOSE":
            if n < 1:
                return self._usage(name)
            self._reply(200, 1)
            return ok
        if name == "NOOP":
            self._reply(200, 0)
            return ok
        if name in ("STREAM FILE", "CONTROL STREAM FILE", "GET OPTION"):
            return await self._stream(name, args)
        if name == "GET DATA":
            if n < 1:
                return self._usage(name)
            return await self._get_data(args)
        if name == "WAIT FOR DIGIT":
            if n != 1:
                return self._usage(name)
            timeout = _int(args[0])
            item = await self._wait_digit(None if timeout < 0 else timeout / 1000.0, "0123456789*#ABCD")
            if item is HANGUP:
                self._reply(200, -1)
                return fail
            self._reply(200, ord(item) if isinstance(item, str) else 0)
            return ok
        if name in ("SAY DIGITS", "SAY NUMBER", "SAY ALPHA", "SAY PHONETIC"):
            if (name == "SAY DIGITS" and n != 2) or not 2 <= n <= 3:
                return self._usage(name)
            words = len(args[0]) if name != "SAY NUMBER" else max(1, len(str(abs(_int(args[0])))))
            item = await self._wait_digit(0.7 * words, args[1])
            if item is HANGUP:
                self._reply(200, -1)
                return fail
            self._reply(200, ord(item) if isinstance(item, str) else 0)
            return ok
        if name == "EXEC":
            if n < 1:
                return self._usage(name)
            appdata = args[1] if n > 1 else ""
            app = args[0].lower()
            if app not in _EXEC_APPS:
                self._reply(200, -2)
                return ok
            result = await run_app(sim, chan, args[0], appdata)
            self._reply(200, -1 if result is STOP and not chan.alive else 0)
            return ok
        if name == "HANGUP":
            if n > 1:
                return self._usage(name)
            target = chan if n == 0 else sim.find_channel(args[0])
            if target is None:
                self._reply(200, -1)
                return ok
            sim.soft_hangup(target)
            self._reply(200, 1)
            return ok
        if name == "CHANNEL STATUS":
            if n > 1:
                return self._usage(name)
            target = chan if n == 0 else sim.find_channel(args[0])
            self._reply(200, -1 if target is None else target.state)
            return ok
        if name in ("SET CONTEXT", "SET EXTENSION", "SET PRIORITY"):
            if n != 1:
                return self._usage(name)
            if name == "SET CONTEXT":
                chan.context = args[0]
            elif name == "SET EXTENSION":
                chan.exten = args[0]
            else:
                prio = sim.dialplan.priority_of(chan.context, chan.exten, args[0])
                if prio is not None:
                    chan.priority = prio - 1
            chan.touch()
            self._reply(200, 0)
            return ok
        if name.startswith("DATABASE "):
            return self._database(name, args)
        if name == "SET MUSIC":
            if n < 1:
                return self._usage(name)
            self._reply(200, 0)
            return ok
        if name == "SET CALLERID":
            if n != 1:
                return self._usage(name)
            cid = args[0]
            num = cid[cid.find("<") + 1 : cid.find(">")] if "<" in cid else cid
            cname = cid[: cid.find("<")].strip().strip('"') if "<" in cid else chan.cid_name
            sim.set_callerid(chan, num, cname, connected=False)
            self._reply(200, 1)
            return ok
        if name == "RECORD FILE":
            if n < 4:
                return self._usage(name)
            timeout = _int(args[3])
            item = await self._wait_digit(None if timeout < 0 else timeout / 1000.0, args[2])
            if item is HANGUP:
                self._reply(200, -1, endpos=0)
                return fail
            if isinstance(item, str):
                self._reply(200, ord(item), "dtmf", endpos=0)
            else:
                self._reply(200, 0, "timeout", endpos=max(0, timeout * 8))
            return ok
        # Known commands the simulator does not model: acknowledged without effect.
        self._reply(200, 0)
        return ok

    def _database(self, name: str, args: tuple[str, ...]) -> tuple[int, str]:
        db = self.sim.astdb.entries
        n = len(args)
        if name == "DATABASE GET":
            if n != 2:
                return self._usage(name)
            value = db.get((args[0], args[1]))
            if value is None:
                self._reply(200, 0)
            else:
                self._reply(200, 1, value)
        elif name == "DATABASE PUT":
            if n != 3:
                return self._usage(name)
            db[(args[0], args[1])] = args[2]
            self._reply(200, 1)
        elif name == "DATABASE DEL":
            if n != 2:
                return self._usage(name)
            self._reply(200, 1 if db.pop((args[0], args[1]), None) is not None else 0)
        else:  # DELTREE
            if n < 1:
                return self._usage(name)
            keys = [k for k in db if k[0] == args[0] and (n < 2 or k[1].startswith(args[1]))]
            for k in keys:
                del db[k]
            self._reply(200, 1 if keys else 0)
        return 200, "Success"

    async def _wait_digit(self, seconds: float | None, accept: str) -> object:
        """Wait for one of ``accept`` (other digits are read and dropped); TIMEOUT/HANGUP."""
        chan, sim = self.chan, self.sim
        deadline = None if seconds is None else sim.now() + seconds
        while True:
            left = None if deadline is None else max(0.0, deadline - sim.now())
            item = await chan.wait(left, dtmf=True)
            if item is TIMEOUT or item is HANGUP:
                return item
            if isinstance(item, str) and item in accept:
                return item

    async def _stream(self, name: str, args: tuple[str, ...]) -> tuple[int, str]:
        n = len(args)
        if name == "STREAM FILE" and not 2 <= n <= 3:
            return self._usage(name)
        if name == "GET OPTION" and not 2 <= n <= 3:
            return self._usage(name)
        if name == "CONTROL STREAM FILE" and not 2 <= n <= 8:
            return self._usage(name)
        sim, chan = self.sim, self.chan
        offset = _int(args[2]) if name == "STREAM FILE" and n > 2 else 0
        total = round(sim.config.prompt_seconds(args[0]) * SAMPLE_RATE)
        offset = min(max(0, offset), total)
        started = sim.now()
        item = await self._wait_digit((total - offset) / SAMPLE_RATE, args[1])
        played = offset + int((sim.now() - started) * SAMPLE_RATE)
        endpos = min(total, played) if item is not TIMEOUT else total
        if item is HANGUP:
            self._reply(200, -1, endpos=endpos)
            return -1, "Failure"
        if item is TIMEOUT and name == "GET OPTION" and n > 2:
            timeout = _int(args[2])
            item = await self._wait_digit(5.0 if timeout <= 0 else timeout / 1000.0, args[1])
            if item is HANGUP:
                self._reply(200, -1, endpos=endpos)
                return -1, "Failure"
        result = ord(item) if isinstance(item, str) else 0
        self._reply(200, result, endpos=endpos)
        sim.set_var(chan, "PLAYBACKSTATUS", "SUCCESS")
        return 200, "Success"

    async def _get_data(self, args: tuple[str, ...]) -> tuple[int, str]:
        """``handle_getdata`` (res/res_agi.c) over ``ast_app_getdata_full`` (main/app.c).

        The prompt plays interruptible by any digit, which then counts as the first one;
        the first digit may take ``fto`` and each next one ``to`` milliseconds (both the
        given timeout, or 6000/2000 without one); ``#`` ends input and is not returned.
        Timed out: ``200 result=<digits so far> (timeout)``; hangup: ``200 result=-1``.
        """
        sim = self.sim
        timeout = _int(args[1]) if len(args) > 1 else 0
        maxlen = _int(args[2]) if len(args) > 2 else 1024
        if timeout == 0:
            fto, to = 6.0, 2.0
        elif timeout < 0:
            fto = to = math.inf
        else:
            fto = to = timeout / 1000
        if maxlen <= 0:
            self._reply(200, -1)
            return 200, "Success"
        digits = ""
        item = await self._wait_digit(sim.config.prompt_seconds(args[0]), "0123456789*#ABCD")
        wait = fto
        while True:
            if item is HANGUP:
                self._reply(200, -1)
                return 200, "Success"
            if item is TIMEOUT:
                item = await self._wait_digit(None if math.isinf(wait) else wait, "0123456789*#ABCD")
                if item is TIMEOUT:
                    self._reply(200, digits, "timeout")
                    return 200, "Success"
                continue
            assert isinstance(item, str)
            if item == "#":
                self._reply(200, digits)
                return 200, "Success"
            digits += item
            if len(digits) >= maxlen:
                self._reply(200, digits)
                return 200, "Success"
            wait = to
            item = TIMEOUT


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return 0


_EXEC_APPS: Final = frozenset(
    {
        "mset",
        "answer",
        "hangup",
        "wait",
        "noop",
        "set",
        "goto",
        "gotoif",
        "execif",
        "ringing",
        "busy",
        "congestion",
        "senddtmf",
        "playback",
        "dial",
        "queue",
    }
)


@functools.lru_cache(maxsize=256)
def _address_family(host: str) -> socket.AddressFamily | None:
    """The family of an IP address, None for a host name (every AGI() asks, for one host)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
