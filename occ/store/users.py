"""Users and their tokens (web console logins and kiosk tokens): the SQL behind `Store.users`.

Secrets never reach the database: the caller passes a password *hash* (web.auth) and a token's SHA-256.
A token is valid while not revoked and not expired; `touch` slides a session's expiry forward.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

Role = Literal["viewer", "operator", "admin"]
TokenKind = Literal["session", "kiosk"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role
    password_hash: str | None
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a presented token belongs to (a valid, unrevoked, unexpired token only)."""

    user: User
    kind: TokenKind
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    user_name: str
    kind: TokenKind
    label: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_seen: datetime | None


_USER_COLUMNS = "u.id, u.name, u.role, u.password_hash, u.disabled, u.created_at"


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["name"], row["role"], row["password_hash"], row["disabled"], row["created_at"])


class UserStore:
    """Users and tokens; reached as `store.users` (one pool, shared with the rest of the store)."""

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]) -> None:
        self._connection = connection

    async def upsert(self, name: str, role: Role, password_hash: str | None) -> tuple[User, bool]:
        """Create a user or update its role and password; returns (user, created). Changing a password
        revokes the user's sessions (not its kiosk tokens)."""
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO users AS u (name, role, password_hash) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
                "password_hash = coalesce(excluded.password_hash, u.password_hash), disabled = false, "
                "updated_at = now() "
                f"RETURNING {_USER_COLUMNS}, (xmax = 0) AS created",
                name, role, password_hash,
            )
            assert row is not None
            if not row["created"] and password_hash is not None:
                await conn.execute(
                    "UPDATE user_tokens SET revoked_at = now() WHERE user_id = $1 AND kind = 'session' "
                    "AND revoked_at IS NULL",
                    row["id"],
                )
        return _user(row), bool(row["created"])

    async def get(self, name: str) -> User | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = $1", name)
        return _user(row) if row else None

    async def all(self) -> list[User]:
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.name")
        return [_user(r) for r in rows]

    async def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable (or enable) a user; disabling revokes every token it holds. False when there is no such user."""
        async with self._connection() as conn, conn.transaction():
            user_id = await conn.fetchval(
                "UPDATE users SET disabled = $2, updated_at = now() WHERE name = $1 RETURNING id", name, disabled
            )
            if user_id is None:
                return False
            if disabled:
                await conn.execute(
                    "UPDATE user_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
                )
        return True

    async def add_token(
        self, user_id: int, token_hash: bytes, *, kind: TokenKind, expires_at: datetime, label: str = ""
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO user_tokens (token_hash, user_id, kind, label, expires_at) VALUES ($1, $2, $3, $4, $5)",
                token_hash, user_id, kind, label, expires_at,
            )

    async def owner(self, token_hash: bytes, *, now: datetime) -> TokenOwner | None:
        """The enabled user holding this valid token, or None."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_USER_COLUMNS}, t.kind, t.expires_at FROM user_tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2 AND NOT u.disabled",
                token_hash, now,
            )
        if row is None:
            return None
        return TokenOwner(_user(row), row["kind"], row["expires_at"])

    async def touch(self, token_hash: bytes, *, now: datetime, expires_at: datetime | None = None) -> None:
        """Record use; with `expires_at`, slide the expiry (sessions)."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE user_tokens SET last_seen = $2, expires_at = greatest(expires_at, coalesce($3, expires_at)) "
                "WHERE token_hash = $1",
                token_hash, now, expires_at,
            )

    async def revoke(self, token_hash: bytes) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE user_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL", token_hash
            )
        return status.endswith(" 1")

    async def revoke_all(self, name: str, kind: TokenKind) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE user_tokens t SET revoked_at = now() FROM users u WHERE u.id = t.user_id AND u.name = $1 "
                "AND t.kind = $2 AND t.revoked_at IS NULL",
                name, kind,
            )
        return int(status.rsplit(" ", 1)[-1])

    async def tokens(self, name: str | None = None) -> list[TokenInfo]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT u.name, t.kind, t.label, t.created_at, t.expires_at, t.revoked_at, t.last_seen "
                "FROM user_tokens t JOIN users u ON u.id = t.user_id WHERE ($1::text IS NULL OR u.name = $1) "
                "ORDER BY t.created_at DESC",
                name,
            )
        return [TokenInfo(*r) for r in rows]

    async def purge_expired(self, *, now: datetime) -> int:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM user_tokens WHERE expires_at < $1", now)
        return int(status.rsplit(" ", 1)[-1])
