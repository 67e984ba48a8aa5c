"""Rule routes: list the active rule files and validate a candidate file.

`web/` never imports `alerts/` (the layers stay separate), so these routes run the alerts CLI in a child
process (`occ rules list --json`, `occ rules validate FILE`) and decide by its exit code; its first error line
(file, line and problem) goes back to the caller. Reloading stays with the alerts service, which owns the
running rules: `POST /api/rules/reload` validates the files, then publishes on `occ.topics.alerts_reload_topic`,
which `occ alerts` treats as SIGHUP.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from web.api import MAX_BODY, Route, ctx, json_response
from web.errors import api_error
from web.live import GATEWAY
from web.security import access

CLI_TIMEOUT_S = 30.0
_cache: dict[str, tuple[float, Any]] = {}


async def _occ(*args: str, config_dir: str) -> tuple[int, str, str]:
    env = {**os.environ, "OCC_CONFIG_DIR": config_dir, "OCC_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "occ.cli", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise api_error(503, "timeout", "the rules tool did not answer in time") from None
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _first_line(text: str) -> str:
    return next((line.removeprefix("occ: ") for line in text.splitlines() if line.strip()), "unknown error")


@access("viewer")
async def list_rules(request: web.Request) -> web.Response:
    config_dir = ctx(request).config_dir
    cached = _cache.get(config_dir)
    if cached is not None and time.monotonic() - cached[0] < 30:
        return json_response(cached[1])
    code, out, err = await _occ("rules", "list", "--json", config_dir=config_dir)
    if code != 0:
        raise api_error(503, "rules_unavailable", _first_line(err or out))
    body = {"items": orjson.loads(out)}
    _cache[config_dir] = (time.monotonic(), body)
    return json_response(body)


@access("admin")
async def validate_rules(request: web.Request) -> web.Response:
    """Check a rule file (the YAML as the request body) without installing it."""
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise api_error(413, "too_large", f"rule files are limited to {MAX_BODY} bytes here")
    if not raw.strip():
        raise api_error(400, "bad_request", "send the rule file (YAML) as the request body")
    with tempfile.TemporaryDirectory(prefix="occ-rules-") as folder:
        path = Path(folder) / "candidate.yaml"
        await asyncio.to_thread(path.write_bytes, raw)
        code, out, err = await _occ("rules", "validate", str(path), config_dir=ctx(request).config_dir)
    if code == 0:
        return json_response({"valid": True, "message": _first_line(out).replace(str(path), "candidate.yaml")})
    message = _first_line(err or out).replace(str(path), "candidate.yaml")
    return web.json_response({"valid": False, "error": {"status": 422, "code": "invalid_rules", "message": message}},
                             status=422)


@access("admin")
async def reload_rules(request: web.Request) -> web.Response:
    """Validate the rule files in place, then ask the alerts service to reload them (over MQTT: web never
    signals another process). A bad file is named here at once; the service would keep its rules anyway."""
    config_dir = ctx(request).config_dir
    files = sorted(str(p) for p in (Path(config_dir) / "rules").glob("*.yaml"))
    if not files:
        raise api_error(409, "no_rules", f"no rule files in {Path(config_dir) / 'rules'}")
    code, out, err = await _occ("rules", "validate", *files, config_dir=config_dir)
    if code != 0:
        message = _first_line(err or out)
        return web.json_response({"reloaded": False, "error": {"status": 422, "code": "invalid_rules",
                                                               "message": message}}, status=422)
    if not request.app[GATEWAY].request_rules_reload():
        raise api_error(503, "broker_unavailable", "the broker is not reachable: the reload was not requested")
    _cache.clear()
    return json_response({"reloaded": True, "message": "rules valid; reload requested from the alerts service",
                          "files": [Path(f).name for f in files]}, status=202)


ROUTES: list[Route] = [
    Route("GET", "/api/rules", list_rules, "Active alert rules (and how many devices each covers)", "rules"),
    Route("POST", "/api/rules/validate", validate_rules, "Validate a rule file (YAML body; admin)", "rules",
          body=("(YAML document)",)),
    Route("POST", "/api/rules/reload", reload_rules, "Validate config/rules and ask occ alerts to reload (admin)",
          "rules"),
]
