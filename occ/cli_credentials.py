"""`occ devices credentials issue|rotate|revoke|list` (issue 7 item 1): MQTT accounts of devices and gateways.

The username is the device (or gateway) id; the password is generated (192 bits), printed once — `device_id
username password` per line, or JSON with `--json` — and stored only as a slow hash (occ.broker_auth). A
running `occ up` gives the broker the change within about a second (occ/embedded/auth_sync.py); a rotated or
revoked device is disconnected then.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from occ.broker_auth import SERVICES, check_username, hash_password
from occ.config import Config
from occ.errors import UsageError
from occ.secrets import new_secret

Issued = list[tuple[str, str, str]]
"""(device id, username, password) of each account just issued or rotated."""


def format_issued(issued: Issued, *, as_json: bool) -> str:
    if as_json:
        return json.dumps([{"device_id": d, "username": u, "password": p} for d, u, p in issued], indent=2) + "\n"
    return "".join(f"{d} {u} {p}\n" for d, u, p in issued)


def write_credentials_file(path: Path, issued: Issued, *, as_json: bool = False) -> None:
    """Append the lines (or replace with JSON) in a file only this user can read (0600, created so)."""
    if as_json:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(format_issued(issued, as_json=as_json))


def read_credentials_file(path: str | Path) -> dict[str, tuple[str, str]]:
    """device id → (username, password), from a file `issue` wrote (lines or JSON)."""
    text = Path(path).read_text()
    found: dict[str, tuple[str, str]] = {}
    if text.lstrip().startswith("["):
        for item in json.loads(text):
            found[str(item["device_id"])] = (str(item["username"]), str(item["password"]))
        return found
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise UsageError(f"{path}:{number}: expected 'device_id username password'")
        found[parts[0]] = (parts[1], parts[2])  # a later line (a rotation) replaces an earlier one
    return found


async def issue_for(store: Any, ids: Sequence[str], role: str) -> Issued:
    """New passwords for `ids` (hash stored, password returned); one transaction."""
    issued = [(i, i, new_secret()) for i in ids]
    await store.credentials.set_passwords([(u, role, hash_password(p)) for _, u, p in issued])
    return issued


async def credentials_command(config: Config, args: Any) -> int:
    from occ.cli_devices import open_store

    store = await open_store(config)
    try:
        return await _run(store, args)
    finally:
        await store.close()


async def _run(store: Any, args: Any) -> int:
    command = args.credentials_command
    if command == "list":
        return await _list(store, args)
    ids = list(dict.fromkeys(args.ids))
    for i in ids:
        check_username(i)
        if i in SERVICES:
            raise UsageError(f"{i} is a platform service account; `occ up` manages it (var/secrets/mqtt-{i})")
    accounts = {a.username: a for a in await store.credentials.accounts()}
    if command == "revoke":
        unknown = [i for i in ids if i not in accounts]
        if unknown:
            raise UsageError(f"no credentials for: {', '.join(unknown)}; nothing was revoked")
        revoked = await store.credentials.revoke(ids)
        for i in ids:
            print(f"revoked    {i}" if i in revoked else f"unchanged  {i} (already revoked)")
        print(f"{len(revoked)} credential(s) revoked; a running broker drops those connections within seconds")
        return 0
    gateway = bool(getattr(args, "gateway", False))
    if getattr(args, "all", False):
        if gateway or ids:
            raise UsageError("--all issues for every registered device without credentials; give no ids with it")
        ids = [d.id for d in await store.list_devices() if not (d.id in accounts and accounts[d.id].active)]
    if not gateway and ids:
        registered = {d.id for d in await store.list_devices()}
        missing = [i for i in ids if i not in registered]
        if missing:
            raise UsageError(f"not registered: {', '.join(missing)} (`occ devices import` first, or --gateway "
                             "for a gateway); nothing was issued")
    if command == "issue":
        taken = [i for i in ids if i in accounts and accounts[i].active]
        if taken:
            raise UsageError(f"already issued: {', '.join(taken)} (`rotate` replaces a password); nothing was issued")
    else:  # rotate
        unknown = [i for i in ids if i not in accounts]
        if unknown:
            raise UsageError(f"no credentials to rotate for: {', '.join(unknown)} (`issue` first); nothing changed")
    roles = {i: (accounts[i].role if i in accounts and command == "rotate" else ("gateway" if gateway else "device"))
             for i in ids}
    issued: Issued = []
    for role in sorted(set(roles.values())):
        issued += await issue_for(store, [i for i in ids if roles[i] == role], role)
    issued.sort()
    if args.out:
        write_credentials_file(Path(args.out), issued, as_json=args.json)
        print(f"{len(issued)} credential(s) written to {args.out} (mode 0600)", file=sys.stderr)
    else:
        sys.stdout.write(format_issued(issued, as_json=args.json))
    return 0


async def _list(store: Any, args: Any) -> int:
    accounts = await store.credentials.accounts()
    if args.json:
        print(json.dumps([{"username": a.username, "role": a.role, "active": a.active,
                           "issued_at": a.issued_at.isoformat() if a.issued_at else None,
                           "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None} for a in accounts],
                         indent=2))
        return 0
    for a in accounts:
        when = (f"revoked {a.revoked_at:%Y-%m-%d %H:%M}" if a.revoked_at
                else f"issued {a.issued_at:%Y-%m-%d %H:%M}" if a.issued_at else "")
        print(f"{a.username:<24} {a.role:<8} {'active' if a.active else 'revoked':<8} {when}")
    print(f"{len(accounts)} account(s), {sum(a.active for a in accounts)} active")
    return 0


def add_parsers(dev_sub: Any) -> None:
    cred = dev_sub.add_parser("credentials", help="MQTT credentials of devices and gateways (issue, rotate, …)")
    sub = cred.add_subparsers(dest="credentials_command", required=True)
    for name, text in (("issue", "new credentials, printed once: device_id username password"),
                       ("rotate", "replace passwords (the old ones stop working at once)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="*", metavar="DEVICE")
        p.add_argument("--json", action="store_true", help="print JSON instead of lines")
        p.add_argument("--out", metavar="FILE", help="write to FILE (0600; lines are appended) instead of stdout")
        if name == "issue":
            p.add_argument("--gateway", action="store_true",
                           help="the ids are gateways (devices name theirs in the `gateway` attribute)")
            p.add_argument("--all", action="store_true", help="every registered device without credentials")
    rv = sub.add_parser("revoke", help="remove credentials; live connections are dropped")
    rv.add_argument("ids", nargs="+", metavar="DEVICE")
    ls = sub.add_parser("list", help="accounts, roles, issued/revoked")
    ls.add_argument("--json", action="store_true")
