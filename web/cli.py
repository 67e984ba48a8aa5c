"""`occ web` and `occ users …`: registered into the `occ` command line by occ/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import Any

from occ.config import Config
from occ.errors import ConfigError


def add_parsers(sub: Any) -> None:
    web = sub.add_parser("web", help="REST API, live websocket feed and the wall page")
    web.add_argument("--port", type=int, help="listen port (web.port)")
    web.set_defaults(handler=_web)

    users = sub.add_parser("users", help="web console users and kiosk tokens")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="create a user or change its role/password (password from a prompt "
                                           "or the first line of stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=("viewer", "operator", "admin"), required=True)
    users_sub.add_parser("list", help="list users")
    disable = users_sub.add_parser("disable", help="disable a user and revoke its sessions and tokens")
    disable.add_argument("name")
    kiosk = users_sub.add_parser("kiosk-token", help="print a new read-only kiosk token for a user "
                                                     "(or revoke them all with --revoke)")
    kiosk.add_argument("name")
    kiosk.add_argument("--label", default="")
    kiosk.add_argument("--revoke", action="store_true")
    demo = users_sub.add_parser("demo-admin",
                                help="create or refresh the demo admin, password in FILE (used by occ up --demo)")
    demo.add_argument("file")
    users.set_defaults(handler=_users)


def _web(config: Config, args: argparse.Namespace) -> int:
    from web.app import run

    if args.port is not None:
        from occ.config import apply_overrides

        config = apply_overrides(config, {"web.port": args.port}, source="command line")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop=stop)

    asyncio.run(main())
    return 0


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the passwords differ", path="prompt")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise ConfigError("password must have at least 8 characters", path="stdin" if not sys.stdin.isatty()
                          else "prompt")
    return password


def _demo_password(path: Path, generate: Any) -> str:
    """The demo admin's password: kept in a 0600 file under var/ so restarts keep it."""
    if path.exists():
        return path.read_text().strip()
    password: str = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def _users(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_users_async(config, args))


async def _users_async(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from occ.cli import _open_store
    from web.auth import generate_password, hash_password, new_token, token_hash

    command = args.users_command
    password = _read_password(args.name) if command == "add" else None
    demo_password = _demo_password(Path(args.file), generate_password) if command == "demo-admin" else None
    store = await _open_store(config, migrate=False)
    try:
        users = store.users
        if command == "add":
            assert password is not None
            user, created = await users.upsert(args.name, args.role, hash_password(password))
            print(f"{'created' if created else 'updated'} user {user.name} ({user.role})")
        elif command == "demo-admin":
            assert demo_password is not None
            await users.upsert("admin", "admin", hash_password(demo_password))
        elif command == "list":
            for u in await users.all():
                print(f"{u.name:<24} {u.role:<9} {'disabled' if u.disabled else ''}")
        elif command == "disable":
            if not await users.set_disabled(args.name, True):
                print(f"occ: no user {args.name!r}", file=sys.stderr)
                return 2
            print(f"disabled {args.name}; its sessions and tokens are revoked")
        elif command == "kiosk-token":
            if args.revoke:
                print(f"revoked {await users.revoke_all(args.name, 'kiosk')} kiosk token(s) of {args.name}")
                return 0
            user = await users.get(args.name)
            if user is None:
                print(f"occ: no user {args.name!r} (create it with `occ users add {args.name} --role viewer`)",
                      file=sys.stderr)
                return 2
            token = new_token()
            expires = datetime.now(UTC) + timedelta(days=config.web.kiosk_days)
            await users.add_token(user.id, token_hash(token), kind="kiosk", expires_at=expires, label=args.label)
            print(token)
            print(f"open the wall with /kiosk?token={token} (read-only, expires {expires:%Y-%m-%d})",
                  file=sys.stderr)
    finally:
        await store.close()
    return 0
