"""``ivr run`` as an operator meets it: a clear line and an exit status, never a traceback.

Each case runs the real command in a process of its own, with a configuration in which
one thing is wrong: the configuration itself (exit 2), the FastAGI port already taken, or
the spool held by another controller (exit 1). The failed start must not leave the
process hanging: it exits on its own, well before the test's limit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.storage.spool import Spool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, agi_port: int, redis_url: str, spool: Path) -> Path:
    q = json.dumps  # a JSON string is a TOML basic string
    path.write_text(
        f"""
[ami]
host = "127.0.0.1"
port = {free_port()}
username = "ivr"
secret = "s3cret"

[agi]
host = "127.0.0.1"
port = {agi_port}

[redis]
url = {q(redis_url)}
spool_path = {q(str(spool))}
hash_key = "a-key-for-the-test-only-0123456789"

[web]
port = {free_port()}

[queues.caf]
service = "caf"

[services.caf]
fallback_queue = "caf"
[services.caf.menus.main]
prompt = "decroche/caf-menu-main"
[services.caf.menus.main.options]
"1" = {{ queue = "caf" }}
""",
        encoding="utf-8",
    )
    return path


def ivr_run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ivr.cli", "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_bad_configuration_exits_2_with_the_key_at_fault(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[agi]\nport = "four thousand"\n', encoding="utf-8")
    done = ivr_run(config)
    assert done.returncode == 2
    assert "ivr run:" in done.stderr and "agi.port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_fastagi_port_in_use_exits_1_with_one_clear_line(
    tmp_path: Path, redis_url: str, taken_port: int
) -> None:
    config = write_config(tmp_path / "c.toml", agi_port=taken_port, redis_url=redis_url, spool=tmp_path / "s")
    done = ivr_run(config)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ivr run: cannot start:") and str(taken_port) in last
    assert "Traceback" not in done.stderr


def test_a_spool_held_by_another_controller_exits_1(tmp_path: Path, redis_url: str) -> None:
    spool_path = tmp_path / "spool.jsonl"
    held = Spool(spool_path)
    held.open()
    try:
        config = write_config(
            tmp_path / "c.toml", agi_port=free_port(), redis_url=redis_url, spool=spool_path
        )
        done = ivr_run(config)
    finally:
        held.close()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "ivr run: cannot start:" in done.stderr and "in use by another process" in done.stderr
    assert "Traceback" not in done.stderr
