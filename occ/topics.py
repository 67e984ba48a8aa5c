"""Platform topics under `{prefix}/_sys/` that more than one service names (docs/architecture.md §2).

They have more levels than the device filter `{prefix}/+/+/+`, so ingest never receives them.
"""

from __future__ import annotations


def alerts_reload_topic(prefix: str) -> str:
    """A message here (any payload, QoS 1) asks every `occ alerts` to reload its rule files, as SIGHUP does;
    `occ web` publishes it for `POST /api/rules/reload` (web never signals another process)."""
    return f"{prefix}/_sys/control/alerts/reload"
