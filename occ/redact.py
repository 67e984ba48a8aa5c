"""Secrets out of everything shown to people (issue 11 item 9): repr, logs and `occ up`'s printout show URLs
with the password replaced; only var/endpoints.json (mode 0600) keeps them."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str | None) -> str:
    """`scheme://user:secret@host/db` → `scheme://user:***@host/db`; anything unparsable is masked whole if it
    could hold a password."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK if "@" in url else url
    if not password:
        return url
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:{MASK}@{hostport}", parts.path, parts.query, parts.fragment))
