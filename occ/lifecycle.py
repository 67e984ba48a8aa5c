"""Running a service process until it is told to stop, whatever it is doing (issue 11 item 4).

A service's `start()` may wait a long time — for a database that is not there yet, a broker that refuses —
and its `stop()` may wait for a drain. A signal must end both: SIGINT, SIGTERM or SIGHUP cancels a start in
progress and runs `stop()` under a deadline; a second Ctrl-C exits at once (the broker redelivers whatever
was not acknowledged, so nothing is lost by not waiting).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_on_signals(stop: asyncio.Event, *, name: str) -> None:
    """SIGINT, SIGTERM or SIGHUP sets `stop`; a second Ctrl-C (SIGINT) exits the process at once.

    A repeated SIGTERM does not: under `occ up` a service gets one from a `kill -TERM -- -<group>` and another
    from the supervisor stopping it, and must still drain."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        if stop.is_set() and sig == signal.SIGINT:
            log.warning("%s: second signal; exiting without waiting for the drain", name)
            os._exit(128 + sig)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)


def ignore_stop_signals() -> None:
    """Once stopped: a late SIGTERM or SIGHUP (under `occ up` one comes from the group and one from the
    supervisor) must not turn a clean exit into death by signal. Closing the loop would restore their default
    action, so they are taken off the loop and ignored here first."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


async def unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` (a service's start, say) unless `stop` is set first, which cancels it. True when it ran to
    the end; its exceptions propagate."""
    task = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return False


async def serve(start: Callable[[], Coroutine[Any, Any, None]], stop: Callable[[], Awaitable[None]], *, name: str,
                stop_timeout_s: float = 15.0) -> int:
    """Start, run until a stop signal, stop (under a deadline); exceptions from `start` propagate after `stop`
    has run."""
    stopping = asyncio.Event()
    stop_on_signals(stopping, name=name)
    try:
        if await unless_stopped(start(), stopping):
            await stopping.wait()
        return 0
    finally:
        try:
            await asyncio.wait_for(stop(), stop_timeout_s)
        except TimeoutError:
            log.warning("%s did not stop within %.0f s; exiting anyway", name, stop_timeout_s)
        ignore_stop_signals()
