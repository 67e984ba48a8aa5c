"""`occ users …` as an operator runs it: password from stdin, one-line errors, kiosk tokens that work and can
be revoked."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

from occ.store import Store
from web.auth import token_hash, verify_password


def occ(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OCC_DATABASE_URL": database_url, "OCC_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "occ.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


async def test_users_add_kiosk_token_and_revoke(database_url: str) -> None:
    store = await Store.connect(database_url, pool_size=1)
    try:
        added = occ(database_url, "users", "add", "op1", "--role", "operator", stdin="s3cret-pass\n")
        assert added.returncode == 0 and "created user op1 (operator)" in added.stdout, added.stderr
        user = await store.users.get("op1")
        assert user is not None and user.role == "operator" and verify_password("s3cret-pass", user.password_hash)
        assert "s3cret-pass" not in (user.password_hash or "")

        short = occ(database_url, "users", "add", "op2", "--role", "viewer", stdin="short\n")
        assert short.returncode == 2 and short.stderr.strip().startswith("occ:") and "8 characters" in short.stderr
        assert "Traceback" not in short.stderr

        missing = occ(database_url, "users", "kiosk-token", "nobody")
        assert missing.returncode == 2 and "no user 'nobody'" in missing.stderr

        made = occ(database_url, "users", "kiosk-token", "op1", "--label", "wall 2")
        token = made.stdout.strip()
        assert made.returncode == 0 and len(token) > 30
        owner = await store.users.owner(token_hash(token), now=datetime.now(UTC))
        assert owner is not None and owner.kind == "kiosk" and owner.user.name == "op1"

        revoked = occ(database_url, "users", "kiosk-token", "op1", "--revoke")
        assert revoked.returncode == 0 and "revoked 1 kiosk token" in revoked.stdout
        assert await store.users.owner(token_hash(token), now=datetime.now(UTC)) is None
    finally:
        await store.close()
