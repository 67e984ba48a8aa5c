"""`occ ingest` with one injected bug: a chosen long-lived part raises once, after a few batches were acknowledged.

Run as `python -m tests.integration.faulty_ingest SITE MARKER`: the fault fires only if the MARKER file does
not exist yet (it is created when the fault fires), so the restarted worker runs clean, as after a real
restart. SITE is where the bug is: `decode` (the decode task), `write` (a writer task, on the ack path),
`housekeeping`, `mqtt` (the connection task) or `receive` (the per-message callback run by paho).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

AFTER_BATCHES = 5


def inject(site: str, marker: Path) -> None:
    import ingest.flow
    import ingest.service
    from ingest.service import IngestService
    from occ.bus import MqttClient
    from occ.mqtt.transport import MqttSubscriber

    acked = [0]
    fired = asyncio.Event()

    def due() -> bool:
        if acked[0] < AFTER_BATCHES or marker.exists():
            return False
        marker.write_text(site)
        fired.set()
        return True

    def fault() -> RuntimeError:
        return RuntimeError(f"injected fault in {site}")

    original_ack = IngestService._acknowledge

    def acknowledge(self: IngestService, seq: int) -> None:
        if site == "write" and due():
            raise fault()
        original_ack(self, seq)
        acked[0] += 1

    IngestService._acknowledge = acknowledge  # type: ignore[method-assign]

    if site == "decode":
        original_assemble = IngestService._assemble

        def assemble(self: IngestService, *args: Any) -> Any:
            if due():
                raise fault()
            return original_assemble(self, *args)

        IngestService._assemble = assemble  # type: ignore[method-assign,assignment]
    elif site == "housekeeping":
        ingest.service.REGISTRY_REFRESH_S = 0.2
        original_refresh = IngestService._refresh_registry

        async def refresh(self: IngestService, **kwargs: Any) -> bool:
            if due():
                raise fault()
            return await original_refresh(self, **kwargs)

        IngestService._refresh_registry = refresh  # type: ignore[method-assign]
    elif site == "receive":
        original_received = ingest.flow.IngestFlow.received

        def received(self: Any, item: Any, nbytes: int) -> Any:
            if due():
                raise fault()
            return original_received(self, item, nbytes)

        ingest.flow.IngestFlow.received = received  # type: ignore[method-assign]
    elif site == "mqtt":
        transport: Any = MqttSubscriber if os.environ.get("OCC_INGEST__TRANSPORT", "native") == "native" else MqttClient
        original_run = transport._run

        async def run(self: Any) -> None:
            inner = asyncio.ensure_future(original_run(self))
            done, _ = await asyncio.wait({inner, asyncio.ensure_future(fired.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if inner in done:
                return inner.result()
            self._closing = True  # the real connection loop ends with the process
            raise fault()

        original_ack_for_mqtt = IngestService._acknowledge

        def acknowledge_then_maybe_fire(self: IngestService, seq: int) -> None:
            original_ack_for_mqtt(self, seq)
            due()

        transport._run = run
        IngestService._acknowledge = acknowledge_then_maybe_fire  # type: ignore[method-assign]
    elif site != "write":
        raise SystemExit(f"unknown site {site}")


def main() -> int:
    site, marker = sys.argv[1], Path(sys.argv[2])
    inject(site, marker)
    from occ.cli import main as occ_main

    return occ_main(["ingest"])


if __name__ == "__main__":
    sys.exit(main())
