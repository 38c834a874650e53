"""A real Asterisk 22 for tests: a throwaway config tree built from the shipped files.

The tests in ``test_real_asterisk.py`` check what no simulator can: that the
configuration in ``asterisk-conf/`` and ``dialplans/`` is what Asterisk 22 actually
loads, that the AMI event filters of the ``ivr`` user really drop what they claim, and
that the dialplan's FastAGI requests carry what the controller expects.

The Asterisk binary comes from the environment (``IVR_ASTERISK_BIN``); nothing here
downloads or builds it. The config is copied flat into a temporary ``astetcdir`` (as
``asterisk-conf/README.md`` tells ops to install it) and changed only where a test
machine differs from a server -- each change checked, so that a reshaped shipped file
fails loudly instead of being silently left as is:

* ``asterisk.conf``: a ``[directories]`` section pointing every writable directory at
  the temporary tree, and the module and data directories at the binary's own; no
  ``runuser``/``rungroup`` (the tests run as whoever runs them).
* ``manager.conf``: a free port instead of 5038 and a known secret.
* ``extensions.conf`` ``[globals]``: ``IVR_AGI_HOST``/``IVR_AGI_PORT`` of the test's
  FastAGI server.
* ``modules.conf``: ``require`` lines of modules this build lacks (a build without
  PJSIP) are commented out; everything else stays.
* ``pjsip.conf``: bind and trunk contact on the loopback, so that no SIP packet leaves
  the machine when PJSIP is built.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "IVR_ASTERISK_BIN"
MODDIR_ENV_VAR = "IVR_ASTERISK_MODDIR"
DATADIR_ENV_VAR = "IVR_ASTERISK_DATADIR"
SKIP_REASON = "set IVR_ASTERISK_BIN to an Asterisk 22 binary to run"

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "asterisk-conf"
DIALPLAN_DIR = REPO / "dialplans"

AMI_USER = "ivr"
AMI_SECRET = "test-secret-0123456789"


def asterisk_binary() -> Path | None:
    """The binary named by ``IVR_ASTERISK_BIN``; None when the variable is unset.

    A variable that is set but names no executable is an error, not a reason to skip:
    a typo in CI must not quietly turn these tests off.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{ENV_VAR}={value} is not an executable file")
    return path


def module_dir(binary: Path) -> Path:
    """Where the binary's modules are: ``IVR_ASTERISK_MODDIR``, else the usual places.

    ``--prefix=/opt/asterisk`` puts them in ``/opt/asterisk/lib/asterisk/modules``;
    Debian-style packages in ``/usr/lib/<triplet>/asterisk/modules``.
    """
    override = os.environ.get(MODDIR_ENV_VAR, "").strip()
    if override:
        return Path(override)
    prefix = binary.resolve().parent.parent
    candidates = [
        prefix / "lib" / "asterisk" / "modules",
        prefix / "lib64" / "asterisk" / "modules",
        *sorted(prefix.glob("lib/*/asterisk/modules")),
    ]
    for candidate in candidates:
        if (candidate / "app_queue.so").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Asterisk module directory with app_queue.so near {binary}; set {MODDIR_ENV_VAR}"
    )


def data_dir(binary: Path) -> Path:
    """The binary's ``astdatadir``: ``IVR_ASTERISK_DATADIR``, else the usual places.

    It must be the real one, not a temporary directory: Asterisk 22 reads
    ``documentation/core-en_US.xml`` from it at start-up, and the config framework refuses
    to register options it finds no documentation for ("Stasis initialization failed").
    """
    override = os.environ.get(DATADIR_ENV_VAR, "").strip()
    if override:
        return Path(override)
    prefix = binary.resolve().parent.parent
    candidates = [
        prefix / "var" / "lib" / "asterisk",
        prefix / "share" / "asterisk",
        Path("/var/lib/asterisk"),
        Path("/usr/share/asterisk"),
    ]
    for candidate in candidates:
        if (candidate / "documentation" / "core-en_US.xml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Asterisk data directory with documentation/core-en_US.xml for {binary}; set {DATADIR_ENV_VAR}"
    )


def free_port() -> int:
    """A TCP port free on the loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shipped_contexts() -> set[str]:
    """Every dialplan context the files in ``dialplans/`` define."""
    contexts: set[str] = set()
    for path in DIALPLAN_DIR.glob("*.conf"):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\[([^\]]+)\]", line)
            if match and match.group(1) not in ("general", "globals"):
                contexts.add(match.group(1))
    return contexts


def _patch(text: str, pattern: str, replacement: str, *, name: str, count: int = 1) -> str:
    """Substitute ``pattern`` (multiline regex) exactly ``count`` times, or fail."""
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if n != count:
        raise AssertionError(f"{name}: expected {count} match(es) of {pattern!r}, found {n}")
    return new


@dataclass(frozen=True)
class RigConfig:
    """A temporary Asterisk config tree and the values patched into it."""

    root: Path
    binary: Path
    moddir: Path
    datadir: Path
    ami_port: int
    agi_host: str
    agi_port: int
    disabled_requires: tuple[str, ...]

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def asterisk_conf(self) -> Path:
        return self.etc / "asterisk.conf"

    @property
    def logdir(self) -> Path:
        return self.root / "log"

    @property
    def queue_log(self) -> Path:
        return self.logdir / "queue_log"

    @property
    def messages_log(self) -> Path:
        return self.logdir / "messages.log"

    @property
    def ctl_socket(self) -> Path:
        return self.root / "run" / "asterisk.ctl"


def build_config(
    root: Path,
    binary: Path,
    *,
    moddir: Path,
    datadir: Path,
    ami_port: int,
    agi_port: int,
    agi_host: str = "127.0.0.1",
) -> RigConfig:
    """Copy the shipped config flat into ``root/etc`` and patch it for this machine."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    for sub in ("lib", "db", "spool", "run", "log", "keys", "agi-bin"):  # astkeydir is root: keys/
        (root / sub).mkdir(parents=True, exist_ok=True)
    for src in (*sorted(CONF_DIR.glob("*.conf")), *sorted(DIALPLAN_DIR.glob("*.conf"))):
        if (etc / src.name).exists():
            raise AssertionError(f"{src.name} exists in both asterisk-conf/ and dialplans/")
        shutil.copyfile(src, etc / src.name)

    def edit(name: str, *changes: tuple[str, str]) -> None:
        path = etc / name
        text = path.read_text(encoding="utf-8")
        for pattern, replacement in changes:
            text = _patch(text, pattern, replacement, name=name)
        path.write_text(text, encoding="utf-8")

    directories = "\n".join(
        [
            "[directories]",
            f"astetcdir => {etc}",
            f"astmoddir => {moddir}",
            f"astvarlibdir => {root / 'lib'}",
            f"astdbdir => {root / 'db'}",
            f"astkeydir => {root}",
            f"astdatadir => {datadir}",
            f"astagidir => {root / 'agi-bin'}",
            f"astspooldir => {root / 'spool'}",
            f"astrundir => {root / 'run'}",
            f"astlogdir => {root / 'log'}",
            f"astsbindir => {binary.parent}",
            "",
        ]
    )
    edit(
        "asterisk.conf",
        (r"^runuser = .*\n", ""),
        (r"^rungroup = .*\n", ""),
        (r"^\[options\]$", directories + "\n[options]"),
    )
    edit(
        "manager.conf",
        (r"^port = 5038$", f"port = {ami_port}"),
        (r"^secret = .*$", f"secret = {AMI_SECRET}"),
    )
    edit(
        "extensions.conf",
        (r"^IVR_AGI_HOST=.*$", f"IVR_AGI_HOST={agi_host}"),
        (r"^IVR_AGI_PORT=.*$", f"IVR_AGI_PORT={agi_port}"),
    )
    edit(
        "pjsip.conf",
        (r"^bind = .*$", f"bind = 127.0.0.1:{free_port()}"),
        (r"^contact = sip:.*$", f"contact = sip:127.0.0.1:{free_port()}"),
    )
    modules = etc / "modules.conf"
    disabled: list[str] = []
    lines = []
    for line in modules.read_text(encoding="utf-8").splitlines():
        match = re.match(r"require\s*=>?\s*(\S+)", line)
        if match and not (moddir / match.group(1)).is_file():
            disabled.append(match.group(1))
            line = f"; not built here: {line}"
        lines.append(line)
    modules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return RigConfig(
        root=root,
        binary=binary,
        moddir=moddir,
        datadir=datadir,
        ami_port=ami_port,
        agi_host=agi_host,
        agi_port=agi_port,
        disabled_requires=tuple(disabled),
    )


class AsteriskError(RuntimeError):
    """Asterisk did not start, or a CLI command failed."""


class AsteriskProcess:
    """``asterisk -f`` on a :class:`RigConfig`; always stopped by :meth:`stop`."""

    def __init__(self, config: RigConfig) -> None:
        self.config = config
        self.output = config.root / "asterisk.out"
        self._proc: subprocess.Popen[bytes] | None = None

    def _base(self) -> list[str]:
        return [str(self.config.binary), "-C", str(self.config.asterisk_conf)]

    def start(self, timeout: float = 30.0) -> None:
        with self.output.open("wb") as out:
            self._proc = subprocess.Popen(
                [*self._base(), "-f", "-n", "-vvv"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise AsteriskError(
                    f"asterisk exited with status {self._proc.returncode} during start-up:\n{self.tail()}"
                )
            if self.config.ctl_socket.exists():
                result = self._run("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
                if result.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise AsteriskError(f"asterisk not fully booted after {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._base(), "-rx", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run a CLI command through the control socket; its output."""
        result = self._run(command, timeout)
        if result.returncode != 0:
            raise AsteriskError(f"{command!r} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result.stdout

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """``core stop now``; kill if it has not exited within 10 s."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("core stop now", timeout=5.0)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10.0)


@contextlib.contextmanager
def running_asterisk(binary: Path, *, agi_port: int | None = None) -> Iterator[AsteriskProcess]:
    """A started Asterisk on a fresh config tree; stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="ivr-ast-"))  # short: the control socket path is limited
    process: AsteriskProcess | None = None
    try:
        config = build_config(
            root,
            binary,
            moddir=module_dir(binary),
            datadir=data_dir(binary),
            ami_port=free_port(),
            agi_port=agi_port if agi_port is not None else free_port(),
        )
        process = AsteriskProcess(config)
        process.start()
        yield process
    finally:
        if process is not None:
            process.stop()
        shutil.rmtree(root, ignore_errors=True)
