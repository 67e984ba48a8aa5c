"""The `occ` command line as a user meets it in the first hour (issue 9): everyday mistakes end in one line and a
non-zero exit status, never a traceback; the device registry can be imported with a visible plan, shown and
pruned; history is read in the site time zone. Mistakes run through the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from occ.config import load_config
from occ.models import Device, ReadingRow
from occ.store import Store
from tests.conftest import ROOT, psql, with_database

DEVICE_FILES = sorted(str(p) for p in (ROOT / "config" / "devices").glob("*.yaml"))


@pytest.fixture(scope="module")
def catalog_db(pg_server_url: str) -> Iterator[str]:
    """One migrated database with the Hà Giang catalog, shared by the read-only checks of this module."""
    name = f"occ_cli_{uuid.uuid4().hex[:10]}"
    psql(pg_server_url, f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    result = occ("--database-url", url, "devices", "import", *DEVICE_FILES)
    assert result.returncode == 0, result.stderr
    yield url
    psql(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCC_")}
    env.update(OCC_VAR_DIR="/nonexistent/occ-var", PYTHONPATH=str(ROOT), **extra)
    return env


def occ(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "occ.cli", *args], capture_output=True, text=True,
                          env=env or clean_env(), cwd=cwd, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- everyday mistakes ---------------------------------------------------------------------------------------


def test_bad_settings_are_one_line_with_file_and_line(tmp_path: Path, catalog_db: str) -> None:
    for text, fragments in [
        ("site:\n  timezone: Asia/Hanoi_nope\n", [":2: site.timezone: unknown time zone 'Asia/Hanoi_nope'"]),
        ("ingest:\n  batch_max: -5\n", [":2: ingest.batch_max: must be between 1 and 1000000, got -5"]),
        ("ingest:\n  http_port: 99999\n", [":2: ingest.http_port: must be between 0 and 65535"]),
        ("database:\n  timescaledb: maybe\n", [":2: database.timescaledb: must be one of auto, on, off"]),
    ]:
        path = tmp_path / "occ.yaml"
        path.write_text(text)
        result = occ("--config", str(path), "--database-url", catalog_db, "devices", "list")
        assert_one_line(result, 2, str(path), *fragments)
    result = occ("devices", "list", env=clean_env(OCC_SITE__TIMEZONE="Asia/Hanoi_nope"))
    assert_one_line(result, 2, "environment variable OCC_SITE__TIMEZONE", "unknown time zone")
    result = occ("--set", "ingest.http_port=99999", "ingest")
    assert_one_line(result, 2, "command line: ingest.http_port: must be between 0 and 65535, got 99999")


def test_wrong_database_urls_are_one_line(pg_server_url: str) -> None:
    missing = with_database(pg_server_url, "no_such_db")
    assert_one_line(occ("--database-url", missing, "devices", "list"), 1,
                    "database 'no_such_db' does not exist", "createdb no_such_db")
    bad_role = pg_server_url.replace("://", "://nobody_here@", 1) if "@" not in pg_server_url else \
        pg_server_url.split("://", 1)[0] + "://nobody_here@" + pg_server_url.split("@", 1)[1]
    assert_one_line(occ("--database-url", bad_role, "db", "status"), 1,
                    "refused the login", "nobody_here", "fix the user or password")
    assert_one_line(occ("--database-url", "mysql://root:hunter2@127.0.0.1/occ", "db", "migrate"), 2,
                    "URL scheme must be postgresql or postgres, got 'mysql'")
    assert "hunter2" not in occ("--database-url", "mysql://root:hunter2@127.0.0.1/occ", "db", "migrate").stderr
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/occ"
    assert_one_line(occ("--database-url", dead, "devices", "list"), 1,
                    "database unavailable", "is PostgreSQL running at 127.0.0.1")


def test_a_broker_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    result = occ("--mqtt-url", f"mqtt://127.0.0.1:{free_port()}", "simulate", "--duration", "1m", "--quiet",
                 cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode != 0
    assert "cannot connect to MQTT broker" in result.stderr


def test_output_closed_early_is_not_an_error_message(catalog_db: str) -> None:
    """`occ devices list | head`: the reader goes away; no traceback, the shell's status for SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "occ.cli", "--database-url", catalog_db, "devices", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything was written: the first write fails with EPIPE
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert stderr == "", stderr


def test_filters_that_name_nothing_say_so(catalog_db: str) -> None:
    result = occ("--database-url", catalog_db, "devices", "list", "--kind", "cam")
    assert_one_line(result, 2, "no device kind 'cam'; kinds are:", "camera", "hydromet", "traffic")
    result = occ("--database-url", catalog_db, "devices", "list", "--area", "Bắc Quang")
    assert_one_line(result, 2, "no area 'Bắc Quang': areas are ids — did you mean bac-quang?", "yen-minh")
    result = occ("--database-url", catalog_db, "devices", "list", "--area", "bac-quang", "--kind", "camera")
    assert result.returncode == 0 and "HG-BQ-" in result.stdout
    result = occ("--database-url", catalog_db, "devices", "show", "HG-BQ-RG0")
    assert_one_line(result, 2, "no device 'HG-BQ-RG0' in the registry — similar: HG-BQ-RG01")
    result = occ("--database-url", catalog_db, "history", "HG-BQ-RG01", "rain", "--from", "-2h")
    assert_one_line(result, 2, "HG-BQ-RG01 (hydromet) has no metric 'rain'; its metrics:", "rain_mm")
    result = occ("--database-url", catalog_db, "history", "HG-BQ-RG01", "rain_mm", "--from", "yesterday")
    assert_one_line(result, 2, "--from 'yesterday': expected an ISO time")


def test_simulate_scenarios_outside_the_repository(tmp_path: Path) -> None:
    result = occ("simulate", "scenarios", cwd=tmp_path)  # finds the source tree's config/ like every command
    assert result.returncode == 0 and "flash-flood-bac-quang" in result.stdout, result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = occ("simulate", "scenarios", env=clean_env(OCC_CONFIG_DIR=str(empty)), cwd=tmp_path)
    assert_one_line(result, 2, "scenarios not found in", "OCC_CONFIG_DIR")


# --- devices: import plan, show, remove ------------------------------------------------------------------------


def test_import_reports_each_device_refuses_a_kind_change_and_dry_runs(database_url: str, tmp_path: Path) -> None:
    first = occ("--database-url", database_url, "devices", "import", *DEVICE_FILES)
    assert first.returncode == 0, first.stderr
    assert "created    HG-BQ-RG01 (hydromet)" in first.stdout
    assert first.stdout.strip().splitlines()[-1] == "135 devices from 3 file(s): 135 created, 0 updated, 0 unchanged"
    again = occ("--database-url", database_url, "devices", "import", *DEVICE_FILES)
    assert again.stdout.strip() == "135 devices from 3 file(s): 0 created, 0 updated, 135 unchanged"

    camera = tmp_path / "oops.yaml"
    camera.write_text("devices:\n  - {id: HG-BQ-RG01, kind: camera, lat: 22.49, lon: 104.86, area: bac-quang}\n")
    refused = occ("--database-url", database_url, "devices", "import", str(camera))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"HG-BQ-RG01 is registered as hydromet; {camera} makes it camera" in refused.stderr
    assert "nothing was imported" in refused.stderr and "--force" in refused.stderr
    dry = occ("--database-url", database_url, "devices", "import", "--dry-run", "--force", str(camera))
    assert dry.returncode == 0, dry.stderr
    assert 'kind: "hydromet" → "camera"' in dry.stdout
    assert "attributes.report_interval_s: 600 → (none)" in dry.stdout
    assert dry.stdout.strip().endswith("1 updated, 0 unchanged (dry run: nothing was written)")
    shown = occ("--database-url", database_url, "devices", "show", "HG-BQ-RG01")
    assert shown.stdout.startswith("HG-BQ-RG01  hydromet"), "the dry run wrote nothing"
    forced = occ("--database-url", database_url, "devices", "import", "--force", str(camera))
    assert forced.returncode == 0 and "updated    HG-BQ-RG01 (camera)" in forced.stdout
    assert occ("--database-url", database_url, "devices", "show", "HG-BQ-RG01").stdout.startswith(
        "HG-BQ-RG01  camera")


async def test_show_and_remove_keep_history(database_url: str) -> None:
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime.now(UTC).replace(microsecond=0)
    store = await Store.connect(database_url, pool_size=1, timescaledb="off")
    try:
        await store.upsert_devices([
            Device("HG-T-RG1", "hydromet", "Test gauge", 22.4, 104.8, "bac-quang", {"report_interval_s": 600}),
            Device("HG-T-RG2", "hydromet", "Other gauge"),
        ])
        rows: list[ReadingRow] = [("HG-T-RG1", "rain_mm", now - timedelta(minutes=5), 12.5, 0)]
        await store.write_batch(rows, received_at=now)
        version_before = await store.devices_version()
    finally:
        await store.close()
    shown = occ("--database-url", database_url, "devices", "show", "HG-T-RG1")
    assert shown.returncode == 0, shown.stderr
    assert "area:        bac-quang (Huyện Bắc Quang)" in shown.stdout
    assert "report_interval_s: 600" in shown.stdout
    local = (now - timedelta(minutes=5)).astimezone(tz).isoformat(sep=" ")
    assert f"rain_mm  12.5 mm  at {local}" in shown.stdout
    unknown = occ("--database-url", database_url, "devices", "remove", "HG-T-RG1", "HG-NOPE")
    assert_one_line(unknown, 2, "not registered: HG-NOPE; nothing was removed")
    removed = occ("--database-url", database_url, "devices", "remove", "HG-T-RG1")
    assert removed.returncode == 0 and "removed    HG-T-RG1" in removed.stdout
    store = await Store.connect(database_url, pool_size=1, migrate=False)
    try:
        assert [d.id for d in await store.list_devices()] == ["HG-T-RG2"]
        assert await store.devices_version() != version_before, "ingest sees the registry change"
        assert await store.latest(["HG-T-RG1"]) == []
        points = await store.history("HG-T-RG1", "rain_mm", now - timedelta(hours=1), now + timedelta(hours=1),
                                     bucket="raw")
        assert [p.value for p in points] == [12.5], "readings stay"
    finally:
        await store.close()


async def test_history_sums_hourly_in_the_site_time_zone(database_url: str) -> None:
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    start = datetime(2026, 11, 27, 6, 0, tzinfo=tz)
    store = await Store.connect(database_url, pool_size=1, timescaledb="off")
    try:
        await store.upsert_devices([Device("HG-T-RG1", "hydromet")])
        rows: list[ReadingRow] = [("HG-T-RG1", "rain_mm", start + timedelta(minutes=10 * i), 0.5, 0)
                                  for i in range(18)]  # 06:00-08:50 local, 3 mm per hour
        await store.write_batch(rows, received_at=datetime.now(UTC))
    finally:
        await store.close()
    args = ["--database-url", database_url, "history", "HG-T-RG1", "rain_mm", "--from", "2026-11-27T06:00",
            "--to", "2026-11-27T09:00", "--bucket", "1h", "--agg", "sum"]
    csv = occ(*args, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines() == ["ts,rain_mm_sum", "2026-11-27T06:00:00+07:00,3.0",
                                       "2026-11-27T07:00:00+07:00,3.0", "2026-11-27T08:00:00+07:00,3.0"]
    table = occ(*args)
    assert table.stdout.splitlines()[:2] == ["bucket start               sum(rain_mm) [mm]",
                                             "2026-11-27 06:00:00+07:00  3"]
    hydro = occ(*args[:5], "--from", "2026-11-26", "--to", "2026-11-28", "--bucket", "day", "--agg", "sum",
                "--hydro-day", "--format", "json")
    assert hydro.returncode == 0, hydro.stderr
    points = json.loads(hydro.stdout)["points"]
    assert points == [{"ts": "2026-11-26T07:00:00+07:00", "value": 3.0},  # 06:00-06:50 belongs to the day before
                      {"ts": "2026-11-27T07:00:00+07:00", "value": 6.0}]


def test_config_dir_default_matches_in_process() -> None:
    assert load_config(environ={}).config_path.resolve() == (ROOT / "config").resolve()

