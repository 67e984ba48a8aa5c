"""Who may connect to the broker and what each may do there, rendered from the store (issue 7). Pure: no I/O.

The database is the source of truth: `mqtt_accounts` holds each account's hash, the device registry holds each
device's kind and, in the `gateway` attribute, the gateway it is assigned to. From those two this module renders
Mosquitto's password file and ACL file; the broker re-reads both on SIGHUP (occ/embedded/auth_sync.py does that
within a second of a change), and on that reload Mosquitto disconnects clients whose account is gone or whose
password changed (checked on 2.0.11).

Why Mosquitto's own hash format (PBKDF2-HMAC-SHA512, "$7$iterations$salt$hash") and not scrypt: a second,
different hash would mean two stores of the same secret that can disagree; this one the broker verifies itself.
Passwords are 192-bit random strings, so the iteration count is defence in depth, not what keeps them safe.

Who may do what (docs/architecture.md §2), `{p}` being the topic prefix:

* a device `D` of kind `K`: publish `{p}/K/D/telemetry|event|status` (its Last Will is its status), subscribe to
  its downlink `{p}/K/D/config|command` (reserved);
* a gateway `G`: publish `{p}/gateway/G/telemetry`, and the device topics of every device assigned to it;
* the services, exactly what they use (SERVICE_ACL below); only `occ-alerts` may publish under `{p}/_sys/`,
  except the one control topic `occ-web` uses to ask the alerts service for a rules reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from occ.errors import ConfigError

ITERATIONS = 1_000
"""PBKDF2 rounds of new hashes (each hash carries its own count, so changing this affects new ones only).

Mosquitto pays them on every CONNECT on its single thread, while no message is routed: measured with
bench.broker_auth on the loaded 2-core test machine, 20,000 rounds cost 22 ms of broker CPU per CONNECT (10,000
devices reconnecting after an outage would stall the broker for minutes); 1,000 cost about 1 ms. The passwords
are 192-bit random strings, which no number of rounds makes more or less guessable; the rounds only slow down
the use of a stolen hash file, ten times Mosquitto's own default (101)."""
SALT_BYTES = 12
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

DEVICE_PUBLISH = ("telemetry", "event", "status")
DEVICE_SUBSCRIBE = ("config", "command")

SERVICES = ("occ-ingest", "occ-alerts", "occ-web", "occ-sim", "occ-monitor")
"""Platform service accounts. `occ-sim` is the simulators' pooled account: it speaks for every registered device
(a test fleet), never under _sys/; its connections' own status goes under occ/sim/. `occ-monitor` reads the
broker's $SYS statistics only (health checks, monitoring)."""

# (access, topic) with "{p}" for the prefix. Mosquitto checks the entries of one user in order; `deny` first.
SERVICE_ACL: Mapping[str, tuple[tuple[str, str], ...]] = {
    "occ-ingest": (("read", "{p}/+/+/+"),),
    "occ-alerts": (("read", "{p}/+/+/+"), ("read", "{p}/_sys/control/alerts/#"), ("write", "{p}/_sys/#")),
    "occ-web": (("read", "{p}/+/+/+"), ("read", "{p}/_sys/#"), ("write", "{p}/_sys/control/alerts/reload")),
    "occ-sim": (("deny", "{p}/_sys/#"), *(("write", "{p}/+/+/" + c) for c in DEVICE_PUBLISH),
                ("write", "occ/sim/#")),
    "occ-monitor": (("read", "$SYS/#"),),
}


def check_username(name: str) -> str:
    if not USERNAME_RE.match(name):
        raise ConfigError(f"{name!r} cannot be an MQTT username (1-64 of A-Z a-z 0-9 _ . -)")
    return name


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto's PBKDF2-SHA512 form, as `mosquitto_passwd` writes it: `$7$<iterations>$<salt>$<hash>`."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        _, tag, iterations, salt, digest = encoded.split("$")
        if tag != "7":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


@dataclass(frozen=True, slots=True)
class AccountRow:
    """What rendering needs of an active account."""

    username: str
    role: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """What rendering needs of a registered device: its kind and the gateway it is assigned to (if any)."""

    id: str
    kind: str
    gateway: str | None = None


@dataclass(frozen=True, slots=True)
class AuthFiles:
    passwd: str
    acl: str
    accounts: int


def acl_entries(account: AccountRow, devices: Mapping[str, DeviceRow], by_gateway: Mapping[str, list[DeviceRow]],
                prefix: str) -> list[tuple[str, str]]:
    """(access, topic) entries of one account; empty when it may do nothing (a device not in the registry)."""
    name = account.username
    if account.role == "service":
        return [(access, topic.format(p=prefix)) for access, topic in SERVICE_ACL.get(name, ())]
    if account.role == "device":
        device = devices.get(name)
        if device is None or device.kind == "gateway":
            return []
        return _device_entries(prefix, device.kind, name)
    if account.role == "gateway":
        entries = [("write", f"{prefix}/gateway/{name}/telemetry")]
        entries += [("read", f"{prefix}/gateway/{name}/{c}") for c in DEVICE_SUBSCRIBE]
        for device in by_gateway.get(name, ()):
            entries += [e for e in _device_entries(prefix, device.kind, device.id) if e[0] == "write"]
        return entries
    return []


def _device_entries(prefix: str, kind: str, device_id: str) -> list[tuple[str, str]]:
    base = f"{prefix}/{kind}/{device_id}"
    return [("write", f"{base}/{c}") for c in DEVICE_PUBLISH] + [("read", f"{base}/{c}") for c in DEVICE_SUBSCRIBE]


def render(accounts: Iterable[AccountRow], devices: Iterable[DeviceRow], *, prefix: str = "occ/v1") -> AuthFiles:
    """Mosquitto's password file and ACL file. An account that may do nothing (a device removed from the
    registry) is left out of both, so it cannot even connect."""
    registry = {d.id: d for d in devices}
    by_gateway: dict[str, list[DeviceRow]] = {}
    for device in sorted(registry.values(), key=lambda d: d.id):
        if device.gateway:
            by_gateway.setdefault(device.gateway, []).append(device)
    passwd = ["# Written by OCC from the mqtt_accounts table; regenerated on every change. Do not edit."]
    acl = ["# Written by OCC from the mqtt_accounts table and the device registry; regenerated on every change.",
           "# Clients without an entry here may neither publish nor subscribe."]
    count = 0
    for account in sorted(accounts, key=lambda a: a.username):
        if not USERNAME_RE.match(account.username) or not account.password_hash.startswith("$7$"):
            continue
        entries = acl_entries(account, registry, by_gateway, prefix)
        if not entries:
            continue
        count += 1
        passwd.append(f"{account.username}:{account.password_hash}")
        acl.append("")
        acl.append(f"user {account.username}")
        acl.extend(f"topic {access} {topic}" for access, topic in entries)
    return AuthFiles("\n".join(passwd) + "\n", "\n".join(acl) + "\n", count)
