"""The embedded PostgreSQL takes passwords only (issue 7 item 5): SCRAM, a generated secret in a 0600 file,
no trust — a connection without the password, or with a wrong one, is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest

from occ.embedded import EmbeddedPostgres


async def _refused(url: str) -> str:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as caught:
        conn = await asyncpg.connect(url, timeout=10)
        await conn.close()
    return str(caught.value)


async def test_the_embedded_database_refuses_a_connection_without_the_password(work_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(work_dir / "no-such-pgpass"))
    secrets = work_dir / "db-auth-secrets"
    secrets.mkdir(mode=0o700)
    server = EmbeddedPostgres(work_dir / "pg-auth", durable=False, password_file=secrets / "pw")
    server.start()
    try:
        assert stat.S_IMODE((secrets / "pw").stat().st_mode) == 0o600
        assert len(server.password) >= 32
        conn = await asyncpg.connect(server.url, timeout=10)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        await _refused(server.url_without_password)
        await _refused(server.url.replace(server.password, "not-the-password"))
        hba = [line for line in (server.data_dir / "pg_hba.conf").read_text().splitlines()
               if line and not line.startswith("#")]
        assert hba and all(line.split()[-1] == "scram-sha-256" for line in hba), hba

        # A new secret (an operator rotated the file): after a restart the old password stops working.
        old_url = server.url
        server.stop()
        (secrets / "pw").write_text("rotated-" + "x" * 30 + "\n")
        rotated = EmbeddedPostgres(server.data_dir, port=server.port, durable=False, password_file=secrets / "pw")
        rotated.start()
        server = rotated
        conn = await asyncpg.connect(rotated.url, timeout=10)
        await conn.close()
        await _refused(old_url)
    finally:
        server.destroy()
