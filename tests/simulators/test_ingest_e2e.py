"""End to end: the simulator through a real broker and the ingest service into PostgreSQL, nothing lost."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from simhelpers import CONFIG, clear_retained

from simulators.cli import main
from simulators.fleet import load_fleet
from simulators.publisher import read_jsonl
from tests.integration.ingest_helpers import fetch, running_ingest, seed_devices, wait_for_count


@pytest.mark.parametrize(("mode", "form"), [("pool", "object"), ("gateway", "object"), ("pool", "senml")])
async def test_simulated_province_lands_in_the_store(
    database_url: str, mqtt_url: str, mqtt_services_url: str, tmp_path: Path, mode: str, form: str
) -> None:
    fleet = load_fleet(config_dir=CONFIG)
    await seed_devices(database_url, fleet.devices)
    prefix = f"simtest-{uuid.uuid4().hex[:8]}/v1"
    client = f"simtest-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "sent.jsonl"
    async with running_ingest(database_url, mqtt_services_url, topic_prefix=prefix):
        rc = await asyncio.to_thread(
            main,
            [
                "--mqtt-url",
                mqtt_url,
                "--topic-prefix",
                prefix,
                "--client-prefix",
                client,
                "--fast",
                "--start=-45m",
                "--duration",
                "30m",
                "--seed",
                "9",
                "--out",
                str(out),
                "--quiet",
                "--config-dir",
                str(CONFIG),
                "--mode",
                mode,
                "--form",
                form,
            ],
        )
        assert rc == 0
        sent = [m for m in read_jsonl(out)]
        readings = 0
        for m in sent:
            if m.channel == "telemetry":
                doc = orjson.loads(m.payload)
                if form == "senml":
                    readings += len(doc)
                else:
                    readings += sum(len(e["values"]) for e in doc) if isinstance(doc, list) else len(doc["values"])
        events = sum(1 for m in sent if m.channel == "event")
        assert readings > 5000 and events > 100
        assert await wait_for_count(database_url, "SELECT count(*) FROM readings", readings) == readings
        assert await wait_for_count(database_url, "SELECT count(*) FROM events", events) == events
    dead = await fetch(database_url, "SELECT topic, reason FROM dead_letters")
    assert not dead, [dict(r) for r in dead]
    flagged = await fetch(database_url, "SELECT count(*) AS n FROM readings WHERE quality <> 0")
    assert flagged[0]["n"] == 0  # every simulated value is inside the catalog's plausible range
    clear_retained(
        mqtt_url,
        [f"occ/sim/{client}-{k}/status" for k in range(4)]
        + [f"occ/sim/{client}/status"]
        + [f"{prefix}/{d.kind}/{d.id}/status" for d in fleet.devices],
    )
