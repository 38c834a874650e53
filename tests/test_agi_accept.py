"""The FastAGI server serves new calls first: accept, environment and first command do not
wait behind the replies of calls in progress.

The loop's turn is every ready socket's callback, in the order the kernel reported them;
a new connection that becomes ready after the replies of calls in progress comes last, and
asyncio's own accept path then needs two more turns before it reads the environment. These
tests make a turn expensive on purpose (each reply of a call in progress costs the loop
4 ms), queue those replies and a new call in the kernel while the loop is busy (the test's
own code runs on the loop), then look at the order in which the server's flows ran.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from ivr.agi import server as server_module
from ivr.agi.server import AGIServer
from ivr.config import default_config
from ivr.domain.ivr_ops import Answer, CallInfo, Clock, Decision, EventSink, Flow, Play
from ivr.protocol.agi import encode_environment
from ivr.recording import read_fastagi

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
ENV = dict(read_fastagi(FIXTURES / "answered" / "fastagi.txt")[0].env)
IN_PROGRESS = 20
REPLY_COST_S = 0.004


def env_bytes(script: str, uniqueid: str) -> bytes:
    env = dict(ENV)
    env["agi_network_script"] = script
    env["agi_request"] = f"agi://127.0.0.1:4573/{script}"
    env["agi_uniqueid"] = uniqueid
    return encode_environment(env)


def decision() -> Decision:
    return Decision(action="queue", service="test", lang="fr", queue="q")


class Rig:
    """A server with two scripts: ``slow`` (its reply to ANSWER costs the loop 4 ms) and
    ``new`` (one ANSWER); ``order`` is the order the flows ran in."""

    def __init__(self) -> None:
        self.order: list[str] = []
        flows: dict[str, Callable[[CallInfo, Clock, EventSink], Flow]] = {
            "slow": self.slow,
            "new": self.new,
            "slowstart": self.slowstart,
        }
        self.server = AGIServer(default_config(), flows, None, "127.0.0.1", 0)  # type: ignore[arg-type]
        self.sockets: list[socket.socket] = []

    def slow(self, call: CallInfo, clock: Clock, emit: EventSink) -> Flow:
        yield Answer()
        time.sleep(REPLY_COST_S)  # a reply that keeps the loop busy
        self.order.append(call.uniqueid)
        yield Play("fr/silence/1")
        return decision()

    def new(self, call: CallInfo, clock: Clock, emit: EventSink) -> Flow:
        self.order.append(call.uniqueid)
        yield Answer()
        return decision()

    def slowstart(self, call: CallInfo, clock: Clock, emit: EventSink) -> Flow:
        time.sleep(0.0015)  # a flow that takes 1.5 ms to start
        yield Answer()
        return decision()

    def connect(self) -> socket.socket:
        """A blocking connect: on loopback the kernel completes it without the server's accept."""
        sock = socket.create_connection(("127.0.0.1", self.server.port))
        sock.setblocking(False)
        self.sockets.append(sock)
        return sock


async def read_line(sock: socket.socket) -> bytes:
    """One line the server sent (within 5 s), letting the loop run meanwhile."""
    data = b""
    deadline = time.monotonic() + 5.0
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(1)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line from the server, got {data!r}") from None
            await asyncio.sleep(0.002)
            continue
        if not chunk:
            raise ConnectionError(f"closed by the server after {data!r}")
        data += chunk
    return data


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    await r.server.start()
    try:
        yield r
    finally:
        for sock in r.sockets:
            sock.close()
        await r.server.stop(grace=0.5)


async def calls_in_progress(r: Rig) -> list[socket.socket]:
    """``IN_PROGRESS`` calls, each waiting for its reply to ANSWER."""
    socks = []
    for i in range(IN_PROGRESS):
        sock = r.connect()
        sock.sendall(env_bytes("slow", f"old-{i}"))
        socks.append(sock)
    for sock in socks:
        assert await read_line(sock) == b"ANSWER\n"
    return socks


async def test_a_new_call_is_accepted_and_answered_between_replies_of_calls_in_progress(rig: Rig) -> None:
    olds = await calls_in_progress(rig)
    # While the loop is held by this code: every reply, then a new call with its environment.
    for sock in olds:
        sock.sendall(b"200 result=0\n")
    new = rig.connect()
    new.sendall(env_bytes("new", "new-call"))
    assert await read_line(new) == b"ANSWER\n"
    for sock in olds:
        assert (await read_line(sock)).startswith(b"STREAM FILE")
    # Ready after all the replies, the new call would be served after all of them (and two
    # more turns); it starts after the first reply or two (a look every NEW_CALL_POLL_S).
    assert rig.order.index("new-call") <= 2, rig.order


async def test_an_environment_arriving_after_the_accept_is_read_between_replies(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "ENV_POLL_WINDOW_S", 5.0)  # this test's pauses are longer
    olds = await calls_in_progress(rig)
    new = rig.connect()  # accepted, its transport made, no environment yet
    for _ in range(50):
        if rig.server.stats.sessions_active == IN_PROGRESS + 1:
            break
        await asyncio.sleep(0.01)
    assert rig.server.stats.sessions_active == IN_PROGRESS + 1
    await asyncio.sleep(0.05)
    for sock in olds:
        sock.sendall(b"200 result=0\n")
    new.sendall(env_bytes("new", "late-env"))
    assert await read_line(new) == b"ANSWER\n"
    for sock in olds:
        assert (await read_line(sock)).startswith(b"STREAM FILE")
    assert rig.order.index("late-env") <= 2, rig.order


async def test_a_call_whose_environment_is_bad_at_the_accept_is_closed_and_freed(rig: Rig) -> None:
    sock = rig.connect()
    sock.sendall(b"agi_network_script: new\nthis is not a variable\n\n")
    with pytest.raises(ConnectionError):
        await read_line(sock)
    assert rig.server.stats.failed == 1
    assert rig.server.stats.sessions_active == 0
    # The server goes on: the next call is served.
    ok = rig.connect()
    ok.sendall(env_bytes("new", "after-bad"))
    assert await read_line(ok) == b"ANSWER\n"


class Exhausted:
    """A listening socket whose accept() fails as when the process is out of descriptors,
    while ``failing``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failing = True
        self.calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()


async def test_out_of_descriptors_pauses_accepting_then_serves_the_call(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "ACCEPT_PAUSE_S", 0.2)
    monkeypatch.setattr(server_module, "NEW_CALL_POLL_S", 0.0)  # every reply looks for new calls
    loop = asyncio.get_running_loop()
    server = rig.server
    real = server._listeners[0]
    wrapped = Exhausted(real)
    loop.remove_reader(real.fileno())
    server._listeners[0] = wrapped  # type: ignore[call-overload]
    loop.add_reader(real.fileno(), server._accept, wrapped)
    with structlog.testing.capture_logs() as logs:
        busy = rig.connect()  # a call in progress: its replies are where the server looks
        new = rig.connect()
        await asyncio.sleep(0.02)
        assert wrapped.calls == 1  # paused: neither the loop nor the looks between replies retry
        for _ in range(5):
            server.serve_new_calls()
        assert wrapped.calls == 1
        wrapped.failing = False  # descriptors free again: accepting resumes after the pause
        busy.sendall(env_bytes("new", "busy"))
        new.sendall(env_bytes("new", "after-pause"))
        assert await read_line(new) == b"ANSWER\n"
        assert await read_line(busy) == b"ANSWER\n"
    paused = [e for e in logs if e["event"] == "agi.accept_paused"]
    assert len(paused) == 1 and "Too many open files" in paused[0]["error"]


async def test_a_burst_of_new_calls_is_served_without_nesting(rig: Rig) -> None:
    """200 calls queued at once, each flow slow to start: each is started from the look of
    the one before; one look at a time, or the stack grows by a call each millisecond."""
    socks = []
    for i in range(200):
        sock = rig.connect()
        sock.sendall(env_bytes("slowstart", f"burst-{i}"))
        socks.append(sock)
    for sock in socks:
        assert await read_line(sock) == b"ANSWER\n"
    assert rig.server.stats.sessions_active == 200 and rig.server.stats.failed == 0


async def test_a_silent_connection_is_left_to_its_transport_after_the_window(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "ENV_POLL_WINDOW_S", 0.02)
    monkeypatch.setattr(server_module, "NEW_CALL_POLL_S", 0.0)
    server = rig.server
    silent = rig.connect()
    for _ in range(100):
        if server._waiting_env:
            break
        await asyncio.sleep(0.005)
    [session] = list(server._waiting_env)
    await asyncio.sleep(0.05)
    server.serve_new_calls()
    assert session.transport is not None and not server._waiting_env  # no more polling
    silent.sendall(env_bytes("new", "late"))  # its transport still reads it
    assert await read_line(silent) == b"ANSWER\n"


async def test_stop_twice_at_once_and_the_port_while_stopping(rig: Rig) -> None:
    server = rig.server
    port = server.port
    sock = rig.connect()
    sock.sendall(env_bytes("new", "in-call"))
    assert await read_line(sock) == b"ANSWER\n"  # then never answered: it holds the drain
    first = asyncio.create_task(server.stop(grace=0.3))
    await asyncio.sleep(0.05)
    assert server.port == port
    await asyncio.wait_for(server.stop(grace=0.3), 5.0)  # waits for the first
    assert first.done() and first.exception() is None
    assert server.stats.sessions_active == 0


class NoIPv6:
    """The socket module of a host without IPv6 (``socket()`` fails for AF_INET6)."""

    def __init__(self, families: tuple[int, ...] = (socket.AF_INET6,)) -> None:
        self.families = families

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, family: int, *args: Any) -> socket.socket:
        if family in self.families:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return socket.socket(family, *args)


async def test_a_host_without_ipv6_listens_on_what_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "socket", NoIPv6())
    loop = asyncio.get_running_loop()
    listeners = await server_module._listen(loop, "", 0, 10)
    try:
        assert [s.family for s in listeners] == [socket.AF_INET]
    finally:
        for s in listeners:
            s.close()
    monkeypatch.setattr(server_module, "socket", NoIPv6((socket.AF_INET, socket.AF_INET6)))
    with pytest.raises(OSError, match="no address to listen on"):
        await server_module._listen(loop, "", 0, 10)


async def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AGIServer(default_config(), None, None, "127.0.0.1", port)
        with pytest.raises(OSError, match=f"error while attempting to bind on address .*{port}"):
            await server.start()
    # Nothing half-started was left behind: once the port is free, the same server starts.
    await server.start()
    try:
        assert server.port == port
    finally:
        await server.stop(grace=0.1)
