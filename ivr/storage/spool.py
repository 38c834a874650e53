"""The local spool: an append-only file of call events that could not reach Redis yet.

When Redis is away the controller must keep taking calls and must not lose the events
that will later prove how they were handled. The event log writer appends them here and
sends them on, in order, when Redis is back. The file is:

* **one file, JSON lines, in order**: one event (``CallEvent.to_fields()``) per line,
  the oldest first; it is only ever appended to, read forward, and emptied as a whole.
* **crash-safe**: it is emptied (truncated to zero) only once every line has been
  stored in Redis. A crash in the middle of a drain leaves the whole file, and the next
  start re-sends lines that are already stored; the writer's idempotency check (the
  event ``id``) drops them, so nothing is counted twice.
* **fsync policy**: :meth:`Spool.sync` fsyncs; the writer calls it after each group of
  lines it spools and on ``flush()``/``close()``. A line written and not yet synced
  survives a crash of the controller (it is in the OS page cache) but not a power cut
  or kernel crash within that window (at most one writer step, ``flush_interval``).
  ``fsync=False`` skips it, for tests and for disks that cannot afford it.
* **torn writes**: a crash can leave a half-written last line. :meth:`Spool.open`
  moves any bytes after the last newline to ``<spool>.rejected`` and logs it; a
  complete line that does not decode (disk damage, a hand edit) is moved there too when
  it is read. Everything else is kept.
* **single owner**: an exclusive ``flock`` keeps a second controller from draining (and
  truncating) the same file.

This module is synchronous and small on purpose: every call is a short local file
operation, done in the event loop except ``sync()``, which the writer runs in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ivr.domain.events import CallEvent
from ivr.logs import get_logger

__all__ = ["Spool", "SpoolError", "SpoolLockedError"]

log = get_logger(__name__)

_READ_CHUNK: Final = 256 * 1024


class SpoolError(RuntimeError):
    """The spool file could not be opened, written or read."""


class SpoolLockedError(SpoolError):
    """Another process holds the spool file."""


def encode_event(event: CallEvent) -> bytes:
    """One spool line (ends with a newline; JSON escapes any newline inside values)."""
    return json.dumps(event.to_fields(), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def decode_line(line: bytes) -> CallEvent:
    """Inverse of :func:`encode_event`; raises ValueError/KeyError/TypeError on a bad line."""
    fields = json.loads(line)
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("not an object of string fields")
    return CallEvent.from_fields(fields)


class Spool:
    """Append-only JSON-lines spool with a forward read cursor. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        validate: Callable[[CallEvent], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._validate = validate  # raises ValueError for an event the reader must not hand out
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self.fsync = fsync
        self._fd: int | None = None
        self._read_offset = 0  # first byte not yet handed out by read()
        self._end = 0  # size of the file = offset after the last complete line
        self._depth = 0  # complete lines at or after _read_offset
        self._appended_gen = 0  # bumped by append(); compared with _synced_gen by sync()
        self._synced_gen = 0
        self.rejected = 0  # lines moved to the .rejected file since open()

    # -- properties ------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events in the file not yet drained (read and advanced past)."""
        return self._depth

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def needs_sync(self) -> bool:
        return self.fsync and self._appended_gen != self._synced_gen

    def _require_fd(self) -> int:
        if self._fd is None:
            raise SpoolError(f"spool {self.path} is not open")
        return self._fd

    # -- life cycle ------------------------------------------------------------

    def open(self) -> Spool:
        """Open (creating it, mode 0600) and lock the file, repair a torn tail, count its lines."""
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolLockedError(f"spool {self.path} is in use by another process") from exc
            raise SpoolError(f"cannot lock spool {self.path}: {exc}") from exc
        self._fd = fd
        try:
            self._recover()
        except OSError as exc:
            self.close()
            raise SpoolError(f"cannot read spool {self.path}: {exc}") from exc
        return self

    def _recover(self) -> None:
        """Count complete lines; cut a half-written last line (a crash mid-append) aside."""
        fd = self._require_fd()
        size = os.fstat(fd).st_size
        lines = 0
        last_newline_end = 0
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            pos = chunk.rfind(b"\n")
            if pos >= 0:
                last_newline_end = offset + pos + 1
            offset += len(chunk)
        if last_newline_end < size:
            tail = os.pread(fd, size - last_newline_end, last_newline_end)
            self._reject(tail, last_newline_end, "half-written last line (crash during an append?)")
            os.ftruncate(fd, last_newline_end)
            os.fsync(fd)
        self._end = last_newline_end
        self._read_offset = 0
        self._depth = lines
        if lines:
            log.info("spool.recovered", path=str(self.path), events=lines)

    def __del__(self) -> None:
        # Like a file object: a forgotten spool releases its descriptor (and lock) when collected.
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Sync and release the file (the lock goes with the descriptor)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------

    def append(self, events: Sequence[CallEvent]) -> None:
        """Append events as lines, in order, with as few writes as the OS allows.

        On a write error (disk full) the file is cut back to its previous size, so no
        partial line is left behind, and :class:`SpoolError` is raised: the events are
        still the caller's to keep.
        """
        if not events:
            return
        fd = self._require_fd()
        data = b"".join(encode_event(e) for e in events)
        start = self._end
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                log.exception("spool.truncate_failed", path=str(self.path))
            raise SpoolError(f"cannot append to spool {self.path}: {exc}") from exc
        self._end = start + len(data)
        self._depth += len(events)
        self._appended_gen += 1

    def sync(self) -> None:
        """fsync what was appended so far (no-op with ``fsync=False`` or nothing new).

        Safe to run in a worker thread while the event loop appends: the generation
        read before the fsync is the one marked synced, never a later one.
        """
        gen = self._appended_gen
        if not self.fsync or gen == self._synced_gen:
            return
        os.fsync(self._require_fd())
        self._synced_gen = max(self._synced_gen, gen)

    # -- reading ---------------------------------------------------------------

    def read(self, max_events: int) -> tuple[list[CallEvent], int, int]:
        """Up to ``max_events`` events from the read cursor, without moving it.

        Returns ``(events, next_offset, lines)``: pass the last two to :meth:`advance`
        once the events are safely stored. Lines that do not decode are moved to the
        ``.rejected`` file (and logged) and count in ``lines`` but not in ``events``.
        """
        fd = self._require_fd()
        events: list[CallEvent] = []
        lines = 0
        offset = self._read_offset
        buf = b""
        while len(events) < max_events and offset + len(buf) < self._end:
            chunk = os.pread(fd, min(_READ_CHUNK, self._end - offset - len(buf)), offset + len(buf))
            if not chunk:
                raise SpoolError(
                    f"spool {self.path} is shorter than written ({offset + len(buf)} < {self._end})"
                )
            buf += chunk
            start = 0
            while len(events) < max_events:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                line = buf[start:nl]
                try:
                    event = decode_line(line)
                    if self._validate is not None:
                        self._validate(event)
                    events.append(event)
                except (ValueError, KeyError, TypeError) as exc:
                    self._reject(line + b"\n", offset + start, f"undecodable line: {exc}")
                lines += 1
                start = nl + 1
            offset += start
            buf = buf[start:]
        return events, offset, lines

    def advance(self, next_offset: int, lines: int) -> None:
        """Mark lines up to ``next_offset`` as stored; empty the file once all are.

        Emptying is a truncate to zero followed by an fsync: a crash before it leaves
        lines that are re-sent and dropped as duplicates; after it, nothing to re-send.
        """
        fd = self._require_fd()
        if not self._read_offset <= next_offset <= self._end:
            raise SpoolError(f"spool cursor {next_offset} outside {self._read_offset}..{self._end}")
        self._read_offset = next_offset
        self._depth -= lines
        if self._read_offset == self._end:
            gen = self._appended_gen
            os.ftruncate(fd, 0)
            if self.fsync:
                os.fsync(fd)
                self._synced_gen = max(self._synced_gen, gen)
            self._read_offset = self._end = self._depth = 0

    def _reject(self, data: bytes, offset: int, reason: str) -> None:
        """Keep bad bytes aside for a human, and say so loudly; never drop them silently."""
        self.rejected += 1
        log.error(
            "spool.line_rejected",
            path=str(self.path),
            offset=offset,
            size=len(data),
            reason=reason,
            excerpt=data[:200].decode("utf-8", "replace"),
            kept_in=str(self.rejected_path),
        )
        try:
            with open(self.rejected_path, "ab") as out:
                out.write(data if data.endswith(b"\n") else data + b"\n")
        except OSError:
            log.exception("spool.reject_write_failed", path=str(self.rejected_path))
