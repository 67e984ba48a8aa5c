"""occ.broker_auth, pure: the hash Mosquitto verifies and the files rendered from accounts and the registry."""

from __future__ import annotations

import base64
import hashlib

import pytest

from occ.broker_auth import AccountRow, DeviceRow, hash_password, render, verify_password
from occ.errors import ConfigError


def test_hash_is_mosquittos_pbkdf2_sha512_form() -> None:
    encoded = hash_password("s3cret", iterations=1000, salt=b"0123456789ab")
    tag, iterations, salt, digest = encoded.split("$")[1:]
    assert (tag, iterations) == ("7", "1000")
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), 1000)
    assert base64.b64decode(digest) == expected
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)
    assert not verify_password("s3cret", "") and not verify_password("s3cret", "$6$x$y")


def acl_of(text: str) -> dict[str, list[str]]:
    acl: dict[str, list[str]] = {}
    user = ""
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            acl[user] = []
        elif line.startswith("topic "):
            acl[user].append(line.split(" ", 1)[1])
    return acl


def test_devices_gateways_and_services() -> None:
    h = hash_password("x", iterations=1)
    files = render([AccountRow("D1", "device", h), AccountRow("D2", "device", h), AccountRow("GONE", "device", h),
                    AccountRow("GW", "gateway", h), AccountRow("occ-alerts", "service", h)],
                   [DeviceRow("D1", "hydromet"), DeviceRow("D2", "camera", gateway="GW"), DeviceRow("D3", "traffic")])
    acl = acl_of(files.acl)
    assert acl["D1"] == ["write occ/v1/hydromet/D1/telemetry", "write occ/v1/hydromet/D1/event",
                         "write occ/v1/hydromet/D1/status", "read occ/v1/hydromet/D1/config",
                         "read occ/v1/hydromet/D1/command"]
    assert "write occ/v1/camera/D2/telemetry" in acl["GW"] and "write occ/v1/gateway/GW/telemetry" in acl["GW"]
    assert not any("D1" in entry or "D3" in entry for entry in acl["GW"])
    assert "write occ/v1/_sys/#" in acl["occ-alerts"]
    # A device no longer registered can do nothing, so it is left out of both files: it cannot even connect.
    assert "GONE" not in acl and "GONE:" not in files.passwd
    assert files.accounts == 4 and files.passwd.count("$7$") == 4


def test_usernames_are_checked() -> None:
    from occ.broker_auth import check_username

    assert check_username("HG-BQ-RG01") == "HG-BQ-RG01"
    for bad in ("", "a b", "a:b", "x" * 65, "a/b", "#"):
        with pytest.raises(ConfigError):
            check_username(bad)
