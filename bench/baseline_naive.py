"""The naive baseline the ingest is compared with: what a first attempt at MQTT → PostgreSQL looks like.

A paho subscriber (its own network thread, `loop_start`) hands each message to an asyncio loop with
`call_soon_threadsafe`; a consumer decodes it with orjson and runs one `INSERT ... ON CONFLICT DO NOTHING`
per reading on one asyncpg connection in autocommit mode, so every reading is its own committed (fsynced)
transaction. Ack semantic: **ack-after-commit** — paho's `manual_ack` is on and the message's PUBACK is
sent only after the INSERTs of all its readings have committed, the same guarantee as the real ingest, so
the comparison is like for like. (paho's receive window is not limited, so ack-after-commit does not
throttle the reader; unread messages wait in an unbounded in-process queue, as naive code does.)

Run: `python -m bench.baseline_naive --mqtt-url URL --database-url URL --topic-prefix bench/naive`; it runs
until SIGTERM/SIGINT and then prints one JSON object (messages, readings, errors, CPU seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import paho.mqtt.client as paho

from bench.common import parse_url

INSERT = ("INSERT INTO readings (device_id, metric, ts, value, quality) VALUES ($1, $2, $3, $4, 0) "
          "ON CONFLICT (device_id, metric, ts) DO NOTHING")
# The plain path stores readings under series ids (migration 0030; `readings` is a view there): the same one
# INSERT per reading, with the series looked up (or registered) in the statement.
INSERT_SERIES = (
    "WITH s AS (SELECT id FROM series WHERE device_id = $1 AND metric = $2), "
    "n AS (INSERT INTO series (device_id, metric) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM s) "
    "ON CONFLICT (device_id, metric) DO NOTHING RETURNING id) "
    "INSERT INTO series_readings (series_id, ts, value, quality) "
    "SELECT id, $3, $4, 0 FROM (SELECT id FROM s UNION ALL SELECT id FROM n) AS k ON CONFLICT DO NOTHING"
)


def _ts(raw: object) -> datetime:
    if isinstance(raw, str):
        return datetime.fromisoformat(raw).astimezone(UTC)
    if isinstance(raw, int | float):
        return datetime.fromtimestamp(raw / 1000 if raw > 1e11 else raw, UTC)
    return datetime.now(UTC)


async def run(mqtt_url: str, database_url: str, topic_prefix: str) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, bytes | bytearray, int, int]] = asyncio.Queue()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    conn = await asyncpg.connect(database_url)
    series = await conn.fetchval("SELECT to_regclass('series_readings') IS NOT NULL")
    stmt = await conn.prepare(INSERT_SERIES if series else INSERT)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (message.topic, message.payload, message.mid, message.qos))

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-naive-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv311, clean_session=True, manual_ack=True)
    client.max_inflight_messages_set(65535)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{topic_prefix}/+/+/telemetry", qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: print("subscribed", flush=True)
    host, port = parse_url(mqtt_url)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    counts = {"messages": 0, "readings": 0, "errors": 0}
    cpu0 = time.process_time()

    async def consume() -> None:
        while True:
            topic, payload, mid, qos = await queue.get()
            try:
                device_id = topic.split("/")[-2]
                doc = orjson.loads(payload)
                for record in doc if isinstance(doc, list) else [doc]:
                    ts = _ts(record.get("ts"))
                    for metric, value in record["values"].items():
                        await stmt.fetch(device_id, metric, ts, float(value))  # autocommit: one commit each
                        counts["readings"] += 1
            except (ValueError, KeyError, TypeError, AttributeError, asyncpg.PostgresError):
                counts["errors"] += 1
            if qos:
                client.ack(mid, qos)  # after commit
            counts["messages"] += 1

    task = asyncio.create_task(consume())
    await stop.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    client.disconnect()
    client.loop_stop()
    await conn.close()
    return {**counts, "queued_unprocessed": queue.qsize(), "cpu_s": time.process_time() - cpu0,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_naive", description=__doc__.split("\n")[0])
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--topic-prefix", default="bench/naive")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.mqtt_url, args.database_url, args.topic_prefix))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
