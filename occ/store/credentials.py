"""MQTT accounts: the SQL behind `Store.credentials` (issue 7). Only hashes reach the database (the caller
hashes, occ.broker_auth); revoking removes the hash and keeps the row as a record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

AccountRole = Literal["device", "gateway", "service"]
ROLES: tuple[AccountRole, ...] = ("device", "gateway", "service")


@dataclass(frozen=True, slots=True)
class MqttAccount:
    username: str
    role: AccountRole
    password_hash: str | None
    issued_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.password_hash is not None


_COLUMNS = "username, role, password_hash, issued_at, revoked_at"


class CredentialStore:
    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]) -> None:
        self._connection = connection

    async def set_passwords(self, hashes: Sequence[tuple[str, AccountRole, str]]) -> None:
        """Issue or rotate: (username, role, password hash) each, in one transaction (all or none)."""
        rows = sorted(hashes)
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO mqtt_accounts AS a (username, role, password_hash, issued_at, revoked_at) "
                "SELECT u, r, h, now(), NULL FROM unnest($1::text[], $2::text[], $3::text[]) AS x(u, r, h) "
                "ORDER BY u "
                "ON CONFLICT (username) DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash, "
                "issued_at = now(), revoked_at = NULL, updated_at = now()",
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            )

    async def revoke(self, usernames: Sequence[str]) -> list[str]:
        """Remove the hashes of these accounts; returns the usernames that were active."""
        async with self._connection() as conn:
            found = await conn.fetch(
                "UPDATE mqtt_accounts SET password_hash = NULL, revoked_at = now(), updated_at = now() "
                "WHERE username = ANY($1::text[]) AND password_hash IS NOT NULL RETURNING username",
                sorted(set(usernames)),
            )
        return sorted(r["username"] for r in found)

    async def accounts(self, *, role: AccountRole | None = None, active_only: bool = False) -> list[MqttAccount]:
        conditions, args = [], []
        if role is not None:
            args.append(role)
            conditions.append(f"role = ${len(args)}")
        if active_only:
            conditions.append("password_hash IS NOT NULL")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM mqtt_accounts{where} ORDER BY username", *args)
        return [MqttAccount(**dict(r)) for r in rows]

    async def version(self) -> tuple[int, datetime | None, int, datetime | None]:
        """A cheap stamp of everything the broker's auth depends on: accounts and the device registry (kinds
        and gateway assignments). It changes whenever either does."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM mqtt_accounts) AS a, (SELECT max(updated_at) FROM mqtt_accounts) AS at, "
                "(SELECT count(*) FROM devices) AS d, (SELECT max(updated_at) FROM devices) AS dt")
        assert row is not None
        return int(row["a"]), row["at"], int(row["d"]), row["dt"]
