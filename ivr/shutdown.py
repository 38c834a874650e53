"""Waiting for the signal that stops a long-running command (``ivr demo``, ``ivr sim``).

A service stops on SIGTERM (systemd, ``docker stop``) as on Ctrl-C: both must end in the
same graceful shutdown, with the asyncio loop still running to close sockets and flush
what is buffered, rather than a KeyboardInterrupt thrown somewhere into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["wait_for_stop_signal"]


async def wait_for_stop_signal() -> None:
    """Return once SIGINT or SIGTERM arrives.

    Where the event loop has no signal handlers (Windows' loops) this waits until cancelled.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
