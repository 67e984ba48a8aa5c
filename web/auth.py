"""Passwords, tokens, roles and the login rate limit: the pure parts of web security (no I/O).

Passwords are hashed with scrypt (stdlib, memory-hard); the hash string carries its parameters so they can be
raised later without breaking old hashes. Tokens are 32 random bytes shown once to their holder; the
database keeps only their SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field

from occ.store.users import ROLES, Role

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_PREFIX = "scrypt"

RANK: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
"""Roles are ordered: an operator may do everything a viewer may, an admin everything."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$n$r$p$salt$hash` for a new password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=32)
    return f"{_PREFIX}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; False for a missing or malformed hash (never raises)."""
    if not stored:
        return False
    try:
        prefix, n, r, p, salt, digest = stored.split("$")
        if prefix != _PREFIX:
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=128 * int(r) * int(n) * 2, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def dummy_verify(password: str) -> None:
    """Spend the same time as a real check, so response times do not reveal which user names exist."""
    verify_password(password, _DUMMY_HASH)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(8))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def allows(role: str, needed: Role) -> bool:
    return RANK.get(role, 0) >= RANK[needed]


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    return role


@dataclass(slots=True)
class LoginLimiter:
    """Sliding-window limit on failed logins, per client address and per user name.

    `allowed(key, now)` before checking a password; `failed(key, now)` after a wrong one. Bounded: at most
    `max_keys` keys are tracked (the oldest are forgotten first).
    """

    max_failures: int = 5
    window_s: float = 300.0
    max_keys: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] > self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def allowed(self, key: str, now: float) -> bool:
        times = self._recent(key, now)
        return times is None or len(times) < self.max_failures

    def retry_after(self, key: str, now: float) -> float:
        times = self._recent(key, now)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, self.window_s - (now - times[0]))

    def failed(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= self.max_keys:
                del self._failures[next(iter(self._failures))]
            times = self._failures[key] = deque(maxlen=self.max_failures)
        times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
