"""Ingest's event-loop exception handler: escaped exceptions crash the worker, library diagnostics do not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ingest.service import loop_exception_handler


async def test_an_exception_escaping_a_callback_crashes_the_worker() -> None:
    crashes: list[tuple[BaseException, str]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(loop_exception_handler(lambda exc, where: crashes.append((exc, where))))
    try:
        bug = ValueError("a bug in a callback")

        def callback() -> None:
            raise bug

        loop.call_soon(callback)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert crashes == [(bug, "event loop")]


async def test_a_report_without_an_exception_is_logged_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    # What asyncpg reports when the database dies under a COPY: a message, no exception; it then rolls back.
    crashes: list[tuple[BaseException, str]] = []
    handler = loop_exception_handler(lambda exc, where: crashes.append((exc, where)))
    with caplog.at_level(logging.WARNING, logger="ingest.service"):
        handler(asyncio.get_running_loop(), {"message": "Resetting connection with an active transaction <conn>"})
    assert crashes == []
    assert [r.getMessage() for r in caplog.records] == [
        "event loop: Resetting connection with an active transaction <conn>"
    ]
