"""Platform topics stay out of the device topic space (issue 6: ingest never receives an alert or incident)."""

from __future__ import annotations

import paho.mqtt.client as paho

from occ.topics import alert_topic, alerts_reload_topic, incident_topic

PREFIX = "occ/v1"
DEVICE_FILTER = f"{PREFIX}/+/+/+"  # what ingest (in its share group) and the alerts service subscribe to


def test_no_platform_topic_matches_the_device_filter() -> None:
    topics = [
        alert_topic(PREFIX, "bac-quang", "HG-BQ-WL01"), alert_topic(PREFIX, None, None),
        incident_topic(PREFIX, "ha-giang-city"), incident_topic(PREFIX, None),
        alerts_reload_topic(PREFIX),
    ]
    for topic in topics:
        assert topic.startswith(f"{PREFIX}/_sys/"), topic
        assert not paho.topic_matches_sub(DEVICE_FILTER, topic), topic
        assert not paho.topic_matches_sub(f"$share/occ-ingest/{DEVICE_FILTER}", topic), topic
    assert paho.topic_matches_sub(f"{PREFIX}/_sys/alerts/#", alert_topic(PREFIX, "x", "y"))
