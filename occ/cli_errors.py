"""Everyday failures of the `occ` command line, each as one line and an exit status instead of a traceback.

This is the one place that decides what a user is told when a command fails (issue 9): OCC's own errors
(`OccError` leaves), the database refusing a connection (by SQLSTATE, never by parsing its text), a server that
cannot be reached, and output closed early (`occ devices list | head`). Anything not recognised here is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from occ.errors import AlreadyRunning, BrokerUnavailable, ConfigError, OccError, StartFailed, StoreUnavailable

EXIT_FAILURE = 1
"""The command could not do its job (a server is unreachable or refused)."""
EXIT_USAGE = 2
"""The command or its settings are wrong: fix them and run again."""
EXIT_ALREADY_RUNNING = 3
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell reports for a coreutils command whose reader went away."""


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    """One line: what is wrong and what to do ("" prints nothing)."""
    status: int


def describe(exc: BaseException, *, database_url: str | None = None) -> Failure | None:
    """The line and exit status for an everyday failure, or None when `exc` is a bug (keep the traceback)."""
    if isinstance(exc, BrokenPipeError):
        return Failure("", EXIT_BROKEN_PIPE)
    if isinstance(exc, AlreadyRunning):
        return Failure(str(exc), EXIT_ALREADY_RUNNING)
    if isinstance(exc, ConfigError):
        return Failure(str(exc), EXIT_USAGE)
    if isinstance(exc, StoreUnavailable):
        where = _server(database_url)
        return Failure(f"{exc} — is PostgreSQL running{where}? (database.url / OCC_DATABASE_URL)", EXIT_FAILURE)
    if isinstance(exc, StartFailed):  # `occ up` names the part of the stack that did not come up
        return Failure(f"up: {exc.part} failed: {exc.reason}", EXIT_FAILURE)
    if isinstance(exc, BrokerUnavailable):
        return Failure(str(exc), EXIT_FAILURE)
    if isinstance(exc, OccError):
        return Failure(str(exc), EXIT_USAGE)
    postgres = _postgres_failure(exc, database_url)
    if postgres is not None:
        return postgres
    if isinstance(exc, TimeoutError):
        return Failure("no answer in time from a server (database or MQTT broker): is it running and reachable?",
                       EXIT_FAILURE)
    if isinstance(exc, ConnectionError | OSError) and getattr(exc, "errno", None) is not None:
        target = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return Failure(f"{exc.strerror or exc}{target}", EXIT_FAILURE)
    return None


def _server(url: str | None) -> str:
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        return f" at {host}:{parts.port or 5432}"
    except ValueError:
        return ""


def _database_name(url: str | None) -> str:
    if not url:
        return "?"
    try:
        return urlsplit(url).path.lstrip("/") or "?"
    except ValueError:
        return "?"


# SQLSTATEs a connection attempt ends with when the URL names something the server does not have.
_INVALID_CATALOG_NAME = "3D000"
_INVALID_AUTHORIZATION = "28000"
_INVALID_PASSWORD = "28P01"
_INSUFFICIENT_PRIVILEGE = "42501"


def _postgres_failure(exc: BaseException, url: str | None) -> Failure | None:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return None
    server = _server(url)
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None)
        detail = getattr(exc, "message", None) or str(exc)
        if state == _INVALID_CATALOG_NAME:
            name = _database_name(url)
            return Failure(f"database {name!r} does not exist{server}: create it (createdb {name}) or fix "
                           "database.url / OCC_DATABASE_URL", EXIT_FAILURE)
        if state in (_INVALID_AUTHORIZATION, _INVALID_PASSWORD):
            return Failure(f"the database server{server} refused the login: {detail} — fix the user or password "
                           "in database.url / OCC_DATABASE_URL", EXIT_FAILURE)
        if state == _INSUFFICIENT_PRIVILEGE:
            return Failure(f"the database user may not do this{server}: {detail}", EXIT_FAILURE)
        return Failure(f"database error {state}{server}: {detail}", EXIT_FAILURE)
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return Failure(f"database.url: {exc}", EXIT_USAGE)
    return None


def report(failure: Failure, *, program: str = "occ") -> int:
    """Print the failure's line on stderr and return its exit status."""
    if failure.status == EXIT_BROKEN_PIPE:
        _silence_stdout()
    if failure.message:
        print(f"{program}: {failure.message}", file=sys.stderr, flush=True)
    return failure.status


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's final flush does not
    raise a second BrokenPipeError at exit (the recipe in the Python `signal` documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
