"""`occ simulate` options, time defaults, JSON-lines output and replay, load-mode payload forms."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from simhelpers import CONFIG, ROOT

from occ.catalog import Catalog
from occ.devices import load_devices
from simulators.cli import build_parser, demo_argv, main, resolve_times
from simulators.load import LoadConfig, PayloadFactory, load_messages, write_device_file
from simulators.publisher import parse_mqtt_url, read_jsonl
from simulators.timeutil import parse_timestamp


def parse(*argv: str):
    return build_parser().parse_args(["run", *argv])


def test_parser_has_the_documented_options() -> None:
    args = parse("--mqtt-url", "mqtt://u:p@h:1884", "--scenario", "a", "--scenario", "b.yaml", "--speed", "60",
                 "--seed", "3", "--out", "x.jsonl", "--qos", "0", "--devices", "a.yaml", "b.yaml", "--duration", "2h",
                 "--start=-1d", "--mode", "device", "--username", "dev", "--password", "secret")
    assert args.scenario == ["a", "b.yaml"] and args.devices == ["a.yaml", "b.yaml"]
    assert (args.speed, args.seed, args.qos, args.mode) == (60.0, 3, 0, "device")
    load = build_parser().parse_args(["load", "--devices", "1000", "--rate", "20000", "--form", "senml",
                                      "--readings", "10", "--qos", "0", "--duration", "10"])
    assert (load.devices, load.rate, load.form, load.readings) == (1000, 20000.0, "senml", 10)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--fast", "--speed", "5"])


def test_mqtt_url_and_credentials() -> None:
    a = parse_mqtt_url("mqtt://dev:s%40cret@broker.local:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == ("broker.local", 1884, "dev", "s@cret", False)
    b = parse_mqtt_url("mqtts://broker.local", username="x", password="y")
    assert (b.port, b.tls, b.username, b.password) == (8883, True, "x", "y")
    with pytest.raises(ValueError):
        parse_mqtt_url("http://broker")


def test_time_defaults() -> None:
    now = 1_800_000_000.0
    start, end, speed = resolve_times(parse(), [], now)
    assert (start, end, speed) == (now, None, 1.0)  # real time, forever
    start, end, speed = resolve_times(parse("--speed", "60", "--duration", "1d"), [], now)
    assert speed == 60 and end == pytest.approx(now + 86400 / 60, abs=1)  # a day in 24 minutes, ending now
    start, end, speed = resolve_times(parse("--fast", "--duration", "7d"), [], now)
    assert speed is None and (start, end) == (now - 7 * 86400, now)  # load a week of history
    start, end, _ = resolve_times(parse("--fast", "--start", "2026-07-14T00:00"), [], now)
    assert start == parse_timestamp("2026-07-14T00:00") and end == now
    _, end, _ = resolve_times(parse("--duration", "forever", "--speed", "60"), [], now)
    assert end is None
    demo = build_parser().parse_args(demo_argv("mqtt://127.0.0.1:1999"))
    assert demo.scenario == ["demo"] and demo.speed == 60 and demo.duration == "forever"


def test_out_and_replay_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, again = tmp_path / "run.jsonl", tmp_path / "again.jsonl"
    rc = main(["--no-mqtt", "--out", str(first), "--fast", "--start", "2026-07-14T00:00:00", "--duration", "20m",
               "--seed", "1", "--quiet", "--config-dir", str(CONFIG), "--scenario", "sensor-faults"])
    assert rc == 0
    assert main(["--replay", str(first), "--no-mqtt", "--out", str(again), "--fast", "--quiet"]) == 0
    original = list(read_jsonl(first))
    replayed = list(read_jsonl(again))
    assert [(m.topic, m.payload, m.qos, m.retain) for m in original] == \
        [(m.topic, m.payload, m.qos, m.retain) for m in replayed]
    assert any(m.channel == "status" for m in original) and any(m.channel == "telemetry" for m in original)


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-mqtt", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--no-mqtt", "--out", str(tmp_path / "x.jsonl"), "--scenario", "no-such-thing", "--fast",
                 "--config-dir", str(CONFIG)]) == 2
    assert "no scenario 'no-such-thing'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: {name: bad}\neffects:\n  - do: offline\n    target: {kind: camera}\n    for: soon\n")
    assert main(["--no-mqtt", "--out", str(tmp_path / "x.jsonl"), "--scenario", str(bad), "--fast",
                 "--config-dir", str(CONFIG)]) == 2
    assert f"{bad}:5:" in capsys.readouterr().err


def test_scenarios_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "--config-dir", str(CONFIG)]) == 0
    assert "flash-flood-bac-quang" in capsys.readouterr().out
    assert main(["scenarios", "validate", "--config-dir", str(CONFIG)]) == 0
    assert "invalid" not in capsys.readouterr().out


@pytest.mark.parametrize("form", ["object", "array", "senml", "gateway"])
def test_load_payload_forms_follow_the_contract(form: str) -> None:
    cfg = LoadConfig(devices=50, form=form, readings=10, per_entry=5, qos=0)
    factory = PayloadFactory(cfg)
    messages = load_messages(cfg, 20, 1_800_000_000.0)
    assert len(messages) == 20
    for m in messages:
        doc = orjson.loads(m.payload)
        if form == "object":
            assert set(doc) == {"ts", "values"} and len(doc["values"]) == factory.readings == 9  # capped
        elif form == "array":
            assert len(doc) == 2 and sum(len(e["values"]) for e in doc) == 10
            assert all(set(e) == {"ts", "values"} for e in doc)
        elif form == "senml":
            assert len(doc) == 10 and "bt" in doc[0] and all({"n", "u", "v"} <= set(r) for r in doc)
        else:
            assert m.topic.endswith("/telemetry") and "/gateway/" in m.topic
            assert len(doc) == 2 and sum(len(entries[0]["values"]) for entries in doc.values()) == 10
        if form != "gateway":
            assert m.topic == f"occ/v1/hydromet/{m.device_id}/telemetry"


def test_load_device_file_is_importable(tmp_path: Path) -> None:
    path = tmp_path / "load.yaml"
    write_device_file(LoadConfig(devices=25), str(path))
    devices = load_devices(path, Catalog.load(CONFIG / "metrics.yaml"))
    assert len(devices) == 25 and devices[0].id == "LOAD-hydromet-00000"


def test_check_reports_failed_expectations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "dry.yaml"
    scenario.write_text("scenario: {name: dry}\neffects: []\nexpect:\n"
                        "  - {device: HG-BQ-RG01, metric: rain_mm, sum_24h_above: 5000}\n")
    rc = main(["--no-mqtt", "--out", str(tmp_path / "x.jsonl"), "--fast", "--start", "2026-01-10T00:00",
               "--duration", "2h", "--kinds", "hydromet", "--scenario", str(scenario), "--check", "--quiet",
               "--config-dir", str(CONFIG)])
    assert rc == 1
    assert "FAIL HG-BQ-RG01" in capsys.readouterr().out


def test_logs_are_logfmt_like_every_service(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    out = tmp_path / "day.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "simulators", "--no-mqtt", "--out", str(out), "--fast", "--duration", "10m",
         "--kinds", "hydromet", "--seed", "1", "--config-dir", str(CONFIG)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stderr.splitlines() if line.startswith("ts=")]
    assert logged, result.stderr
    assert any(re.fullmatch(r'ts=\S+Z level=info service=simulate logger=simulators msg="simulating \d+ devices.*"',
                            line) for line in logged), logged
