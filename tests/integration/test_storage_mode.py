"""One storage mode per server and test run (issue 11 item 14): the helpers that migrate (`seed_devices`) and the
ones that start ingest (`running_ingest`, `IngestProcess`) must use the same `database.timescaledb`, chosen from
what the server offers. Before, `seed_devices` migrated with `auto` (TimescaleDB when the server has it) while
ingest was started with `off`, and against a TimescaleDB server 17 tests failed on the migrator's refusal."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.integration import fault_helpers, ingest_helpers
from tests.integration.fault_helpers import IngestProcess, storage_mode


async def test_the_mode_comes_from_the_server(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        preloaded = "timescaledb" in await conn.fetchval("SHOW shared_preload_libraries")
    finally:
        await conn.close()
    assert storage_mode(database_url) == ("on" if available and preloaded else "off")
    await ingest_helpers.seed_devices(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        mode = await conn.fetchval("SELECT value FROM occ_settings WHERE key = 'mode'")
    finally:
        await conn.close()
    assert mode == ("timescale" if storage_mode(database_url) == "on" else "plain")


@pytest.mark.parametrize("server_mode", ["on", "off"])
async def test_every_helper_uses_the_same_mode(server_mode: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    """With the server's answer fixed either way, the migration, the in-process ingest and the ingest process all
    get that one mode."""
    url = "postgresql://postgres@db.invalid:5999/occ"
    parts = urlsplit(url)
    monkeypatch.setitem(fault_helpers._STORAGE, (parts.hostname, parts.port), server_mode)
    seen: dict[str, Any] = {}

    class FakeStore:
        async def upsert_devices(self, devices: Any) -> None:
            pass

        async def close(self) -> None:
            pass

    async def connect(database_url: str, **options: Any) -> FakeStore:
        seen["seed"] = options.get("timescaledb", "auto")
        return FakeStore()

    class FakeService:
        def __init__(self, **options: Any) -> None:
            seen["ingest"] = options["store_options"]["timescaledb"]

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(ingest_helpers.Store, "connect", connect)
    monkeypatch.setattr(ingest_helpers, "IngestService", FakeService)
    await ingest_helpers.seed_devices(url)
    async with ingest_helpers.running_ingest(url, "mqtt://127.0.0.1:1"):
        pass
    process = IngestProcess(tmp_path / "x.log", database_url=url, mqtt_url="mqtt://127.0.0.1:1", client_id="x",
                            http_port=1)
    assert seen == {"seed": server_mode, "ingest": server_mode}
    assert process.env["OCC_DATABASE__TIMESCALEDB"] == server_mode
