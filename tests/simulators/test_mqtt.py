"""Through a real broker: every message arrives, statuses are retained per device, Last Wills fire
(per connection in pool mode, per device in device mode), load mode at QoS 1 loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest
from simhelpers import CONFIG, ROOT, Subscriber, clear_retained

from simulators.cli import main
from simulators.load import LoadConfig, run_load
from simulators.publisher import parse_mqtt_url, read_jsonl


def unique() -> str:
    return f"simtest-{uuid.uuid4().hex[:10]}"


def test_catalog_run_arrives_complete_with_retained_status(mqtt_url: str, mqtt_services_url: str,
                                                           tmp_path: Path) -> None:
    if mqtt_url != mqtt_services_url:
        # Only the embedded rumqttd has a separate MQTT 5 listener. It hands a new subscriber at most 100 retained
        # messages (measured: 135 retained topics, 100 delivered, whatever its config): an open gap of the
        # fallback broker, tracked in the issue note. Mosquitto (CI, compose) runs this test.
        pytest.skip("the embedded rumqttd delivers at most 100 retained messages to a new subscriber")
    version = "5"
    prefix, client = f"{unique()}/v1", unique()
    sub = Subscriber(mqtt_url, f"{prefix}/#")
    links = Subscriber(mqtt_url, f"occ/sim/{client}-0/status")
    out = tmp_path / "run.jsonl"
    try:
        rc = main(["--mqtt-url", mqtt_url, "--mqtt-version", version, "--topic-prefix", prefix,
                   "--client-prefix", client,
                   "--fast", "--start", "2026-07-14T00:00:00+07:00", "--duration", "20m", "--seed", "3",
                   "--scenario", "sensor-faults", "--out", str(out), "--quiet", "--config-dir", str(CONFIG)])
        assert rc == 0
        sent = [(m.topic, m.payload) for m in read_jsonl(out)]
        assert len(sent) > 1500
        assert sub.wait_for(lambda got: len(got) >= len(sent), timeout=30)
        got = [(t, p) for t, p, _ in sub.snapshot()]
        assert sorted(got) == sorted(sent)
        # each connection says online, and offline on a clean stop (its Will covers a crash)
        assert links.wait_for(lambda got: [p for _, p, _ in got] == [b"online", b"offline"])
    finally:
        sub.close()
        links.close()
    retained = Subscriber(mqtt_url, f"{prefix}/+/+/status")
    try:
        assert retained.wait_for(lambda got: len(got) >= 135)
        devices = {t.split("/")[-2]: p for t, p, r in retained.snapshot() if r}
        assert len(devices) == 135 and set(devices.values()) == {b"offline"}  # clean stop: all offline
        topics = [t for t, _, _ in retained.snapshot()]
    finally:
        retained.close()
    clear_retained(mqtt_url, [*topics, *(f"occ/sim/{client}-{k}/status" for k in range(4))])


def test_pool_connections_have_a_last_will(mqtt_url: str, tmp_path: Path) -> None:
    prefix, client = f"{unique()}/v1", unique()
    sub = Subscriber(mqtt_url, "occ/sim/+/status")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", "--mqtt-url", mqtt_url, "--topic-prefix", prefix,
             "--client-prefix", client, "--connections", "2", "--kinds", "hydromet", "--duration", "forever",
             "--quiet", "--config-dir", str(CONFIG)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        online = {(f"occ/sim/{client}-{k}/status", b"online") for k in (0, 1)}
        assert sub.wait_for(lambda got: online <= {(t, p) for t, p, _ in got}, timeout=30), log.read_text()
        proc.send_signal(signal.SIGKILL)  # a crash: no clean DISCONNECT, the broker must publish the Wills
        proc.wait(10)
        offline = {(t, b"offline") for t, _ in online}
        assert sub.wait_for(lambda got: offline <= {(t, p) for t, p, _ in got}, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    clear_retained(mqtt_url, [t for t, _ in online])


def test_per_device_connections_fire_the_device_last_will(mqtt_url: str, tmp_path: Path) -> None:
    prefix = f"{unique()}/v1"
    devices = tmp_path / "cams.yaml"
    devices.write_text(textwrap.dedent("""\
        devices:
          - {id: SIMTEST-CAM1, kind: camera, lat: 22.82, lon: 104.98, area: ha-giang-city,
             attributes: {report_interval_s: 60}}
          - {id: SIMTEST-CAM2, kind: camera, lat: 22.83, lon: 104.98, area: ha-giang-city,
             attributes: {report_interval_s: 60}}
        """))
    scenario = tmp_path / "cut.yaml"
    scenario.write_text(textwrap.dedent("""\
        scenario: {name: cut}
        effects:
          - do: offline
            target: {ids: [SIMTEST-CAM1]}
            at: 2m
            for: 4m
        """))
    sub = Subscriber(mqtt_url, f"{prefix}/camera/+/status")
    try:
        rc = main(["--mqtt-url", mqtt_url, "--topic-prefix", prefix, "--mode", "device", "--devices", str(devices),
                   "--scenario", str(scenario), "--speed", "120", "--start", "2026-07-14T00:00:00+07:00",
                   "--duration", "8m", "--seed", "1", "--quiet", "--config-dir", str(CONFIG)])
        assert rc == 0
        cam1 = f"{prefix}/camera/SIMTEST-CAM1/status"
        cam2 = f"{prefix}/camera/SIMTEST-CAM2/status"
        expected = [b"online", b"offline", b"online", b"offline"]
        assert sub.wait_for(lambda got: [p for t, p, _ in got if t == cam1] == expected, timeout=20), \
            [(t[-20:], p) for t, p, _ in sub.snapshot()]
        assert [p for t, p, _ in sub.snapshot() if t == cam2] == [b"online", b"offline"]
    finally:
        sub.close()
    clear_retained(mqtt_url, [cam1, cam2])


def test_load_mode_at_qos1_loses_nothing(mqtt_url: str) -> None:
    prefix = f"{unique()}/v1"
    sub = Subscriber(mqtt_url, f"{prefix}/#")
    try:
        cfg = LoadConfig(devices=50, rate=3000, form="array", readings=6, qos=1, duration=1.0,
                         client_prefix=unique(), topic_prefix=prefix, connections=2)
        result = run_load(cfg, parse_mqtt_url(mqtt_url))
        assert 2000 <= result.messages <= 3100
        telemetry = lambda got: [p for t, p, _ in got if t.endswith("/telemetry")]  # noqa: E731
        assert sub.wait_for(lambda got: len(telemetry(got)) >= result.messages, timeout=30)
        payloads = telemetry(sub.snapshot())
        assert len(payloads) == result.messages
        assert all(len(orjson.loads(p)) == 2 for p in payloads[:100])
    finally:
        sub.close()
    clear_retained(mqtt_url, [f"occ/sim/{cfg.client_prefix}-{k}/status" for k in (0, 1)])


# --- client ids (issue 9: `occ simulate` next to `occ up --demo` fought over the same ids) --------------------


def test_default_client_ids_are_unique_per_run() -> None:
    code = "from simulators.cli import default_client_prefix as d; print(d('sim'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                           cwd=ROOT).stdout.strip() for _ in range(2)}
    assert len(runs) == 2, runs
    assert all(run.startswith("occ-sim-") and len(run.rsplit("-", 1)[1]) == 6 for run in runs)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_a_client_id_clash_is_reported_once_with_the_fix(
    mqtt_url: str, mqtt_services_url: str, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two simulators given the same --client-prefix: the broker keeps one connection per id and closes the other,
    in a loop. That is said once per link, with what to do, instead of a 'lost'/'recovered' pair per round."""
    import logging
    import time

    from simulators.publisher import CLASH_REPEATS, MqttOutput

    url = mqtt_services_url if version == "5" else mqtt_url
    prefix = unique()
    outputs = [MqttOutput(parse_mqtt_url(url), connections=1, client_prefix=prefix, topic_prefix=f"{prefix}/v1",
                          protocol=version) for _ in range(2)]
    caplog.set_level(logging.WARNING, logger="simulators.publisher")
    try:
        outputs[0].start()
        outputs[1].start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(o.links[0].clash_reported for o in outputs):
            for output in outputs:
                output.pump(0.05)
        clashes = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert any(o.links[0].clash_reported for o in outputs), caplog.text
        assert 1 <= len(clashes) <= 2, caplog.text  # once per link at most
        message = clashes[0].getMessage()
        assert f"MQTT client id {prefix}-0 is in use by another client" in message
        assert "--client-prefix" in message
        for output in outputs:  # the loop goes on; the logs stay quiet
            for _ in range(40):
                output.pump(0.05)
        lost = [r for r in caplog.records if "lost" in r.getMessage()]
        assert len(lost) <= 2 * CLASH_REPEATS, "a 'lost' line per round until the clash is recognised, then silence"
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) <= 2
    finally:
        for output in outputs:
            output.close()
    clear_retained(mqtt_url, [f"occ/sim/{prefix}-0/status"])
