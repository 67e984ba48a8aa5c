"""One exception root for OCC. Leaves carry the data needed to act on them and also subclass the stdlib type
that fits, so callers can catch either."""

from __future__ import annotations


class OccError(Exception):
    """Root of every error raised on purpose by OCC."""


class ConfigError(OccError, ValueError):
    """A configuration, device, catalog or rule file is invalid; the whole file is rejected."""

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        where = path or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")


class UsageError(OccError, ValueError):
    """A command named something that does not exist (a device, kind or area) or asked for a refused change."""


class DecodeError(OccError, ValueError):
    """A message could not be turned into readings; `reason` is what the dead-letter row records."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(reason)


class StoreUnavailable(OccError, ConnectionError):
    """The database cannot be reached right now; callers keep their data and retry."""


class ServiceError(OccError, RuntimeError):
    """A supervised service or embedded server could not start or stopped unexpectedly."""


class AlreadyRunning(ServiceError):
    """Another `occ up` already owns this var directory."""

    def __init__(self, pid: int, lock_path: str) -> None:
        self.pid = pid
        self.lock_path = lock_path
        super().__init__(f"occ up is already running (pid {pid}, lock {lock_path})")


class MqttProtocolError(OccError, ValueError):
    """The MQTT peer sent something the protocol forbids (malformed, oversized, out of order); `reason_code` is
    the MQTT 5 reason code our DISCONNECT carries before the connection is closed and re-established."""

    def __init__(self, reason: str, reason_code: int) -> None:
        self.reason = reason
        self.reason_code = reason_code
        super().__init__(reason)


class StartFailed(ServiceError):
    """`occ up` could not bring one part of the stack up; `part` names it (database, broker, ingest-1, …)."""

    def __init__(self, part: str, reason: str) -> None:
        self.part = part
        self.reason = reason
        super().__init__(f"{part}: {reason}")


class BrokerUnavailable(OccError, ConnectionError):
    """The MQTT broker did not accept a connection in time; `reason` is the last error seen."""

    def __init__(self, address: str, reason: str, waited_s: float) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"MQTT broker {address} did not accept a connection within {waited_s:.0f} s "
                         f"(last error: {reason})")
