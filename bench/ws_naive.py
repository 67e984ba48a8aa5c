"""The naive live-feed baseline `bench.ws` compares `occ web` with: what a first attempt looks like.

The same MQTT subscription (occ.bus, same topics) and the same frame shapes as `occ web`, but every message
becomes its own delta frame, broadcast by awaiting each client's send in turn (no per-client queue, no
coalescing, no batching). A client whose socket is full therefore holds up everyone behind it — the
behaviour the real gateway is built to avoid. No authentication (it is a benchmark peer, never shipped).

Run: `python -m bench.ws_naive --port P --mqtt-url URL --database-url URL` until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as paho
from aiohttp import WSMsgType, web

from occ.bus import Delivery, MqttClient
from occ.store import Store


class NaiveFeed:
    def __init__(self) -> None:
        self.clients: set[web.WebSocketResponse] = set()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()  # unbounded, as naive code does
        self.seq = 0
        self.snapshot = b"{}"

    def on_message(self, message: paho.MQTTMessage, delivery: Delivery) -> None:
        topic = message.topic
        try:
            doc = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return
        self.seq += 1
        if "/_sys/alerts/" in topic:
            frame = {"type": "delta", "seq": self.seq, "status": [], "alerts": [doc], "readings": []}
        elif topic.endswith("/telemetry") and isinstance(doc, dict):
            device_id = topic.split("/")[-2]
            ts = doc.get("ts") or datetime.now(UTC).isoformat()
            frame = {"type": "delta", "seq": self.seq, "status": [], "alerts": [],
                     "readings": [{"id": device_id, "ts": ts, "values": doc.get("values", {})}]}
        else:
            return
        self.queue.put_nowait(orjson.dumps(frame))

    async def broadcast(self) -> None:
        while True:
            frame = await self.queue.get()
            for ws in list(self.clients):
                try:
                    await ws.send_frame(frame, WSMsgType.TEXT)
                except (ConnectionError, RuntimeError):
                    self.clients.discard(ws)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        self.clients.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and b"subscribe" in msg.data.encode():
                    await ws.send_frame(self.snapshot, WSMsgType.TEXT)
        finally:
            self.clients.discard(ws)
        return ws


async def amain(args: argparse.Namespace) -> None:
    feed = NaiveFeed()
    store = await Store.connect(args.database_url, migrate=False, pool_size=1)
    devices = await store.list_devices()
    await store.close()
    feed.snapshot = orjson.dumps({"type": "snapshot", "seq": 0, "stream": "naive", "alerts": [], "devices": [
        {"id": d.id, "kind": d.kind, "name": d.name, "area": d.area, "lat": d.lat, "lon": d.lon} for d in devices]})
    bus = MqttClient(args.mqtt_url, client_id=f"naive-{int(time.time())}", on_message=feed.on_message,
                     clean_start=True, session_expiry_s=0)
    bus.subscribe("occ/v1/+/+/telemetry", qos=0)
    bus.subscribe("occ/v1/_sys/alerts/#", qos=1)
    await bus.start()
    app = web.Application()
    app.router.add_get("/ws", feed.handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    broadcaster = asyncio.create_task(feed.broadcast())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    broadcaster.cancel()
    await bus.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_naive")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--database-url", required=True)
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
