"""Platform topics under `{prefix}/_sys/` (docs/architecture.md §2), built in one place.

Every one has at least four levels after the prefix, so the device filter `{prefix}/+/+/+` that ingest and the
alerts service subscribe to never matches them: ingest never receives, let alone dead-letters, a platform message
(tests/unit/test_topics.py holds every builder to that).
"""

from __future__ import annotations


def alerts_reload_topic(prefix: str) -> str:
    """A message here (any payload, QoS 1) asks every `occ alerts` to reload its rule files, as SIGHUP does;
    `occ web` publishes it for `POST /api/rules/reload` (web never signals another process)."""
    return f"{prefix}/_sys/control/alerts/reload"


def alert_topic(prefix: str, area: str | None, device_id: str | None) -> str:
    """An alert change (QoS 1); area-wide alerts use `_area` as the device level."""
    return f"{prefix}/_sys/alerts/{area or '_none'}/{device_id or '_area'}"


def incident_topic(prefix: str, area: str | None) -> str:
    """An incident (a group of alerts in one area) opened, grown or closed (QoS 1)."""
    return f"{prefix}/_sys/incidents/{area or '_none'}/_area"
