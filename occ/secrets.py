"""Generated secrets kept in private files (issue 7): the embedded database's password, the platform services' MQTT
passwords, credential files written for operators.

A secret file is created with mode 0600 in one step (never world-readable for an instant) and replaced
atomically, so a reader sees the old secret or the new one, never half a file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_BYTES = 24
"""192 bits of entropy; `token_urlsafe` makes 32 characters from [A-Za-z0-9_-], usable inside URLs as they are."""


def new_secret(nbytes: int = SECRET_BYTES) -> str:
    return secrets.token_urlsafe(nbytes)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: only this user may list or enter it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (a temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)  # an older temporary file may have had other bits
    os.replace(tmp, path)


def read_or_create_secret(path: Path) -> str:
    """The secret stored in `path`; a new one is generated and stored (0600) when the file does not exist."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = new_secret()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, value + "\n")
    return value
